import json

import numpy as np
import pytest
import torch

from speechxfer.audio import Clip
from speechxfer.data import load_dataset
from speechxfer.encoders import build_encoder
from speechxfer.evaluate import equal_error_rate, markdown, score
from speechxfer.heads import MISSING, encode_multilabel, multilabel_classes
from speechxfer.model import CommandClassifier
from speechxfer.multitask import make_concatenations, multilabel_micro_f1, task_metrics
from speechxfer.train import TrainConfig, encode_targets, fit, masked_loss

HEADS = {"speaker": {"kind": "embedding", "embedding_dim": 16, "layer": 1},
         "commands": {"kind": "multi"}}


def cnn_model(tasks: dict[str, list[str]]) -> CommandClassifier:
    torch.manual_seed(0)
    return CommandClassifier(build_encoder("ds-cnn", pretrained=False), tasks,
                             head_options={t: o for t, o in HEADS.items() if t in tasks})


def test_encode_multilabel_marks_unknowns():
    classes = multilabel_classes(["1|7", "3|?4", ""])
    assert classes == ["1", "3", "4", "7"]
    assert encode_multilabel("3|?4", classes) == [0.0, 1.0, MISSING, 0.0]
    assert encode_multilabel("", classes) == [MISSING] * 4


@pytest.mark.parametrize("task", ["speaker", "commands"])
def test_missing_label_or_entry_changes_no_gradient(task):
    m = cnn_model({"command": ["a", "b"], "speaker": ["x", "y"], "commands": ["1", "2", "3"]})
    m.eval()  # no dropout: the passes must be comparable
    labels = [{"speaker": "x", "commands": "1|?3"}, {"commands": ""}]
    targets = encode_targets(m, labels)
    assert targets["speaker"].tolist() == [0, MISSING]
    assert targets["commands"].tolist() == [[1, 0, MISSING], [MISSING] * 3]
    wave = torch.randn(2, 8000) * 0.1
    weight = m.heads[task].classifier[-1].weight

    def grad(waves, tgt):
        out = m(waves, torch.full((len(waves),), 8000))
        return torch.autograd.grad(masked_loss({task: out[task]}, {task: tgt}, {}, m.heads), weight)[0]

    # clip 2 has no label for the task: dropping it changes nothing
    g_both = grad(wave, targets[task])
    g_one = grad(wave[:1], targets[task][:1])
    assert torch.allclose(g_both, g_one, rtol=1e-4, atol=1e-5)
    if task == "commands":  # the unknown entry (class 3) gets no gradient at all
        assert torch.all(g_both[2] == 0) and torch.any(g_both[0] != 0)


def test_concatenations_multilabel_head_learns(small_fsdd, tmp_path):
    clips = load_dataset(small_fsdd).clips
    made = make_concatenations(clips, 36, seed=0, out_dir=tmp_path / "cat", hide_entry=0.3)
    ds = load_dataset(tmp_path / "cat")
    assert len(ds.clips) == 36 and ds.layout == "manifest"
    assert {c.labels.get("commands") for c in ds.clips} == {c.labels.get("commands") for c in made}
    assert any("?" in c.labels["commands"] for c in ds.clips)
    assert all(c.speaker in {"jackson", "george", "theo"} for c in ds.clips)
    from speechxfer.audio import load

    waves = [load(c.path) for c in ds.clips]
    labels = [c.labels | {"command": "1"} for c in ds.clips]
    torch.manual_seed(0)  # frozen pretrained encoder: features cached once, only the head trains
    model = CommandClassifier(build_encoder("whisper-tiny.en", pretrained=True),
                              {"command": ["0", "1"], "commands": ["1", "4", "7"]},
                              head_options={"commands": {"kind": "multi"}})
    config = TrainConfig(strategy="frozen", epochs=15, batch_size=12, lr_head=5e-3, patience=99,
                         task_weights={"command": 0})
    fit(model, waves[:24], labels[:24], [], [], config)
    probs = model.predict_all(waves)["commands"]
    values = [c.labels["commands"] for c in ds.clips]
    f1 = multilabel_micro_f1(probs, values, model.tasks["commands"])
    chance = multilabel_micro_f1(np.ones_like(probs), values, model.tasks["commands"])
    assert f1 > chance + 0.1, (f1, chance)
    metrics = task_metrics(model, waves, ds.clips)
    assert metrics["commands"]["micro_f1"] == pytest.approx(f1)


def test_save_load_round_trip_with_every_head_kind(tmp_path):
    m = cnn_model({"command": ["a", "b"], "speaker": ["x", "y", "z"], "commands": ["1", "2"]})
    m.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["heads"]["speaker"]["kind"] == "embedding"
    assert config["heads"]["speaker"]["layer"] == 1
    back = CommandClassifier.load(tmp_path / "m")
    assert back.kinds == {"command": "single", "speaker": "embedding", "commands": "multi"}
    waves = [torch.randn(6000) * 0.1, torch.randn(9000) * 0.1]
    for a, b in zip(m.eval().predict_all(waves, embeddings=True).values(),
                    back.predict_all(waves, embeddings=True).values()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    pred = back.predict_batch(waves, sample_rate=16000)[0]
    assert len(pred.embeddings["speaker"]) == 16
    assert np.linalg.norm(pred.embeddings["speaker"]) == pytest.approx(1.0, abs=1e-4)
    assert set(pred.tasks) == {"command", "speaker", "commands"}
    # an old config (tasks + head only) still loads, every head single
    old = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                            {"command": ["a", "b"], "speaker": ["x", "y"]})
    old.save(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg.pop("heads")
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    assert CommandClassifier.load(tmp_path / "old").kinds == {"command": "single",
                                                              "speaker": "single"}


def test_equal_error_rate_on_synthetic_embeddings():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    speakers = [str(s) for s in np.repeat(np.arange(4), 20)]
    tight = centres[np.repeat(np.arange(4), 20)] + 0.1 * rng.normal(size=(80, 32))
    assert equal_error_rate(tight, speakers) < 0.01
    noise = rng.normal(size=(80, 32))
    assert 0.35 < equal_error_rate(noise, speakers) < 0.65
    with pytest.raises(ValueError, match="both"):
        equal_error_rate(noise[:3], ["a", "a", "a"])


TRAIN_SPEAKERS, NEW_SPEAKERS = ("jackson", "yweweler"), ("theo", "george")


@pytest.fixture(scope="module")
def speaker_clips(fsdd):
    """Digits 1/4/7: takes 0-5 of two speakers to train on; takes 6-7 of the same two (known)
    and takes 0-3 of two others (unseen) to score."""
    def clips(speakers, takes):
        return [Clip(fsdd / f"{d}_{s}_{t}.wav", {"command": d, "speaker": s}, s)
                for s in speakers for d in "147" for t in takes]

    from speechxfer.audio import load

    train = clips(TRAIN_SPEAKERS, range(6))
    test = clips(TRAIN_SPEAKERS, range(6, 8)) + clips(NEW_SPEAKERS, range(4))
    return ([load(c.path) for c in train], train), ([load(c.path) for c in test], test)


def no_nan(value) -> str:
    """``value`` as strict JSON: a NaN or infinity anywhere raises ValueError."""
    return json.dumps(value, allow_nan=False)


@pytest.mark.parametrize("kind", ["single", "embedding"])
def test_speakers_identified_when_known_and_verified_when_unseen(speaker_clips, kind):
    """A speaker head trained on two voices: identification on their held-out takes, EER (not
    NaN) on the two voices it never heard, from a frozen Whisper and a small trained head."""
    (train_w, train), (test_w, test) = speaker_clips
    torch.manual_seed(0)
    options = {"speaker": {"kind": kind, "embedding_dim": 16}} if kind == "embedding" else None
    model = CommandClassifier(build_encoder("whisper-tiny.en", pretrained=True),
                              {"command": ["1", "4", "7"], "speaker": list(TRAIN_SPEAKERS)},
                              head_options=options)
    config = TrainConfig(strategy="frozen", epochs=15, batch_size=12, lr_head=5e-3, patience=99)
    fit(model, train_w, [c.labels for c in train], [], [], config)
    metrics = task_metrics(model, test_w, test)
    no_nan(metrics)
    speaker = metrics["speaker"]
    assert speaker["kind"] == kind and speaker["n"] == 36
    assert speaker["n_known"] == 12 and speaker["n_unseen"] == 24
    assert speaker["accuracy"] >= 0.75, speaker  # chance: 0.5
    assert 0.0 <= speaker["eer"] < 0.4, speaker  # chance: 0.5
    assert ("eer_known" in speaker) == (kind == "embedding")
    assert "n_unseen" not in metrics["command"] and metrics["command"]["n_known"] == 36
    # only unseen speakers: nothing to identify, so no accuracy (None, not NaN), still an EER
    unseen = [i for i, c in enumerate(test) if c.speaker in NEW_SPEAKERS]
    only_new = task_metrics(model, [test_w[i] for i in unseen], [test[i] for i in unseen])
    no_nan(only_new)
    assert only_new["speaker"]["accuracy"] is None and only_new["speaker"]["n_known"] == 0
    assert only_new["speaker"]["eer"] == pytest.approx(speaker["eer"])
    # one unseen speaker alone gives no different-speaker pair: no EER either, and no NaN
    theo = [i for i, c in enumerate(test) if c.speaker == "theo"]
    alone = task_metrics(model, [test_w[i] for i in theo], [test[i] for i in theo])["speaker"]
    assert set(alone) == {"kind", "n", "n_known", "accuracy", "note", "n_unseen"}
    report = score(["1", "4", "7"], [c.label for c in test], np.full((36, 3), 1 / 3))
    report["tasks"] = metrics
    assert "nan" not in markdown(report).lower()
    assert f"eer {speaker['eer']:.4f}" in markdown(report)


def test_concatenation_clip_type(small_fsdd, tmp_path):
    made = make_concatenations(load_dataset(small_fsdd).clips, 5, seed=1, out_dir=tmp_path,
                               hide_label=1.0, hide_speaker=1.0)
    assert all(isinstance(c, Clip) and c.labels == {} and c.speaker is None for c in made)


@pytest.mark.parametrize("kind", ["single", "embedding"])
def test_a_speaker_task_of_one_speaker_is_refused_before_training(make_fsdd, tmp_path, capsys,
                                                                    kind):
    """One training speaker gives a speaker head one class: it would name that speaker for
    every voice with probability 1, and the run would end with exit 0."""
    from speechxfer.cli import main

    data = make_fsdd(tmp_path / "one", ("jackson",), ("1", "4"), 2)
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--strategy", "frozen", "--task", "command",
                 "--task", f"speaker:{kind}", "--per-class", "1", "--epochs", "1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "['speaker'] have one training label only" in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["multi", "single"])
def test_speaker_figure_only_over_speakers_the_head_knows(kind):
    """Test speakers the head never trained on (--test-speaker theo) cannot be named: the speaker
    figure is over the clips of known speakers only, and with none it is None with a note, not
    a micro-F1 of 0.0 that reads as a broken head."""
    torch.manual_seed(0)
    m = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                          {"command": ["1", "7"], "speaker": ["george", "jackson"]},
                          head_options={"speaker": {"kind": kind}}).eval()
    speakers = ["theo"] * 4 + ["george"] * 2 + ["jackson"] * 2
    clips = [Clip(f"{i}.wav", {"command": "1", "speaker": s}, s) for i, s in enumerate(speakers)]
    torch.manual_seed(1)
    waves = [torch.randn(8000) * 0.1 for _ in clips]
    metrics = task_metrics(m, waves, clips)["speaker"]
    figure = "micro_f1" if kind == "multi" else "accuracy"
    assert (metrics["n"], metrics["n_known"], metrics["n_unseen"]) == (8, 4, 4)
    probs = m.predict_all(waves[4:])["speaker"]
    expected = (multilabel_micro_f1(m.predict_all(waves)["speaker"], speakers,
                                    ["george", "jackson"])  # "none present" answers theo
                if kind == "multi" else float(np.mean(
                    [["george", "jackson"][p] == s for p, s in zip(probs.argmax(1), speakers[4:])])))
    assert metrics[figure] == pytest.approx(expected)
    only_theo = task_metrics(m, waves[:4], clips[:4])
    speaker = only_theo["speaker"]
    assert speaker[figure] is None and (speaker["n_known"], speaker["n_unseen"]) == (0, 4)
    assert "george, jackson" in speaker["note"]
    no_nan(only_theo)
    report = score(["1", "7"], ["1"] * 4, np.full((4, 2), 0.5)) | {"tasks": only_theo}
    assert speaker["note"] in markdown(report) and "None" not in markdown(report)


def test_a_multi_head_naming_a_known_voice_for_a_new_one_is_wrong():
    """A multi head's right answer for a clip of new voices only is "none present": naming
    george there is a false accept the micro-F1 must count, not leave out."""
    from types import SimpleNamespace

    said = np.array([[0.9, 0.1], [0.9, 0.1]])  # george present in both clips
    model = SimpleNamespace(kinds={"speaker": "multi"}, tasks={"speaker": ["george", "jackson"]},
                            predict_all=lambda waves, embeddings=False: {"speaker": said})
    clips = [Clip(f"{i}.wav", {"command": "1", "speaker": s}, s)
             for i, s in enumerate(["george", "theo"])]
    metrics = task_metrics(model, [torch.zeros(8000)] * 2, clips)["speaker"]
    assert metrics["micro_f1"] == pytest.approx(multilabel_micro_f1(said, ["george", "theo"],
                                                                    ["george", "jackson"]))
    assert metrics["micro_f1"] < 1.0 and metrics["n_unseen"] == 1
