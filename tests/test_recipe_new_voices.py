"""The new-voices recipe's resume: a finished fold is kept, another run's folder refused."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "recipes" / "new_voices" / "run.py"
spec = importlib.util.spec_from_file_location("new_voices_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run
spec.loader.exec_module(run)


def finished(folder: Path, data: Path, held: list[str]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "train_summary.json").write_text(json.dumps(
        {"data": str(data.resolve()), "test_speakers": held}))
    return folder


@pytest.fixture
def no_training(monkeypatch):
    def cli(argv):
        raise AssertionError(f"trained again: {argv}")

    monkeypatch.setattr(run, "cli", cli)


def test_a_finished_fold_is_kept(tmp_path, no_training):
    folder = finished(tmp_path / "half0", tmp_path / "digits.csv", ["b", "a"])
    assert run.train(["--seed", "0"], folder, tmp_path / "digits.csv", ["a", "b"]) == folder


@pytest.mark.parametrize("data, held", [("other.csv", ["a", "b"]), ("digits.csv", ["a", "c"])])
def test_a_folder_of_another_fold_is_refused(tmp_path, no_training, data, held):
    folder = finished(tmp_path / "half0", tmp_path / data, held)
    with pytest.raises(SystemExit, match="half0: trained with other options.*(data|test_speakers)"):
        run.train(["--seed", "0"], folder, tmp_path / "digits.csv", ["a", "b"])


def test_a_seed_given_twice_is_refused(monkeypatch, no_training):
    monkeypatch.setattr(sys, "argv", ["run.py", "--seeds", "0", "0"])
    with pytest.raises(SystemExit) as exit_:
        run.main()
    assert exit_.value.code == 2


@pytest.mark.parametrize("seeds, stem", [(["0"], "results"), (["0", "1"], "results_seeds-0-1")])
def test_results_are_named_by_the_seeds(tmp_path, monkeypatch, seeds, stem):
    """Only seed 0's run writes results.json: the five-seed figures must not be replaced."""
    monkeypatch.setattr(run, "train", lambda args, folder, data, held: folder)
    monkeypatch.setattr(run, "right", lambda folder, clips: dict.fromkeys(run.PATHS, len(clips)))
    monkeypatch.setattr(run, "HERE", tmp_path)
    monkeypatch.setattr(sys, "argv", ["run.py", "--work", str(tmp_path / "w"), "--seeds", *seeds])
    run.main()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{stem}.json",
                                                                         f"{stem}.md"]
