"""Every recipe refuses a thread count or seed outside the CLI's ranges at parsing, with one
usage line: ``--threads 0`` was a RuntimeError traceback from torch, a negative seed a traceback
once the data had loaded (or another program's usage error, several steps in)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_run_for_ranges", RECIPES / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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
def test_bad_threads_and_seeds_are_refused_before_any_work(recipe, argv, tmp_path, monkeypatch,
                                                            capsys):
    run = load(recipe)

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
