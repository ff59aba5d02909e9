"""Report figures (speechxfer.evaluate)."""

import json

import numpy as np
import pytest

from speechxfer.evaluate import plot_confusion, score, score_predictions, write_report


def test_macro_f1_leaves_out_a_label_the_data_lacks_and_nobody_chose():
    """Every clip right on data holding two of a model's three labels: macro-F1 1, not 2/3."""
    report = score(["0", "1", "2"], ["0", "0", "1"], np.eye(3)[[0, 0, 1]])
    assert report["accuracy"] == 1.0
    assert report["macro_f1"] == pytest.approx(1.0)
    assert report["per_class"]["2"]["support"] == 0  # still listed, with the confusion row
    # a label predicted but absent from the truth is an error, and counts
    wrong = score_predictions(["0", "1", "2"], ["0", "1"], ["0", "2"])
    assert wrong["macro_f1"] == pytest.approx((1 + 0 + 0) / 3)


def test_markdown_report_has_the_open_set_figures_json_and_terminal_give(tmp_path):
    """The .md of an open-set run shows command recall, false accepts and the threshold, as
    eval's terminal line does; a rate with no clips to measure (None) is left out."""
    from speechxfer.openset import open_set_metrics

    labels = ["_silence_", "_unknown_", "no", "yes"]
    truth = ["yes", "yes", "no", "_unknown_", "_unknown_"]
    probs = np.array([[0, 0, 0.1, 0.9], [0, 0.6, 0, 0.4], [0, 0, 0.8, 0.2],
                      [0, 0.1, 0, 0.9], [0, 0.9, 0.1, 0]])
    report = open_set_metrics(labels, truth, probs, threshold=0.5)
    write_report(report, tmp_path, "eval_report")
    text = (tmp_path / "eval_report.md").read_text()
    assert "command recall 0.6667" in text and "unknown false accept 0.5000" in text
    assert "rejection threshold 0.5000" in text
    assert "silence false accept" not in text and "None" not in text


def test_markdown_report_names_the_json_its_skipped_clips_are_listed_in(tmp_path):
    report = score(["0", "1"], ["0", "1"], np.eye(2))
    report["skipped"] = [{"path": "a.wav", "problem": "not readable as audio"}]
    write_report(report, tmp_path, "eval_report")
    text = (tmp_path / "eval_report.md").read_text()
    assert "skipped clips: 1 (listed in eval_report.json)" in text
    assert "skipped" in json.loads((tmp_path / "eval_report.json").read_text())


def test_confusion_png_title_fits_inside_the_image(tmp_path, monkeypatch):
    """A long title (the held-out speakers, a data path) is wrapped, not cut at the edges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    report = score(["no", "yes"], ["no", "yes"], np.eye(2))
    plot_confusion(report, tmp_path / "c.png",
                   "Held-out speakers ['692a88e6', '964e8cfd', 'fb7eb481']")
    fig = figures[0]
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_train_test_report_files_hold_the_other_tasks_the_terminal_prints(small_fsdd, tmp_path,
                                                                          capsys):
    """test_report.json/.md held only the command figures while the terminal (and the summary)
    gave every task's: the report files now say the same."""
    from speechxfer.cli import main

    out = tmp_path / "m"
    assert main(["train", "--data", str(small_fsdd), "--encoder", "ds-cnn", "--strategy",
                 "scratch", "--epochs", "1", "--task", "speaker", "--test-speaker", "theo",
                 "--out", str(out)]) == 0
    assert "speaker (single, 12 labelled clips)" in capsys.readouterr().out
    report = json.loads((out / "test_report.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    assert report["tasks"] == summary["test"]["tasks"] and "speaker" in report["tasks"]
    text = (out / "test_report.md").read_text()
    assert "- speaker (single): " in text and "n_unseen 12" in text
