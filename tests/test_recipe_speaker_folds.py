"""The speaker-folds recipe's results names and resume (no training)."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from speechxfer.jobs import bundled, default_epochs, model_options

RUN = Path(__file__).resolve().parents[1] / "recipes" / "speaker_folds" / "run.py"
spec = importlib.util.spec_from_file_location("speaker_folds_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run
spec.loader.exec_module(run)

SPEAKERS = ("george", "jackson", "theo", "yweweler")


def options(**changes) -> argparse.Namespace:
    values = {"strategy": "combined", "k": 2, "per_class": None, "epochs": default_epochs("combined"),
              "encoder": "whisper-tiny.en", "window": None, "pooling": "mean", "seed": 0,
              "data": bundled("fsdd"), **changes}
    return argparse.Namespace(**values)


def test_runs_with_other_options_get_other_results_files():
    assert run.results_name(options(), on_fsdd=True) == "combined_pcall_default"  # as before
    names = {run.results_name(options(), True),
             run.results_name(options(data=Path("data/digits.csv")), False),
             run.results_name(options(encoder="whisper-base"), True),
             run.results_name(options(seed=1), True),
             run.results_name(options(epochs=3), True),
             run.results_name(options(pooling="attentive"), True)}
    assert len(names) == 6


def write_fold(folder: Path, speaker: str, location: Path, **changes) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    summary = {"data": str(location.resolve()), "encoder": "whisper-tiny.en", "window": "2s",
               "strategy": {"strategy": "combined"}, "per_class": None,
               "test_speakers": [speaker], "n_train": 1350, "train_seconds": 60.0,
               "test": {"n": 500, "accuracy": 0.9, "macro_f1": 0.9},
               **model_options("combined"), **changes}
    (folder / "train_summary.json").write_text(json.dumps(summary))


def test_a_rerun_keeps_finished_folds_and_trains_none(tmp_path, monkeypatch):
    args = options(work=tmp_path)
    data = Path(run.load_dataset(args.data).location)
    for speaker in SPEAKERS:
        write_fold(tmp_path / speaker, speaker, data)

    def train_job(*_, **__):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(run, "train_job", train_job)
    folds = run.job_folds(args)
    assert [f["test_speaker"] for f in folds] == sorted(SPEAKERS)
    assert all(f["accuracy"] == 0.9 and f["n_train"] == 1350 for f in folds)


@pytest.mark.parametrize("changes, says", [
    ({"data": "/elsewhere/digits.csv"}, "data"),
    ({"test_speakers": ["theo"]}, "test_speakers"),
    ({"encoder": "whisper-base"}, "encoder"),
    ({"per_class": 3}, "per_class"),
    ({"strategy": {"strategy": "full"}}, "strategy"),
])
def test_a_fold_trained_with_other_options_is_refused_not_reused(tmp_path, changes, says):
    args = options()
    data = Path(run.load_dataset(args.data).location)
    write_fold(tmp_path / "george", "george", data, **changes)
    with pytest.raises(SystemExit, match=f"george: trained with other options.*{says}"):
        run.finished_fold(tmp_path / "george", args, data, "george")
    assert run.finished_fold(tmp_path / "none", args, data, "george") is None


@pytest.mark.parametrize("data, says", [
    ("data/speech_commands", "no clips of george, jackson, theo, yweweler"),
    ("{tmp}/none", "none: no such file or folder"),
])
def test_data_without_the_fold_speakers_is_refused_before_any_fold(tmp_path, monkeypatch, capsys,
                                                                    data, says):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sys, "argv", ["run.py", "--data", data.format(tmp=tmp_path),
                                      "--work", str(tmp_path / "work")])
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("option, says", [
    (["--epochs", "0"], "'0' is out of range"),  # was the strategy's default epochs, silently
    (["--per-class", "0"], "'0' is out of range"),  # was every clip, silently
    (["--per-class", "-1"], "'-1' is out of range"),  # was a traceback after the cache pass
    (["--seed", "-1"], "'-1' is out of range"),
    (["--encoder", "bogus"], "unknown encoder 'bogus'"),  # was a traceback from the first fold
    (["--window", "0s"], "window must be 'clip' or 'Ns'"),
    (["--strategy", "svm", "--pooling", "attentive"], "the svm strategy does not use it"),
    (["--strategy", "combined", "--k", "3"], "the combined strategy does not use it"),
    (["--work", "{file}"], "exists and is not a folder"),  # was a NotADirectoryError traceback
])
def test_bad_values_are_refused_before_any_fold(tmp_path, monkeypatch, capsys, option, says):
    (tmp_path / "file").write_text("")
    option = [o.format(file=tmp_path / "file") for o in option]
    monkeypatch.setattr(sys, "argv", ["run.py", "--work", str(tmp_path / "work"), *option])
    monkeypatch.setattr(run, "cached_folds", lambda args: pytest.fail("a fold ran"))
    monkeypatch.setattr(run, "job_folds", lambda args: pytest.fail("a fold ran"))
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_k_names_the_results_of_every_strategy_that_reads_it():
    # reinit-k with --k 3 shared k 2's name: its folds kept, its results written over
    assert run.results_name(options(strategy="reinit-k", k=3), True) != \
        run.results_name(options(strategy="reinit-k"), True)


def test_a_name_given_again_with_another_seed_is_refused_not_reused(tmp_path, monkeypatch):
    """The fold summaries record seed, epochs, k and pooling (``jobs.MODEL_OPTIONS``): no
    options.json of the work folder keeps them any more."""
    monkeypatch.setattr(run, "train_job", lambda *_, **__: pytest.fail("trained"))
    data = Path(run.load_dataset(bundled("fsdd")).location)
    for speaker in SPEAKERS:
        write_fold(tmp_path / speaker, speaker, data)
    assert len(run.job_folds(options(work=tmp_path))) == 4  # the run that trained them
    assert len(run.job_folds(options(work=tmp_path))) == 4  # its rerun keeps them
    for changes in ({"seed": 1}, {"epochs": 9}, {"pooling": "attentive"}, {"k": 3}):
        with pytest.raises(SystemExit, match=f"george: trained with other options \\("
                                              f"{next(iter(changes))} "):
            run.job_folds(options(work=tmp_path, **changes))
    assert not (tmp_path / "options.json").exists()


def test_a_fold_saved_before_the_summary_recorded_its_options_is_refused_before_any_trains(
        tmp_path, monkeypatch):
    """An older summary cannot say which seed, epochs, k or pooling trained it: refused with
    the reason, and before the missing fold ahead of it (george) spends a training."""
    monkeypatch.setattr(run, "train_job", lambda *_, **__: pytest.fail("trained"))
    data = Path(run.load_dataset(bundled("fsdd")).location)
    write_fold(tmp_path / "jackson", "jackson", data)
    old = json.loads((tmp_path / "jackson" / "train_summary.json").read_text())
    for key in ("seed", "epochs", "k", "pooling", "layer", "keep"):
        del old[key]
    (tmp_path / "jackson" / "train_summary.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="jackson: saved before train_summary.json recorded the "
                                         "options it was trained with \\(seed, epochs, k, pooling"):
        run.job_folds(options(work=tmp_path))
