"""The augmentation study's conditions and its paired test (the run itself is slow)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

RUN = Path(__file__).resolve().parents[1] / "recipes" / "augmentation" / "run.py"
spec = importlib.util.spec_from_file_location("augmentation_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run  # dataclasses look their module up
spec.loader.exec_module(run)

PROBS = ("noise_prob", "reverb_prob", "speed_prob", "shift_prob")


@pytest.mark.parametrize("name", ["noise", "reverb", "speed", "shift"])
def test_each_condition_turns_on_only_its_augmentation(name):
    config = run.augmenter(name, 2, 0, []).config
    assert config.copies == 2 and not config.specaugment
    assert {p: getattr(config, p) for p in PROBS} == {p: float(p == f"{name}_prob") for p in PROBS}


def test_masks_alone_keep_the_waves_and_all_is_the_library_chain_with_masks():
    masks = run.augmenter("specaugment", 2, 0, []).config
    assert masks.specaugment and not any(getattr(masks, p) for p in PROBS)
    chain = run.augmenter("all", 2, 0, []).config
    assert chain.specaugment and all(getattr(chain, p) > 0 for p in PROBS)
    assert run.augmenter("none", 2, 0, []) is None and run.augmenter("none-seed1", 2, 0, []) is None


def test_sign_test_counts_the_clips_that_changed():
    base = np.array([True, True, False, False, True])
    mine = np.array([True, False, True, True, True])
    assert run.sign_test(mine, base) == {"gained": 2, "lost": 1, "p": 1.0}
    assert run.sign_test(base, base)["p"] == 1.0
    assert run.sign_test(np.ones(8, bool), np.zeros(8, bool))["p"] < 0.01


@pytest.mark.parametrize("option, says", [
    (["--tasks", "digit"], "--tasks: no task digit"),  # ran nothing, wrote empty results, exit 0
    (["--copies", "0"], "'0' is out of range"),  # a traceback after the first condition
    (["--max-false-accept", "nan"], "'nan' is out of range"),
])
def test_bad_options_are_refused_before_any_condition(tmp_path, monkeypatch, capsys, option, says):
    monkeypatch.setattr(run, "Study", lambda *a, **k: pytest.fail("a study started"))
    with pytest.raises(SystemExit) as stop:
        run.main(["--out", str(tmp_path / "out"), *option])
    assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_before_any_condition(tmp_path, monkeypatch, capsys):
    """It was a FileExistsError after the whole run, every figure lost."""
    monkeypatch.setattr(run, "Study", lambda *a, **k: pytest.fail("a study started"))
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        run.main(["--quick", "--out", str(taken)])
    assert stop.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err
