"""ONNX export: the exported folder opens with load_model, runs on ONNX Runtime, and agrees with
the torch system on real clips (labels and probabilities); a broken folder is a ModelError."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer import CommandClassifier, ModelError, load_model
from speechxfer.audio import load
from speechxfer.cli import main
from speechxfer.encoders import build_encoder
from speechxfer.export import OnnxRecognizer, export, padded_length
from speechxfer.train import TrainConfig, fit

DIGITS = ("1", "4", "7")


def clips(fsdd: Path, speakers: tuple[str, ...], takes: range) -> tuple[list, list[str]]:
    keys = [(d, s, t) for s in speakers for d in DIGITS for t in takes]
    return [load(fsdd / f"{d}_{s}_{t}.wav") for d, s, t in keys], [d for d, _, _ in keys]


@pytest.fixture(scope="module")
def frozen(tmp_path_factory, fsdd) -> Path:
    """A frozen-encoder Whisper head trained on three digits of two speakers, saved; its
    threshold set so that the exported folder must carry it."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"),
                              {"command": list(DIGITS)})
    waves, labels = clips(fsdd, ("jackson", "george"), range(3))
    fit(model, waves, [{"command": x} for x in labels], [], [],
        TrainConfig(strategy="frozen", epochs=15, device="cpu"))
    model.threshold = 0.4
    folder = tmp_path_factory.mktemp("frozen") / "model"
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def exported(frozen, tmp_path_factory, fsdd) -> tuple[Path, str]:
    """``speechxfer export`` of the frozen head with the parity check on theo's clips: the
    folder and what the command printed."""
    data = tmp_path_factory.mktemp("theo")
    for d in DIGITS:
        for t in range(4):
            shutil.copy(fsdd / f"{d}_theo_{t}.wav", data)
    out = tmp_path_factory.mktemp("onnx") / "model"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(frozen), "--format", "onnx", "--out", str(out),
                     "--data", str(data)]) == 0
    return out, printed.getvalue()


def test_export_command_prints_parity_and_writes_a_loadable_folder(exported):
    out, printed = exported
    assert "label agreement 1.0000" in printed, printed
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "onnx" and config["labels"] == list(DIGITS)
    assert config["parity"]["n"] == 12 and config["parity"]["label_agreement"] == 1.0
    assert config["threshold"] == 0.4
    system = load_model(out)
    assert isinstance(system, OnnxRecognizer) and system.threshold == 0.4


def test_exported_predictions_match_torch_on_held_out_clips(frozen, exported, fsdd):
    out, _ = exported
    torch_system, onnx_system = load_model(frozen), load_model(out)
    waves, truth = clips(fsdd, ("theo",), range(4, 8))
    ref, got = torch_system.predict_proba(waves), onnx_system.predict_proba(waves)
    assert np.abs(ref - got).max() < 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    accuracy = np.mean([DIGITS[i] == t for i, t in zip(got.argmax(1), truth)])
    assert accuracy > 1 / len(DIGITS) + 0.3  # the exported head recognises an unseen speaker
    files = [str(fsdd / f"{d}_theo_9.wav") for d in DIGITS]
    one, batch = onnx_system.predict(files[0]), onnx_system.predict_batch(files)
    assert one.label == batch[0].label == torch_system.predict(files[0]).label
    assert [p.label for p in batch] == [p.label for p in torch_system.predict_batch(files)]


def test_a_clip_longer_than_the_window_still_runs(exported, real_clip):
    system = load_model(exported[0])
    long = torch.cat([real_clip, torch.zeros(40_000), real_clip])  # > 2 s
    assert padded_length("2s", long.numel()) > 32_000
    probs = system.predict_proba([long, real_clip])
    assert probs.shape == (2, len(DIGITS)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_a_broken_exported_folder_is_a_model_error(exported, tmp_path):
    folder = Path(shutil.copytree(exported[0], tmp_path / "broken"))
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="ONNX Runtime cannot open"):
        load_model(folder)
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model.onnx is missing"):
        load_model(folder)


def test_a_graph_with_other_labels_is_refused(exported, tmp_path):
    folder = Path(shutil.copytree(exported[0], tmp_path / "relabelled"))
    config = json.loads((folder / "config.json").read_text())
    config["labels"] = ["a", "b"]
    config.pop("threshold")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not fit 2 labels"):
        load_model(folder)


def test_only_neural_and_combined_systems_export(tmp_path):
    cnn = CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["a", "b"]})
    with pytest.raises(ValueError, match="Whisper"):
        export(cnn, tmp_path / "cnn")
    assert not (tmp_path / "cnn").exists()


@pytest.mark.slow
def test_combined_and_int8_exports_agree_with_torch(frozen, fsdd, tmp_path):
    from speechxfer.decoder.combined import CombinedRecognizer
    from speechxfer.decoder.scoring import ZeroShotRecognizer

    head = load_model(frozen)
    head.info = {"strategy": {"strategy": "frozen"}}
    system = CombinedRecognizer(head, ZeroShotRecognizer(list(DIGITS)), weight=1.0)
    waves, _ = clips(fsdd, ("theo",), range(4))
    _, fp32 = export(system, tmp_path / "combined", check_waves=waves)
    assert fp32.label_agreement == 1.0 and fp32.max_probability_difference < 1e-4
    _, int8 = export(system, tmp_path / "int8", int8=True, check_waves=waves)
    assert int8.label_agreement == 1.0
    assert load_model(tmp_path / "int8").labels == list(DIGITS)


def test_the_stream_detector_hears_the_same_with_the_exported_folder(frozen, exported, fsdd):
    import soundfile as sf

    from speechxfer.detect import Detector, detect_chunks

    rng = np.random.default_rng(0)
    gap = 0.002 * rng.standard_normal(8000)
    audio = np.concatenate([part for d in DIGITS
                            for part in (gap, sf.read(fsdd / f"{d}_theo_20.wav")[0])] + [gap])
    heard = []
    for system in (load_model(frozen), load_model(exported[0])):
        detector = Detector(system, sample_rate=8000)
        chunks = [audio[i: i + 800] for i in range(0, len(audio), 800)]
        heard.append([(e.label, round(e.start, 2)) for e in detect_chunks(detector, chunks)])
    assert heard[0] == heard[1] and len(heard[0]) >= 2


@pytest.mark.slow
def test_int8_keeps_a_quiet_clip_batched_with_a_loud_one(frozen, fsdd, tmp_path):
    """Only matrix products are quantised: an int8 STFT (one scale per batch tensor) loses a
    quiet clip next to a loud one, which flipped labels of the default model's short clips."""
    system = load_model(frozen)
    waves, _ = clips(fsdd, ("theo",), range(4))
    loud = waves[0] / waves[0].abs().max()
    quiet = [0.003 * w / w.abs().max() for w in waves[1:]]
    _, result = export(system, tmp_path / "int8", int8=True, check_waves=[loud, *quiet])
    assert result.label_agreement == 1.0, result.line()
