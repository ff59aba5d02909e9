"""Model folders are user files: a broken or hostile one ends in a ModelError naming the folder
and the problem (never a traceback, a huge allocation or a silent wrong answer), and a model
that cannot be a classifier (one label, duplicate labels) is refused when it is built."""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from speechxfer import CommandClassifier, ModelError, Recognizer, load_model
from speechxfer.audio import load
from speechxfer.classic import CLASSIC_KINDS, build_classic, load_classic
from speechxfer.cli import main
from speechxfer.encoders import build_encoder
from speechxfer.recognizer import FORMAT

LABELS = ["no", "yes"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A saved two-label ds-cnn classifier (random weights): the folder every case mutates."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": LABELS})
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def classic(tmp_path_factory, fsdd) -> dict[str, Path]:
    """Each classic kind fitted on three digits of one speaker and saved."""
    keys = [(d, t) for d in "123" for t in range(3)]
    waves = [load(fsdd / f"{d}_theo_{t}.wav") for d, t in keys]
    labels = [d for d, _ in keys]
    root = tmp_path_factory.mktemp("classic")
    for kind in CLASSIC_KINDS:
        build_classic(kind, **({"max_templates": 2} if kind == "dtw" else {})).fit(
            waves, labels).save(root / kind)
    return {kind: root / kind for kind in CLASSIC_KINDS}


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def edit_config(folder: Path, change) -> Path:
    """Apply ``change`` (which mutates it) to the folder's config dict."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return folder


def refused(folder: Path, *words: str) -> str:
    """load_model's ModelError message; it names the folder and each of ``words``."""
    with pytest.raises(ModelError) as err:
        load_model(folder)
    message = str(err.value)
    assert folder.name in message
    for word in words:
        assert word in message, message
    return message


# ---- item 8: models that cannot classify -----------------------------------------------------
def test_a_single_label_is_refused_when_built_and_when_loaded(tiny, tmp_path):
    encoder = build_encoder("ds-cnn", pretrained=False)
    with pytest.raises(ValueError, match="at least 2 labels"):
        CommandClassifier(encoder, {"command": ["yes"]})
    folder = edit_config(copy_of(tiny, tmp_path),
                         lambda c: c.update(labels=["yes"], tasks={"command": ["yes"]}))
    refused(folder, "at least 2 labels")


@pytest.mark.parametrize("strategy", ["scratch", "zero-shot"])
def test_training_on_a_single_label_fails_with_a_clear_error(strategy, make_fsdd, tmp_path, capsys):
    data = make_fsdd(tmp_path / "one", ("jackson", "george", "theo"), ("4",), 2)
    code = main(["train", "--data", str(data), "--encoder",
                 "ds-cnn" if strategy == "scratch" else "whisper-tiny.en",
                 "--strategy", strategy, *(["--epochs", "1"] if strategy == "scratch" else []),
                 "--out", str(tmp_path / "out")])
    assert code != 0
    assert "at least 2 labels" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_duplicate_labels_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["a", "b", "a"]})
    folder = edit_config(copy_of(tiny, tmp_path),
                         lambda c: c.update(labels=["no", "no"], tasks={"command": ["no", "no"]}))
    refused(folder, "duplicate")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tiny, tmp_path, bad):
    folder = copy_of(tiny, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and "classifier" in k)
    state[name].view(-1)[0] = bad
    save_file(state, str(folder / "model.safetensors"))
    refused(folder, "model.safetensors", "non-finite", name)


def test_labels_disagreeing_with_the_tasks_are_refused(tiny, tmp_path):
    folder = edit_config(copy_of(tiny, tmp_path), lambda c: c.update(labels=["yes", "no"]))
    refused(folder, "labels")


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
@pytest.mark.parametrize("change", ["extra label", "missing label"])
def test_classic_labels_that_disagree_with_the_weights_are_refused(classic, kind, change, tmp_path):
    folder = copy_of(classic[kind], tmp_path)
    labels = ["1", "2", "3", "4"] if change == "extra label" else ["1", "2"]
    edit_config(folder, lambda c: c.update(labels=labels))
    refused(folder, "weights")


def test_classic_labels_out_of_their_fitted_order_are_refused(classic, tmp_path):
    folder = edit_config(copy_of(classic["svm"], tmp_path), lambda c: c.update(labels=["2", "1", "3"]))
    refused(folder, "labels", "order")


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
def test_classic_non_finite_weights_are_refused(classic, kind, tmp_path):
    folder = copy_of(classic[kind], tmp_path)
    arrays = load_numpy(str(folder / "model.safetensors"))
    name = next(k for k, v in arrays.items() if v.dtype.kind == "f" and v.size)
    arrays[name].flat[0] = np.nan
    save_numpy(arrays, str(folder / "model.safetensors"))
    refused(folder, "model.safetensors", "non-finite")


def test_a_two_label_svm_predicts_two_probabilities(fsdd):
    waves = [load(fsdd / f"{d}_theo_{t}.wav") for d in "12" for t in range(3)]
    model = build_classic("svm").fit(waves, [d for d in "12" for _ in range(3)])
    probs = model.predict_proba(waves)
    assert probs.shape == (6, 2)
    assert model.predict_labels(waves) == [d for d in "12" for _ in range(3)]


# ---- hostile or broken configs ------------------------------------------------------------
@pytest.mark.parametrize("text", ["[]", '"a string"', "3", "null", '{"format": "speechxfer-model"',
                                  "[" * 100_000, "1" * 5_000, "\xff\xfe"])
def test_config_that_is_not_an_object_is_refused(tiny, tmp_path, text):
    folder = copy_of(tiny, tmp_path)
    (folder / "config.json").write_text(text, encoding="latin-1")
    refused(folder, "config.json")


@pytest.mark.parametrize("field", ["encoder", "tasks", "head", "heads"])
@pytest.mark.parametrize("value", [[], "x", 3, None, {"x": 1}])
def test_neural_config_fields_of_the_wrong_shape_are_refused(tiny, tmp_path, field, value):
    folder = edit_config(copy_of(tiny, tmp_path), lambda c: c.update({field: value}))
    refused(folder, field)


def _combined(tmp_path: Path, tiny: Path, **changes) -> Path:
    """A combined folder: the tiny head in head/, a zero-shot config in zero_shot/."""
    folder = tmp_path / "combined"
    shutil.copytree(tiny, folder / "head")
    (folder / "zero_shot").mkdir()
    zero = {"format": FORMAT, "version": 1, "kind": "zero-shot",
            "encoder": {"name": "whisper-tiny.en", "window": "clip"}, "sample_rate": 16000,
            "labels": LABELS, "aliases": {lab: [lab] for lab in LABELS}, "prompt": "no yes",
            "temperature": 1.0, "ending": "eot", "combine": "max", "capitalise": True,
            "reject_by": None, "reject_below": None}
    (folder / "zero_shot" / "config.json").write_text(json.dumps(zero))
    config = {"format": FORMAT, "version": 1, "kind": "combined", "labels": LABELS,
              "sample_rate": 16000, "weight": 1.0, "head": "head", "zero_shot": "zero_shot"}
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_combined_without_head_is_refused(tiny, tmp_path):
    refused(_combined(tmp_path, tiny, head=None), "head")


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0, "1", True])
def test_combined_weight_must_be_a_finite_non_negative_number(tiny, tmp_path, weight):
    refused(_combined(tmp_path, tiny, weight=weight), "weight")


@pytest.mark.parametrize("entry", ["zero_shot", "head"])
@pytest.mark.parametrize("name", [".", "..", "../..", "/abs/path", "head/../zero_shot", "", 3,
                                  "outside"])
def test_combined_entries_must_name_sub_folders_inside(tiny, tmp_path, entry, name):
    folder = _combined(tmp_path, tiny)
    if name == "outside":  # a symlink inside the folder that resolves outside it
        shutil.copytree(folder / entry, tmp_path / "elsewhere")
        (folder / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        name = "link"
    if name == "/abs/path":
        name = str((folder / entry).resolve())  # even an absolute path to the right folder
    edit_config(folder, lambda c: c.update({entry: name}))
    refused(folder, entry)


def test_combined_head_folder_must_hold_a_neural_classifier(tiny, tmp_path):
    folder = _combined(tmp_path, tiny)
    edit_config(folder, lambda c: c.update(head="zero_shot"))
    refused(folder, "head")


@pytest.mark.parametrize("field", ["prompt", "labels", "aliases", "encoder", "temperature"])
def test_zero_shot_config_missing_a_field_is_refused(tiny, tmp_path, field):
    folder = _combined(tmp_path, tiny) / "zero_shot"
    edit_config(folder, lambda c: c.pop(field))
    refused(folder, field)


@pytest.mark.parametrize("field,value", [("temperature", float("nan")), ("temperature", 0),
                                         ("temperature", 10**400), ("reject_below", 10**400),
                                         ("ending", []), ("combine", {}), ("capitalise", "yes"),
                                         ("reject_by", 3), ("reject_below", "x"),
                                         ("labels", ["a"] * 3), ("aliases", {"no": "no"}),
                                         ("encoder", {"name": "whisper-tiny.en", "window": 2})])
def test_zero_shot_config_with_a_bad_field_is_refused(tiny, tmp_path, field, value):
    folder = _combined(tmp_path, tiny) / "zero_shot"
    edit_config(folder, lambda c: c.update({field: value}))
    refused(folder, field)


def test_zero_shot_layout_is_bounded(tiny, tmp_path):
    """Thousands of labels would make a decoder layout (and its attention) of absurd size."""
    many = [f"word{i}" for i in range(1500)]
    folder = _combined(tmp_path, tiny) / "zero_shot"
    edit_config(folder, lambda c: c.update(labels=many, aliases={}, prompt=None))
    refused(folder, "decoder tokens")


def test_generative_non_finite_decoder_weights_are_refused(tmp_path):
    from speechxfer.decoder.generative import WEIGHTS as GENERATIVE_WEIGHTS
    from speechxfer.decoder.generative import GenerativeRecognizer

    GenerativeRecognizer(LABELS, window="clip").save(tmp_path / "gen")
    path = tmp_path / "gen" / GENERATIVE_WEIGHTS
    state = load_file(str(path))
    next(iter(state.values())).view(-1)[0] = float("nan")
    save_file(state, str(path))
    refused(tmp_path / "gen", GENERATIVE_WEIGHTS, "non-finite")


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
@pytest.mark.parametrize("change", ["missing", "unknown", "absurd", "wrong type", "not a dict"])
def test_classic_options_are_checked(classic, kind, change, tmp_path):
    folder = copy_of(classic[kind], tmp_path)

    def mutate(config):
        options = config["options"]
        name = next(k for k, v in options.items() if type(v) is int and k != "seed")
        if change == "missing":
            options.pop(name)
        elif change == "unknown":
            options["bogus"] = 1
        elif change == "absurd":
            options[name] = 10**12
        elif change == "wrong type":
            options[name] = "5"
        else:
            config["options"] = [1, 2]

    edit_config(folder, mutate)
    refused(folder, "options")


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
def test_truncated_classic_weights_are_refused(classic, kind, tmp_path):
    folder = copy_of(classic[kind], tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(folder, "model.safetensors")


def test_torn_classic_config_and_missing_folder(classic, tmp_path):
    folder = copy_of(classic["svm"], tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelError, match="config.json"):
        load_classic(folder)
    with pytest.raises(ModelError, match="no config.json"):
        load_classic(tmp_path / "nothing here")


@pytest.mark.parametrize("kind", ["classic-bogus", "bogus", 3, None, "neural-ish"])
def test_unknown_kind_is_refused(tiny, tmp_path, kind):
    folder = edit_config(copy_of(tiny, tmp_path), lambda c: c.update(kind=kind))
    refused(folder, "kind")


# ---- resource bounds ----------------------------------------------------------------------
def _second_task(config: dict, **head) -> None:
    config["tasks"]["speaker"] = ["a", "b"]
    config["heads"]["speaker"] = {**config["heads"]["command"], "kind": "embedding", **head}


@pytest.mark.parametrize("value", [2_000_000, 1e12, 10**400, -1, 0, "16", True, None, 16.5])
def test_absurd_embedding_dim_is_refused_before_allocating(tiny, tmp_path, value):
    folder = edit_config(copy_of(tiny, tmp_path), lambda c: _second_task(c, embedding_dim=value))
    refused(folder, "embedding_dim")


@pytest.mark.parametrize("option,value", [("hidden_size", 10**9), ("num_classes", 10**9),
                                          ("dropout", 2.0), ("dropout", "x"), ("layer", 10**6),
                                          ("layer", 1.5), ("pooling", ["mean"]), ("kind", {}),
                                          ("scale", float("inf")), ("margin", float("nan"))])
def test_head_options_are_bounded_and_typed(tiny, tmp_path, option, value):
    folder = edit_config(copy_of(tiny, tmp_path),
                         lambda c: c["heads"]["command"].update({option: value}))
    refused(folder, option)


def test_too_many_labels_are_refused(tiny, tmp_path):
    many = [str(i) for i in range(200_000)]
    folder = edit_config(copy_of(tiny, tmp_path),
                         lambda c: c.update(labels=many, tasks={"command": many}))
    refused(folder, "labels")


def test_mismatched_weights_still_named(tiny, tmp_path):
    """A config that is valid but describes other weights (3 labels, 2-class weights)."""
    three = ["a", "b", "c"]
    folder = edit_config(copy_of(tiny, tmp_path),
                         lambda c: c.update(labels=three, tasks={"command": three}))
    refused(folder, "does not match")


# ---- property-based: whatever config.json holds, a recognizer or a ModelError ----------------
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from([-1, 0, 1, 2, 2**31, 10**12, 10**400, 1e12, 16, "mean", "single", "embedding",
                              "clip", "30s", ".", "..", "/", "ds-cnn", "whisper-tiny.en"]))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16,
)
KINDS = ["neural", "zero-shot", "generative", "combined", *(f"classic-{k}" for k in CLASSIC_KINDS)]


def outcome(folder: Path) -> Recognizer | None:
    """load_model's result, or None for a ModelError; anything else fails the test."""
    try:
        system = load_model(folder)
    except ModelError as err:
        assert str(folder) in str(err) or folder.name in str(err)
        return None
    assert isinstance(system, Recognizer)
    return system


def _paths(value, prefix: tuple = ()):
    yield prefix
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _mutate(config, path: tuple, value, delete: bool):
    if not path:
        return value
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | st.builds(lambda kind, rest: {**rest, "format": FORMAT, "kind": kind},
                                     st.sampled_from(KINDS),
                                     st.dictionaries(st.text(max_size=12), json_values, max_size=6)))
def test_any_json_as_config_gives_a_recognizer_or_a_model_error(tiny, value):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        shutil.copyfile(tiny / "model.safetensors", folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(value))
        outcome(folder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_config_gives_a_recognizer_or_a_model_error(tiny, data):
    config = json.loads((tiny / "config.json").read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = list(_paths(config))
        path = data.draw(st.sampled_from(paths), label="path")
        delete = bool(path) and data.draw(st.booleans(), label="delete")
        config = _mutate(copy.deepcopy(config), path, data.draw(json_values, label="value"), delete)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        shutil.copyfile(tiny / "model.safetensors", folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config))
        system = outcome(folder)
    if isinstance(system, CommandClassifier):  # it loaded: the config said what the weights are
        assert len(set(system.labels)) == len(system.labels) >= 2
        probs = system.predict_proba([torch.randn(4000) * 0.1])
        assert probs.shape == (1, len(system.labels)) and math.isclose(probs.sum(), 1, rel_tol=1e-4)
