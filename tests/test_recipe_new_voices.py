"""The new-voices recipe's resume: a finished fold is kept, another run's folder refused."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechxfer.audio import Clip
from speechxfer.jobs import model_options

RUN = Path(__file__).resolve().parents[1] / "recipes" / "new_voices" / "run.py"
spec = importlib.util.spec_from_file_location("new_voices_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run
spec.loader.exec_module(run)


def finished(folder: Path, data: Path, held: list[str], **changes) -> Path:
    """A fold as ``train`` saves it: the default (combined) run with ``changes``."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "train_summary.json").write_text(json.dumps(
        {"data": str(data.resolve()), "test_speakers": held, "strategy": {"strategy": "combined"},
         **model_options("combined"), **changes}))
    return folder


@pytest.fixture
def no_training(monkeypatch):
    def cli(argv):
        raise AssertionError(f"trained again: {argv}")

    monkeypatch.setattr(run, "cli", cli)


def test_a_finished_fold_is_kept(tmp_path, no_training):
    folder = finished(tmp_path / "half0", tmp_path / "digits.csv", ["b", "a"])
    assert run.train([], folder, tmp_path / "digits.csv", ["a", "b"], 0) == folder


@pytest.mark.parametrize("data, held", [("other.csv", ["a", "b"]), ("digits.csv", ["a", "c"])])
def test_a_folder_of_another_fold_is_refused(tmp_path, no_training, data, held):
    folder = finished(tmp_path / "half0", tmp_path / data, held)
    with pytest.raises(SystemExit, match="half0: trained with other options.*(data|test_speakers)"):
        run.train([], folder, tmp_path / "digits.csv", ["a", "b"], 0)


@pytest.mark.parametrize("changes, seed", [({"seed": 1}, 0), ({}, 1), ({"epochs": 5}, 0),
                                           ({"k": 3}, 0), ({"pooling": "attentive"}, 0),
                                           ({"layer": 2}, 0), ({"keep": "last"}, 0)])
def test_a_fold_trained_with_another_seed_or_option_is_refused(tmp_path, no_training, changes,
                                                               seed):
    """The recipe names the data, speakers and seed; every other option that changes a model
    is compared with the default it trains with (``jobs.finished_run``)."""
    folder = finished(tmp_path / "half0", tmp_path / "digits.csv", ["a", "b"], **changes)
    key = next(iter(changes), "seed")
    with pytest.raises(SystemExit, match=f"half0: trained with other options \\({key} "):
        run.train([], folder, tmp_path / "digits.csv", ["a", "b"], seed)


def test_a_fold_trains_with_the_seed_it_is_compared_by(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run, "cli", lambda argv: calls.append(argv) or 0)
    run.train(["--test-speaker", "a"], tmp_path / "half0", tmp_path / "digits.csv", ["a"], 3)
    assert calls == [["train", "--test-speaker", "a", "--seed", "3", "--out",
                      str(tmp_path / "half0")]]


def test_a_fold_saved_before_the_summary_recorded_its_options_is_refused(tmp_path, no_training):
    folder = tmp_path / "half0"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "train_summary.json").write_text(json.dumps(
        {"data": str((tmp_path / "digits.csv").resolve()), "test_speakers": ["a", "b"]}))
    with pytest.raises(SystemExit, match="half0: saved before train_summary.json recorded the "
                                         "options it was trained with \\(seed, epochs,"):
        run.train([], folder, tmp_path / "digits.csv", ["a", "b"], 0)


def test_a_seed_given_twice_is_refused(monkeypatch, no_training):
    monkeypatch.setattr(sys, "argv", ["run.py", "--seeds", "0", "0"])
    with pytest.raises(SystemExit) as exit_:
        run.main()
    assert exit_.value.code == 2


@pytest.mark.parametrize("options, stem", [
    (["--seeds", "0"], "results"), (["--seeds", "0", "1"], "results_seeds-0-1"),
    (["--channel-rate", "8000"], "results_channel-8000"),
    (["--seeds", "0", "1", "--channel-rate", "8000"], "results_seeds-0-1_channel-8000")])
def test_results_are_named_by_the_options(tmp_path, monkeypatch, options, stem):
    """Only the default run writes results.json: the five-seed figures must not be replaced."""
    monkeypatch.setattr(run, "train", lambda args, folder, data, held, seed: folder)
    monkeypatch.setattr(run, "right",
                        lambda folder, clips, rate: dict.fromkeys(run.PATHS, len(clips)))
    monkeypatch.setattr(run, "HERE", tmp_path)
    monkeypatch.setattr(sys, "argv", ["run.py", "--work", str(tmp_path / "w"), *options])
    run.main()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{stem}.json",
                                                                         f"{stem}.md"]


def test_the_channel_removes_the_band_above_its_nyquist(tmp_path, monkeypatch):
    """--channel-rate 8000 must score clips without energy above 4 kHz (FSDD's band)."""
    heard = []

    class System:
        fast = object()
        labels = tuple(str(d) for d in range(10))

        def predict_proba(self, waves):
            heard.extend(waves)
            return np.eye(10)[[0] * len(waves)]

    monkeypatch.setattr(run, "load_model", lambda folder: System())
    rate = run.SAMPLE_RATE
    t = np.arange(rate) / rate
    clip = tmp_path / "0_x_0.wav"
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t))
             .astype(np.float32), rate)
    clips = [Clip(path=clip, labels={"command": "0"}, speaker="x")]
    for channel in (None, 8000):
        heard.clear()
        run.right(tmp_path, clips, channel)
        spectrum = np.abs(np.fft.rfft(heard[0].numpy()))
        high = spectrum[5000:7000].sum() / spectrum.sum()
        assert (high > 0.3) if channel is None else (high < 0.05)  # from about half
