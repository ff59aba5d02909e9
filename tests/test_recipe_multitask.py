"""The multi-task recipe's protocol pieces: speaker split, scarce labels, threshold, pairing."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = load("multitask_run", RECIPES / "multitask" / "run.py")


def test_test_speakers_are_those_of_the_speech_commands_recipe_fold_0():
    sc = load("speech_commands_run_for_multitask", RECIPES / "speech_commands" / "run.py")
    speakers = [f"{i:08x}" for i in range(80)]
    groups = run.speaker_groups(speakers, run.N_GROUPS, run.GROUP_SEED)
    assert groups == sc.speaker_groups(speakers, 2 * sc.N_FOLDS, 0)
    roles = sc.fold_roles(0, len(groups))
    assert set(run.TEST_GROUPS) == roles["test"] and set(run.VAL_GROUPS) == roles["val"]


def test_scarce_hides_only_that_task_on_single_clips():
    singles = [{"command": "yes", "speaker": f"s{i}", "commands": "yes"} for i in range(1000)]
    concat = [{"speaker": "s1", "commands": "yes|no"}] * 50
    out = run.scarce(singles + concat, "speaker", 0.1, seed=0)
    kept = sum("speaker" in lab for lab in out[:1000])
    assert 60 < kept < 140
    assert all(lab["command"] == "yes" and lab["commands"] == "yes" for lab in out[:1000])
    assert out[1000:] == concat  # concatenations keep their labels
    assert out == run.scarce(singles + concat, "speaker", 0.1, seed=0)  # seeded
    out = run.scarce(singles, "command", 0.1, seed=1)
    assert all("speaker" in lab for lab in out) and sum("command" in lab for lab in out) < 140


def test_tuned_threshold_rescues_an_underconfident_multilabel_head():
    classes = ["a", "b", "c"]
    values = ["a", "b|c", "c", "a|b"]
    truth = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]], bool)
    probs = np.where(truth, 0.3, 0.05)  # right ranking, every output under 0.5
    assert run.multilabel_micro_f1(probs, values, classes) == 0.0
    threshold = run.tuned_threshold(probs, values, classes)
    assert 0.05 < threshold <= 0.3
    assert run.multilabel_micro_f1(probs, values, classes, threshold) == 1.0


def test_paired_differences_are_per_seed_and_eer_lower_is_better():
    results = {"command+speaker": [{"seed": 0, "speaker_eer": 0.10}, {"seed": 1, "speaker_eer": 0.20}],
               "speaker only": [{"seed": 1, "speaker_eer": 0.15}, {"seed": 0, "speaker_eer": 0.12}]}
    (pair,) = [p for p in run.paired(results) if p["metric"] == "speaker_eer"]
    assert pair["seeds"] == [0, 1]
    assert np.allclose(pair["diffs"], [-0.02, 0.05])
    assert (pair["multi_better"], pair["multi_worse"]) == (1, 1)


def test_every_named_condition_exists():
    assert set(run.QUICK) <= set(run.CONDITIONS)
    for multi, single, metric in run.PAIRS:
        assert multi in run.CONDITIONS and single in run.CONDITIONS
        assert metric in {k for k, _ in run.COLUMNS}


def test_a_run_would_not_replace_earlier_results_unasked(tmp_path, capsys):
    (tmp_path / "results_full.json").write_text('{"seeds": [0, 1, 2], "base_epochs": 3}')
    with pytest.raises(SystemExit) as stop:  # refused before any data is loaded
        run.main(["--out", str(tmp_path), "--only", "command only"])
    assert stop.value.code == 2
    assert "results_full.json holds earlier results" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="other seeds or epochs"):
        run.main(["--out", str(tmp_path), "--continue", "--seeds", "0"])


def test_an_unknown_condition_is_named():
    with pytest.raises(SystemExit) as stop:
        run.main(["--only", "no_such_condition"])
    assert stop.value.code == 2


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--epochs", "-1"], ["--seeds", "-1"],
                                    ["--max-minutes", "nan"], ["--max-minutes", "-1"]])
def test_bad_counts_are_refused_before_the_data_load(tmp_path, monkeypatch, capsys, option):
    # --epochs 0 ran the default epochs and -1 none (untrained heads scored), both with exit 0;
    # --max-minutes nan ran with no budget at all (every comparison with nan is false)
    monkeypatch.setattr(run, "Data", lambda *a: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as stop:
        run.main(["--out", str(tmp_path), "--only", "command only", *option])
    assert stop.value.code == 2 and "is out of range" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_skip_base_leaving_no_condition_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "Data", lambda *a: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as stop:  # was an empty results file, exit 0
        run.main(["--out", str(tmp_path), "--only", "base: command only", "--skip-base"])
    assert stop.value.code == 2 and "leaves none of the --only" in capsys.readouterr().err


def test_continuing_a_tag_on_other_data_is_refused(tmp_path, monkeypatch):
    # a --quick --tag X run continued without --quick mixed quick and full rows in one table
    (tmp_path / "results_x.json").write_text(json.dumps({
        "seeds": [0], "base_epochs": 4, "per_seed": {},
        "split": {"n": {"train_singles": 336}}}))

    class Data:
        def __init__(self, *args):
            self.counts = {"train_singles": 4000}

    monkeypatch.setattr(run, "Data", Data)
    monkeypatch.setattr(run, "run_one", lambda *a: pytest.fail("a condition ran"))
    with pytest.raises(SystemExit, match="earlier results used other data"):
        run.main(["--out", str(tmp_path), "--tag", "x", "--continue", "--seeds", "0",
                  "--epochs", "4", "--only", "command only"])


def test_an_out_that_is_a_file_is_refused_before_the_data_load(tmp_path, monkeypatch, capsys):
    """It was a FileExistsError after every condition had run, every figure lost."""
    monkeypatch.setattr(run, "Data", lambda *a: pytest.fail("the data was loaded"))
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        run.main(["--quick", "--out", str(taken), "--work", str(tmp_path / "work")])
    assert stop.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err


def test_help_keeps_the_docstrings_commands_one_a_line(capsys):
    """--help ran the example commands together into one paragraph."""
    with pytest.raises(SystemExit):
        run.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("    python recipes/multitask/run.py --quick") for line in lines)
