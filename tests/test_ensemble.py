"""The ensemble system: the geometric mean of saved systems' probabilities, saved and reopened
whole, built by ``speechxfer ensemble``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speechxfer import load_model
from speechxfer.audio import load
from speechxfer.cli import main
from speechxfer.ensemble import EnsembleRecognizer
from speechxfer.recognizer import ModelError, Recognizer

DIGITS = ("1", "4", "7")


class Fixed(Recognizer):
    """A stand-in system answering every clip with one row of probabilities."""

    sample_rate = 16_000

    def __init__(self, labels: list[str], row: list[float], threshold: float | None = None):
        self.labels, self.row, self.threshold = labels, np.array(row), threshold

    def predict_proba(self, waves):
        return np.tile(self.row, (len(waves), 1))


def test_a_command_one_member_finds_unlikely_is_rejected():
    labels = ["_unknown_", "up", "down"]
    sure = Fixed(labels, [0.05, 0.9, 0.05], threshold=0.5)
    doubtful = Fixed(["down", "up", "_unknown_"], [0.05, 0.05, 0.9], threshold=0.5)
    both = EnsembleRecognizer([sure, doubtful])
    clip = np.full(16_000, 0.1, np.float32)
    p = both.predict_proba([clip])[0]
    expected = np.sqrt(np.array([0.05 * 0.9, 0.9 * 0.05, 0.05 * 0.05]))
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-6)
    assert sure.predict(clip, 16_000).label == "up"
    assert both.predict(clip, 16_000).label == "_unknown_"


def test_the_threshold_is_the_strictest_members_unless_given():
    labels = ["_unknown_", "up"]
    members = [Fixed(labels, [0.5, 0.5], 0.5), Fixed(labels, [0.5, 0.5], 0.6)]
    assert EnsembleRecognizer(members).threshold == 0.6
    assert EnsembleRecognizer(members, threshold=0.8).threshold == 0.8


def test_members_must_share_labels_and_rate():
    with pytest.raises(ValueError, match="at least two"):
        EnsembleRecognizer([Fixed(["a", "b"], [0.5, 0.5])])
    with pytest.raises(ValueError, match="labels"):
        EnsembleRecognizer([Fixed(["a", "b"], [0.5, 0.5]), Fixed(["a", "c"], [0.5, 0.5])])
    other = Fixed(["a", "b"], [0.5, 0.5])
    other.sample_rate = 8_000
    with pytest.raises(ValueError, match="Hz"):
        EnsembleRecognizer([Fixed(["a", "b"], [0.5, 0.5]), other])


def test_cli_builds_an_ensemble_that_reopens_alone(make_svm, fsdd, tmp_path, capsys):
    a = make_svm(tmp_path / "a", DIGITS, range(10, 20), speaker="jackson")
    b = make_svm(tmp_path / "b", DIGITS, range(10, 20), speaker="george")
    assert main(["ensemble", str(a), str(b), "--out", str(tmp_path / "ab"),
                 "--threshold", "0.4"]) == 0
    assert "threshold 0.400" in capsys.readouterr().out
    for folder in (a, b):  # copied whole: the ensemble no longer needs them
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    model = load_model(tmp_path / "ab")
    assert model.model_kind == "ensemble" and model.threshold == 0.4
    clips = [load(fsdd / f"{d}_{s}_{t}.wav") for d in DIGITS for s in ("jackson", "george")
             for t in (0, 1, 2)]
    truth = [d for d in DIGITS for _ in range(6)]
    p = model.predict_proba(clips)
    members = [load_model(tmp_path / "ab" / f"member{i}") for i in (0, 1)]
    logs = [np.log(np.clip(m.predict_proba(clips)[:, [m.labels.index(x) for x in model.labels]],
                           1e-12, None)) for m in members]
    expected = np.exp(np.mean(logs, 0))
    np.testing.assert_allclose(p, expected / expected.sum(1, keepdims=True), rtol=1e-6)
    accuracy = np.mean([model.labels[i] == t for i, t in zip(p.argmax(1), truth)])
    assert accuracy > 0.6  # chance is 1/3


def test_a_member_folder_outside_the_model_is_refused(make_svm, tmp_path):
    a = make_svm(tmp_path / "a", DIGITS, range(3))
    b = make_svm(tmp_path / "b", DIGITS, range(3, 6))
    EnsembleRecognizer.of_folders([a, b]).save(tmp_path / "ab")
    config = json.loads((tmp_path / "ab" / "config.json").read_text())
    config["members"] = ["member0", "../a"]
    (tmp_path / "ab" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not a folder inside|sub-folder"):
        load_model(tmp_path / "ab")


def test_building_from_mismatched_folders_names_them(make_svm, tmp_path):
    a = make_svm(tmp_path / "a", ("1", "4"), range(3))
    b = make_svm(tmp_path / "b", ("1", "7"), range(3))
    with pytest.raises(ModelError, match="labels") as err:
        EnsembleRecognizer.of_folders([a, b])
    assert str(a) in str(err.value)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_a_threshold_outside_0_1_is_refused_before_a_save_load_would_refuse(bad):
    labels = ["_unknown_", "up"]
    with pytest.raises(ValueError, match="threshold"):
        EnsembleRecognizer([Fixed(labels, [0.5, 0.5]), Fixed(labels, [0.5, 0.5])], threshold=bad)


def test_an_ensemble_is_not_saved_into_a_member(make_svm, tmp_path, capsys):
    a = make_svm(tmp_path / "a", DIGITS, range(3))
    b = make_svm(tmp_path / "b", DIGITS, range(3, 6), speaker="george")
    before = sorted(p.name for p in a.iterdir())
    for out in (a / "inner", a):  # inside: a copy into itself; the member itself: replaced
        assert main(["ensemble", str(a), str(b), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "speechxfer ensemble: error:" in err and "member 0's folder" in err
    assert sorted(p.name for p in a.iterdir()) == before
    assert load_model(a).model_kind == "classic-svm"


def test_the_same_folder_twice_is_refused(make_svm, tmp_path, capsys):
    a = make_svm(tmp_path / "a", DIGITS, range(3))
    assert main(["ensemble", str(a), str(tmp_path / "." / "a"), "--out", str(tmp_path / "aa")]) == 2
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "aa").exists()


def test_a_link_loop_above_out_is_an_error_not_a_traceback(make_svm, tmp_path, capsys):
    """Path.resolve raised RuntimeError ("Symlink loop") out of save: a traceback."""
    a = make_svm(tmp_path / "a", DIGITS, range(3))
    b = make_svm(tmp_path / "b", DIGITS, range(3, 6), speaker="george")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    out = tmp_path / "loop_a" / "ens"
    assert main(["ensemble", str(a), str(b), "--out", str(out)]) == 2
    assert f"speechxfer ensemble: error: {out}: cannot create its parent folder" in (
        capsys.readouterr().err)


def test_a_copy_of_a_member_or_a_member_inside_a_nested_ensemble_is_refused(make_svm, tmp_path,
                                                                             capsys):
    import shutil

    a = make_svm(tmp_path / "a", DIGITS, range(3))
    b = make_svm(tmp_path / "b", DIGITS, range(3, 6), speaker="george")
    shutil.copytree(a, tmp_path / "copy")
    assert main(["ensemble", str(a), str(tmp_path / "copy"), "--out", str(tmp_path / "x")]) == 2
    assert "the same system as" in capsys.readouterr().err and not (tmp_path / "x").exists()
    EnsembleRecognizer.of_folders([a, b]).save(tmp_path / "ab")
    with pytest.raises(ModelError, match="the same system as") as err:  # a counted twice
        EnsembleRecognizer.of_folders([tmp_path / "ab", a])
    assert "members 0 and 1" in str(err.value)
    c = make_svm(tmp_path / "c", DIGITS, range(6, 9), speaker="theo")
    nested = EnsembleRecognizer.of_folders([tmp_path / "ab", c])  # three different systems
    assert nested.sources == [tmp_path / "ab", c]


def test_an_ensemble_config_naming_a_member_twice_is_refused(make_svm, tmp_path):
    a = make_svm(tmp_path / "a", DIGITS, range(3))
    b = make_svm(tmp_path / "b", DIGITS, range(3, 6), speaker="george")
    EnsembleRecognizer.of_folders([a, b]).save(tmp_path / "ab")
    config = json.loads((tmp_path / "ab" / "config.json").read_text())
    config["members"] = ["member0", "member0"]
    (tmp_path / "ab" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config.json: 'members' names \['member0'\] twice"):
        load_model(tmp_path / "ab")


def test_a_member_folder_changed_before_the_save_is_refused(make_svm, tmp_path):
    """save copies the members' folders: one retrained after the ensemble was built was saved
    in place of the system the ensemble answered with, silently."""
    from speechxfer.store import StoreError

    a = make_svm(tmp_path / "a", DIGITS, range(3))
    b = make_svm(tmp_path / "b", DIGITS, range(3, 6), speaker="george")
    ensemble = EnsembleRecognizer.of_folders([a, b])
    ensemble.save(tmp_path / "ab")
    reopened = load_model(tmp_path / "ab")
    reopened.save(tmp_path / "ab")  # over its own folder: its members are now the copies
    reopened.save(tmp_path / "ab2")
    make_svm(a, DIGITS, range(6, 9), speaker="theo")  # retrained in place
    with pytest.raises(StoreError, match="member 0's folder changed after the ensemble was built"):
        ensemble.save(tmp_path / "ab3")
    assert not (tmp_path / "ab3").exists()


def test_a_system_beside_its_own_onnx_export_is_refused(tmp_path):
    """An export answers as the system it was made from: the two in one ensemble counted that
    system twice in the product (and two exports of it likewise)."""
    pytest.importorskip("onnxruntime")
    import shutil

    import torch

    from speechxfer import CommandClassifier
    from speechxfer.encoders import build_encoder
    from speechxfer.export import export_folder

    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"),
                              {"command": list(DIGITS)})
    model.info = {"strategy": {"strategy": "frozen"}, "metrics": {"accuracy": 0.5}}
    model.save(tmp_path / "model")
    export_folder(tmp_path / "model", tmp_path / "onnx")
    with pytest.raises(ModelError, match="an export of") as err:
        EnsembleRecognizer.of_folders([tmp_path / "model", tmp_path / "onnx"])
    assert f"{tmp_path / 'onnx'}: an export of {tmp_path / 'model'} (members 0 and 1)" in str(
        err.value)
    with pytest.raises(ModelError, match=f"{tmp_path / 'model'}: the system exported to"):
        EnsembleRecognizer.of_folders([tmp_path / "onnx", tmp_path / "model"])
    shutil.copytree(tmp_path / "onnx", tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    config["source"]["copied"] = True  # another export of the same model: a digest of its own
    (tmp_path / "again" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="exported from the same system as"):
        EnsembleRecognizer.of_folders([tmp_path / "onnx", tmp_path / "again"])
    # an export made before exports recorded their system still loads and joins
    del config["source"]["digest"]
    (tmp_path / "again" / "config.json").write_text(json.dumps(config))
    both = EnsembleRecognizer.of_folders([tmp_path / "model", tmp_path / "again"])
    assert len(both.members) == 2


def test_eval_of_an_ensemble_says_when_the_data_holds_its_members_training_voices(
        make_svm, make_fsdd, tmp_path, caplog):
    """An ensemble folder keeps no train_summary.json of its own: its members' voices count."""
    from speechxfer.jobs import eval_job

    for name, speaker in (("a", "jackson"), ("b", "george")):
        make_svm(tmp_path / name, DIGITS, range(10, 14), speaker=speaker)
        (tmp_path / name / "train_summary.json").write_text(
            json.dumps({"train_speakers": [speaker]}))
    assert main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "ab")]) == 0
    data = make_fsdd(tmp_path / "data", ("jackson", "theo"), DIGITS, 1)
    eval_job(tmp_path / "ab", data)
    assert "3 of 6 clips are by 1 speaker(s) the model trained on (jackson)" in caplog.text
