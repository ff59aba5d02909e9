"""``recognizer.load``: every kind opens through the one table, on the device asked for; an
unknown kind or a folder without a config is a ModelError; each class's own ``load`` opens only
its kind; the combined system's one-encoder-pass fast path equals scoring head and prior apart."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer import CommandClassifier, ModelError, Recognizer, load_model
from speechxfer.audio import load as load_audio
from speechxfer.classic import build_classic
from speechxfer.decoder.combined import CombinedRecognizer, combine_log_linear
from speechxfer.decoder.generative import GenerativeRecognizer
from speechxfer.decoder.scoring import ScoringOptions, ZeroShotRecognizer
from speechxfer.encoders import build_encoder
from speechxfer.recognizer import KINDS, load, read_config

LABELS = ["1", "4"]


@pytest.fixture(scope="module")
def waves(fsdd) -> list[torch.Tensor]:
    return [load_audio(fsdd / f"{d}_george_{t}.wav") for d in LABELS for t in range(2)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, waves) -> dict[str, object]:
    """One saved folder of every kind (random heads, untuned decoders, a fitted SVM)."""
    root = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    head = CommandClassifier(build_encoder("whisper-tiny.en", window="clip"), {"command": LABELS})
    head.save(root / "neural")
    zero = ZeroShotRecognizer(LABELS, window="clip")
    zero.save(root / "zero-shot")
    GenerativeRecognizer(LABELS, window="clip", model=zero.model).save(root / "generative")
    CombinedRecognizer(head, zero, 0.5).save(root / "combined")
    build_classic("svm").fit(waves, [lab for lab in LABELS for _ in range(2)]).save(root / "svm")
    return {"root": root, "zero": zero}


@pytest.mark.parametrize("kind, folder, cls", [
    ("neural", "neural", CommandClassifier), ("zero-shot", "zero-shot", ZeroShotRecognizer),
    ("generative", "generative", GenerativeRecognizer), ("combined", "combined", CombinedRecognizer),
    ("classic-svm", "svm", Recognizer),
])
def test_load_opens_every_kind_on_the_device_asked_for(folders, waves, kind, folder, cls):
    path = folders["root"] / folder
    assert read_config(path)["kind"] == kind and kind in KINDS
    system = load(path, "cpu")
    assert isinstance(system, cls) and system.labels == LABELS
    if kind == "combined":
        modules = [system.head, system.zero.model]
    else:
        modules = [system] if kind == "neural" else [getattr(system, "model", torch.nn.Linear(1, 1))]
    for module in modules:
        assert {p.device for p in module.parameters()} == {torch.device("cpu")}
    probs = system.predict_proba(waves)
    assert probs.shape == (len(waves), 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert load_model(path, device="cpu").labels == LABELS  # the public alias


@pytest.mark.parametrize("folder", ["neural", "zero-shot", "generative", "combined", "svm"])
def test_predict_batch_names_the_bad_clip_and_refuses_one_clip(folders, waves, fsdd, folder):
    """A silent array among many was '<samples>: silent', whichever it was; one clip's samples
    were each taken for a clip ('shape ()'), and a path's letters for file names."""
    from speechxfer.audio import AudioError

    system = load(folders["root"] / folder, "cpu")
    clip = waves[0].numpy()
    with pytest.raises(AudioError, match=r"<samples #1>: silent"):
        system.predict_batch([clip, np.zeros(16_000, np.float32), clip], sample_rate=16_000)
    with pytest.raises(AudioError, match="one clip, not a list of them"):
        system.predict_batch(clip, sample_rate=16_000)
    path = str(fsdd / "1_george_0.wav")
    with pytest.raises(AudioError, match=f"{path}: one clip, not a list of them"):
        system.predict_batch(path)
    with pytest.raises(AudioError, match=r"^<samples>: silent"):  # predict: one clip, no number
        system.predict(np.zeros(16_000, np.float32), sample_rate=16_000)


@pytest.mark.parametrize("folder", ["neural", "zero-shot", "generative", "combined", "svm"])
def test_every_kind_answers_the_command_task_in_predict_json(folders, waves, folder):
    """`predict --json` of a neural model had tasks.command, the default (combined) and every
    other kind an empty tasks: a client reading tasks["command"] broke on a change of model."""
    pred = load(folders["root"] / folder, "cpu").predict_batch(waves[:1], sample_rate=16_000)[0]
    answer = pred.to_dict()
    assert set(answer) == {"label", "probability", "probabilities", "tasks", "embeddings"}
    assert answer["tasks"] == {"command": answer["probabilities"]}


def test_predict_refuses_a_list_of_clips(folders, waves, fsdd):
    """predict([a, b]) of two equal-length clips averaged them as one clip's channels and
    labelled the mix, with no error; a list of paths was said to need a sample rate."""
    from speechxfer.audio import AudioError

    system = load(folders["root"] / "svm", "cpu")
    a, b = waves[0].numpy(), waves[2].numpy()
    n = min(len(a), len(b))
    for clips, rate in [([a[:n], b[:n]], 16_000), ((torch.from_numpy(a),), 16_000),
                        ([fsdd / "1_george_0.wav", str(fsdd / "4_george_0.wav")], None)]:
        with pytest.raises(AudioError, match="not one clip: predict_batch takes a list"):
            system.predict(clips, rate)
    stereo = np.stack([a, a], 1).tolist()  # [time, channels] as nested lists is still one clip
    assert system.predict(stereo, 16_000).label == system.predict(a, 16_000).label


def test_each_class_loads_only_its_own_kind(folders):
    root = folders["root"]
    with pytest.raises(ModelError, match=r"'combined' system, not a CommandClassifier.*load_model"):
        CommandClassifier.load(root / "combined")
    with pytest.raises(ModelError, match="'neural' system, not a ZeroShotRecognizer"):
        ZeroShotRecognizer.load(root / "neural")
    assert isinstance(CommandClassifier.load(root / "neural", "cpu"), CommandClassifier)


def test_a_missing_or_oversized_config_is_not_called_invalid_json(tmp_path, monkeypatch):
    with pytest.raises(ModelError) as err:
        load(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a model folder (no config.json)"
    monkeypatch.setattr("speechxfer.recognizer.MAX_CONFIG_BYTES", 1)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError) as err:
        load(tmp_path)
    assert str(err.value) == f"{tmp_path / 'config.json'}: larger than 1 bytes; not a model config"


def test_unknown_kind_and_missing_config_are_model_errors(folders, tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load(tmp_path)
    config = json.loads((folders["root"] / "neural" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "kind": "classic-knn"}))
    with pytest.raises(ModelError, match=r"unknown model kind 'classic-knn'; known: neural, "):
        load(tmp_path)


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, None])
def test_a_model_format_version_this_release_cannot_read_is_refused(folders, tmp_path, version):
    config = json.loads((folders["root"] / "svm" / "config.json").read_text())
    assert config["version"] == 1 and load(folders["root"] / "svm").labels == LABELS
    shutil.copytree(folders["root"] / "svm", tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "version": version}))
    with pytest.raises(ModelError, match="model format version .*reads versions 1 to 1"):
        load(tmp_path / "m")


def test_scoring_options_travel_in_config_json(folders, tmp_path):
    zero = ZeroShotRecognizer(LABELS, window="clip", model=folders["zero"].model,
                              options=ScoringOptions(temperature=0.5, combine="logsumexp"))
    assert zero.options.prompt == "one four"  # "auto": the first alias of every label
    zero.save(tmp_path / "z")
    config = json.loads((tmp_path / "z" / "config.json").read_text())
    assert config["temperature"] == 0.5 and config["combine"] == "logsumexp"
    assert load(tmp_path / "z").options == zero.options
    with pytest.raises(ValueError, match="combine"):
        ScoringOptions(combine="mean")
    with pytest.raises(TypeError, match="unknown scoring option"):
        ZeroShotRecognizer(LABELS, model=zero.model, temprature=0.5)


def test_combined_fast_path_equals_scoring_head_and_prior_apart(waves):
    """A frozen head on the prior's own encoder: one encoder pass must give what a pass for
    the head and another for the decoder give."""
    torch.manual_seed(1)
    head = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"), {"command": LABELS})
    zero = ZeroShotRecognizer(LABELS[::-1], window="2s")  # another column order: mapped back
    combined = CombinedRecognizer(head, zero, 0.7)
    head.info = {"strategy": {"strategy": "frozen"}}
    assert combined.shares_encoder()
    fast = combined.predict_proba(waves)
    head.info = {}
    assert not combined.shares_encoder()
    slow = combined.predict_proba(waves)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert not np.allclose(fast, head.predict_proba(waves), atol=1e-3)  # the prior counted


def test_a_head_claiming_frozen_over_a_tuned_encoder_gets_its_own_pass(waves):
    """config.json says frozen, the weights say tuned: the decoder must not read the tuned
    encoder's states (one pass would silently score other states than the prior's own)."""
    head = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"), {"command": LABELS})
    zero = ZeroShotRecognizer(LABELS, window="2s")
    with torch.no_grad():
        head.encoder.blocks[-1].mlp[0].weight.add_(0.05)  # what top-k would have changed
    head.info = {"strategy": {"strategy": "frozen"}}
    combined = CombinedRecognizer(head, zero, 1.0)
    assert not combined.shares_encoder()
    apart = combine_log_linear(head.predict_proba(waves), combined.zero_probs(waves), 1.0)
    np.testing.assert_allclose(combined.predict_proba(waves), apart, atol=1e-5)
    head.info = {"strategy": "frozen"}  # config.json's, not of the shape training writes
    assert not CombinedRecognizer(head, zero, 1.0).shares_encoder()


def test_top_ranks_every_label_best_first_whatever_the_open_set_decided():
    """predict gave one label: a "did you mean" needed the runners-up sorted by hand."""
    from speechxfer.recognizer import Prediction

    pred = Prediction("_unknown_", 0.45, {"yes": 0.3, "no": 0.45, "stop": 0.3, "_unknown_": 0.05})
    assert pred.top(1) == [("no", 0.45)]  # the model's best guess, not the rejection
    assert pred.top(3) == [("no", 0.45), ("yes", 0.3), ("stop", 0.3)]  # a tie: the model's order
    assert pred.top() == pred.top(99) == pred.top(np.int64(4))
    assert [p for _, p in pred.top()] == sorted(pred.probabilities.values(), reverse=True)
    for k in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):
            pred.top(k)


def test_a_datasets_audio_row_is_one_clip(make_svm, fsdd, tmp_path):
    """{"array", "sampling_rate"} (a Hugging Face datasets row, pipeline's {"raw", ...}) was
    refused as '<samples>: raw samples need their sample_rate'."""
    from speechxfer.audio import AudioError

    system = load(make_svm(tmp_path / "svm", ("1", "4", "7"), range(10, 14)), "cpu")
    clip, rate = sf.read(fsdd / "4_theo_1.wav", dtype="float32")
    want = system.predict(clip, rate).probabilities
    row = {"path": "4_theo_1.wav", "array": clip, "sampling_rate": rate}
    assert system.predict(row).probabilities == want
    assert system.predict({"raw": torch.from_numpy(clip), "sampling_rate": rate},
                          sample_rate=rate).probabilities == want
    batch = system.predict_batch([row, {"raw": clip, "sampling_rate": rate}])
    assert [p.probabilities for p in batch] == [want, want]
    with pytest.raises(AudioError, match="disagrees with the mapping's sampling_rate 8000"):
        system.predict(row, sample_rate=16_000)
    with pytest.raises(AudioError, match=r"needs 'array' \(or 'raw'\) and 'sampling_rate'"):
        system.predict({"array": clip})
    with pytest.raises(AudioError, match="one clip, not a list of them"):
        system.predict_batch(row)
    with pytest.raises(AudioError, match="not one clip: predict_batch takes a list"):
        system.predict([row, row])
