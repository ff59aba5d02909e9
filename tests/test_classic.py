"""Classic pipeline: MFCC features, the three recognisers on real FSDD clips, persistence, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer.audio import load
from speechxfer.classic import CLASSIC_KINDS, build_classic, load_classic, mfcc_features
from speechxfer.classic.base import CONFIG_FILE
from speechxfer.classic.dtw import dtw_distance
from speechxfer.recognizer import ModelError

DIGITS = [str(d) for d in range(10)]



def _clips(fsdd: Path, speakers: list[str], takes: range) -> tuple[list[torch.Tensor], list[str]]:
    keys = [(d, s, t) for s in speakers for d in DIGITS for t in takes]
    return [load(fsdd / f"{d}_{s}_{t}.wav") for d, s, t in keys], [k[0] for k in keys]


@pytest.fixture(scope="module")
def split(fsdd) -> dict[str, tuple[list[torch.Tensor], list[str]]]:
    """2 speakers x 10 digits x 5 takes to train; an unseen speaker's 30 clips to test."""
    return {"train": _clips(fsdd, ["george", "jackson"], range(5, 10)),
            "test": _clips(fsdd, ["theo"], range(3))}


@pytest.fixture(scope="module")
def fitted(split) -> dict[str, object]:
    waves, labels = split["train"]
    options = {"dtw": {"max_templates": 5}}  # DTW's cost grows with templates; 5 suffice here
    return {kind: build_classic(kind, **options.get(kind, {})).fit(waves, labels)
            for kind in CLASSIC_KINDS}


@pytest.fixture(scope="module")
def test_proba(fitted, split) -> dict[str, np.ndarray]:
    """Each system's probabilities on the unseen speaker, computed once."""
    return {kind: model.predict_proba(split["test"][0]) for kind, model in fitted.items()}


def test_mfcc_shape_and_normalisation(fsdd) -> None:
    wave = load(fsdd / "3_theo_0.wav")
    feats = mfcc_features(wave, 16000)
    assert feats.dtype == np.float32 and feats.shape[1] == 39 and feats.shape[0] > 10
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats.mean(axis=0), 0, atol=1e-4)  # CMVN
    untrimmed = mfcc_features(wave.numpy(), 16000, trim_silence=False)
    assert untrimmed.shape[0] >= feats.shape[0]


def test_mfcc_handles_very_short_clip() -> None:
    feats = mfcc_features(np.random.default_rng(0).standard_normal(800).astype(np.float32), 16000)
    assert feats.shape[1] == 39 and np.isfinite(feats).all()


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
def test_unseen_speaker_well_above_chance(kind: str, fitted, split, test_proba) -> None:
    labels = split["test"][1]
    proba = test_proba[kind]
    assert proba.shape == (len(labels), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert fitted[kind].labels == DIGITS
    accuracy = np.mean(np.array(DIGITS)[proba.argmax(axis=1)] == np.array(labels))
    assert accuracy >= 0.4, f"{kind}: {accuracy:.2f} on an unseen speaker (chance 0.10)"


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
def test_save_load_round_trip(kind: str, fitted, split, test_proba, tmp_path: Path) -> None:
    model = fitted[kind]
    model.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "model.safetensors").is_file()
    reloaded = load_classic(tmp_path)
    assert type(reloaded) is type(model) and reloaded.labels == model.labels
    np.testing.assert_array_equal(reloaded.predict_proba(split["test"][0]), test_proba[kind])


def test_predict_is_argmax_of_proba(fitted, split, test_proba) -> None:
    predicted = fitted["svm"].predict_labels(split["test"][0])
    assert predicted == [DIGITS[i] for i in test_proba["svm"].argmax(axis=1)]


def test_hmm_trains_on_one_clip_per_word(split) -> None:
    waves, labels = split["train"]
    model = build_classic("gmm-hmm").fit(waves[::5], labels[::5])  # one take per digit
    proba = model.predict_proba(split["test"][0][:5])
    assert np.isfinite(proba).all()


def test_dtw_distance_unequal_lengths() -> None:
    rng = np.random.default_rng(0)
    assert np.isfinite(dtw_distance(rng.standard_normal((3, 39)), rng.standard_normal((80, 39))))


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
def test_bad_input_raises_value_error(kind: str, split) -> None:
    waves, labels = split["train"]
    model = build_classic(kind)
    with pytest.raises(ValueError, match="non-empty"):
        model.fit([], [])
    with pytest.raises(ValueError, match="2 waves but 1 labels"):
        model.fit(waves[:2], labels[:1])
    with pytest.raises(ValueError, match="two distinct labels"):
        model.fit(waves[:2], ["0", "0"])
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict_labels(waves[:1])


def test_predict_rejects_empty_and_bad_waves(fitted) -> None:
    model = fitted["svm"]
    with pytest.raises(ValueError, match="non-empty"):
        model.predict_labels([])
    with pytest.raises(ValueError, match="wave 1"):
        model.predict_labels([torch.randn(8000), torch.zeros(0)])


def test_unknown_kind_and_wrong_directory(tmp_path: Path, fitted) -> None:
    with pytest.raises(ValueError, match="unknown classic kind"):
        build_classic("neural")
    with pytest.raises(ModelError, match="no config.json"):
        load_classic(tmp_path)
    fitted["dtw"].save(tmp_path)
    assert '"kind": "classic-dtw"' in (tmp_path / CONFIG_FILE).read_text()
    with pytest.raises(ValueError, match="not classic-svm"):
        type(fitted["svm"]).load(tmp_path)


def test_cli_trains_evaluates_and_predicts_a_classic_system(tmp_path: Path, capsys,
                                                            make_fsdd) -> None:
    from speechxfer.cli import main

    data = make_fsdd(tmp_path / "data", ("jackson", "theo"), ("1", "4", "7"), 8)
    out = tmp_path / "svm"
    assert main(["train", "--data", str(data), "--strategy", "svm", "--test-speaker", "theo",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(data), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 48 and report["accuracy"] > 0.5
    assert main(["predict", str(out), str(data / "7_jackson_0.wav")]) == 0
    assert "\t7\t" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["svm", "gmm-hmm"])
def test_cli_classic_training_leaves_out_clips_with_no_command_label(kind: str, tmp_path: Path,
                                                                     fsdd: Path) -> None:
    """An empty label cell means "not labelled" (a manifest may label other tasks only); a
    classic model fitting it as the class "None" would answer "None" for real clips."""
    import json

    from speechxfer.cli import main

    rows = ["path,label,speaker"] + [f"{fsdd / f'{d}_{s}_{t}.wav'},{d},{s}"
                                     for d in ("1", "4") for s in ("jackson", "george")
                                     for t in range(3)]
    rows += [f"{fsdd / f'7_{s}_{t}.wav'},,{s}" for s in ("jackson", "george") for t in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "model"
    assert main(["train", "--data", str(tmp_path / "m.csv"), "--strategy", kind,
                 "--out", str(out)]) == 0
    assert json.loads((out / CONFIG_FILE).read_text())["labels"] == ["1", "4"]


def test_hmm_training_prints_no_convergence_alarm(fsdd: Path, caplog) -> None:
    """These clips make hmmlearn's EM dip by a fraction of a nat, which it reports as "Model is
    not converging" in the middle of a training that works."""
    keys = [(d, s, t) for d in ("3", "5") for s in ("jackson", "theo") for t in range(3)]
    waves = [load(fsdd / f"{d}_{s}_{t}.wav") for d, s, t in keys]
    with caplog.at_level("WARNING"):
        build_classic("gmm-hmm").fit(waves, [d for d, _, _ in keys])
    assert not [r for r in caplog.records if "converging" in r.getMessage()]


def test_a_label_whose_training_clips_are_copies_of_one_recording_is_named(fsdd: Path,
                                                                            caplog) -> None:
    """Copies of one take teach one utterance: the model learns nothing of other voices."""
    copy = load(fsdd / "0_jackson_0.wav")
    ones = [load(fsdd / f"1_{s}_0.wav") for s in ("jackson", "george", "theo")]
    build_classic("svm").fit([copy, copy.clone(), copy.clone(), *ones], ["0"] * 3 + ["1"] * 3)
    assert "label '0': its 3 training clips are copies of one recording" in caplog.text
    assert "label '1'" not in caplog.text
