"""Train a few steps on a tiny real subset, save, load, evaluate and predict: through the CLI."""

import json

import numpy as np
import pytest
import soundfile as sf

from speechxfer import CommandClassifier, ModelError, load_model
from speechxfer.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_fsdd):
    root = tmp_path_factory.mktemp("e2e")
    data = make_fsdd(root / "data", ("jackson", "george", "theo"), ("1", "4", "7"), 6)
    (data / "4_george_9.wav").write_bytes(b"corrupt")  # a bad clip must be skipped, not fatal
    out = root / "model"
    rc = main(["train", "--data", str(data), "--strategy", "frozen", "--epochs", "15",
               "--test-speaker", "theo", "--out", str(out)])
    assert rc == 0
    return data, out


def assert_consistent(report: dict, n: int) -> None:
    """The figures of a report agree with its confusion matrix and lie in their ranges."""
    cm = np.array(report["confusion"])
    assert report["labels"] == ["1", "4", "7"] and cm.shape == (3, 3)
    assert report["n"] == n == cm.sum()
    assert 0.6 < report["accuracy"] <= 1  # chance is 1/3
    assert report["accuracy"] == pytest.approx(np.trace(cm) / n)
    per_class = report["per_class"]
    for i, label in enumerate(report["labels"]):
        m = per_class[label]
        assert m["support"] == cm[i].sum()
        assert m["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert m["precision"] == pytest.approx(cm[i, i] / max(cm[:, i].sum(), 1))
        assert all(0 <= m[k] <= 1 for k in ("precision", "recall", "f1"))
    assert report["macro_f1"] == pytest.approx(np.mean([m["f1"] for m in per_class.values()]))


def test_train_reports_and_skips(trained):
    _, out = trained
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["skipped"][0]["path"].endswith("4_george_9.wav")
    assert summary["test_speakers"] == ["theo"]
    assert summary["train_speakers"] == ["george", "jackson"]
    for name in ("model.safetensors", "config.json", "test_report.md", "test_report_confusion.png"):
        assert (out / name).is_file()
    report = json.loads((out / "test_report.json").read_text())
    assert_consistent(report, 18)  # theo: 3 digits x 6 takes
    assert {k: summary["test"][k] for k in ("n", "accuracy", "macro_f1")} == {
        k: report[k] for k in ("n", "accuracy", "macro_f1")}
    assert f"accuracy: {report['accuracy']:.4f}" in (out / "test_report.md").read_text()


def test_eval_json_and_predict(trained, capsys):
    data, out = trained
    (data / "4_george_9.wav").unlink()
    assert main(["eval", str(out), "--data", str(data), "--json"]) == 0
    assert_consistent(json.loads(capsys.readouterr().out), 54)  # the corrupt extra clip gone
    assert main(["predict", str(out), str(data / "7_theo_0.wav"), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    probs = pred["probabilities"]
    assert set(probs) == {"1", "4", "7"} and sum(probs.values()) == pytest.approx(1, abs=1e-4)
    assert pred["label"] == max(probs, key=probs.get)
    assert pred["label"] == CommandClassifier.load(out).predict(data / "7_theo_0.wav").label


def test_library_predict_file_samples_and_batch(trained):
    data, out = trained
    clf = CommandClassifier.load(out)
    samples, rate = sf.read(data / "7_jackson_0.wav")
    by_file = clf.predict(data / "7_jackson_0.wav")
    by_samples = clf.predict(samples, rate)
    assert by_file.label == by_samples.label
    assert abs(sum(by_file.probabilities.values()) - 1) < 1e-4
    stereo = np.stack([samples, samples], 1)
    batch = clf.predict_batch([data / "1_jackson_0.wav", stereo], sample_rate=rate)
    assert len(batch) == 2 and batch[1].label == by_samples.label
    assert isinstance(load_model(out), CommandClassifier)


def test_mismatched_model_folder(trained, tmp_path):
    _, out = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((out / "config.json").read_text())
    config["tasks"]["command"] = config["labels"] = ["1", "4", "7", "9"]  # weights: 3 labels
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    with pytest.raises(ModelError, match="does not match"):
        CommandClassifier.load(broken)


def test_eval_rejects_unknown_labels(trained, tmp_path, capsys):
    data, out = trained
    other = tmp_path / "other"
    other.mkdir()
    (other / "9_theo_0.wav").write_bytes((data / "7_theo_0.wav").read_bytes())
    assert main(["eval", str(out), "--data", str(other)]) == 2
    assert "['9'] are not among the model's labels" in capsys.readouterr().err


def test_predict_bad_file_names_it(trained, tmp_path, capsys):
    _, out = trained
    bad = tmp_path / "silence.wav"
    sf.write(bad, np.zeros(8000), 8000)
    assert main(["predict", str(out), str(bad), str(tmp_path / "missing.wav")]) == 1
    err = capsys.readouterr().err
    assert "silence.wav: silent" in err and "missing.wav: file not found" in err
