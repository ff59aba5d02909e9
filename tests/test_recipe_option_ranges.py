"""Every recipe refuses a thread count or seed outside the CLI's ranges at parsing, with one
usage line: ``--threads 0`` was a RuntimeError traceback from torch, a negative seed a traceback
once the data had loaded (or another program's usage error, several steps in)."""

import sys

import pytest
import torch


@pytest.mark.parametrize(("recipe", "argv"), [
    ("speech_commands", ["--threads", "0"]),
    ("speech_commands", ["--seed", "-1"]),
    ("pipeline_vs_e2e", ["--threads", "0"]),
    ("augmentation", ["--threads", "-2"]),
    ("synthetic", ["--threads", "0"]),
    ("zero_shot_vs_finetune", ["measure", "--threads", "0"]),
    ("zero_shot_vs_finetune", ["compare", "--threads", "0"]),
    ("new_voices", ["--seeds", "-1"]),
])
def test_bad_threads_and_seeds_are_refused_before_any_work(load_recipe, recipe, argv, tmp_path, monkeypatch,
                                                            capsys):
    run = load_recipe(recipe)

    def no_work(*args, **kwargs):
        raise AssertionError("the recipe started work on an out-of-range option")

    monkeypatch.setattr(torch, "set_num_threads", no_work)
    if hasattr(run, "load_dataset"):
        monkeypatch.setattr(run, "load_dataset", no_work)
    if recipe == "new_voices":
        argv = [*argv, "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", [f"{recipe}/run.py", *argv])
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == 2 and "is out of range" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
