"""The Speech Commands recipe's protocol, shortcuts and reporting (the run itself is slow)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer.data import load_waves
from speechxfer.encoders import build_encoder
from speechxfer.model import CommandClassifier
from speechxfer.train import FeatureCache, forward_cached
from speechxfer.vocab import SILENCE, UNKNOWN, apply_commands, load_with_silence

RUN = Path(__file__).resolve().parents[1] / "recipes" / "speech_commands" / "run.py"
spec = importlib.util.spec_from_file_location("speech_commands_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run  # dataclasses look their module up
spec.loader.exec_module(run)


def test_folds_test_every_speaker_once_and_never_calibrate_on_test_or_train():
    speakers = [f"s{i:02d}" for i in range(80)]
    groups = run.speaker_groups(speakers, 2 * run.N_FOLDS, seed=0)
    assert sorted(s for g in groups for s in g) == speakers
    assert {len(g) for g in groups} == {8}
    tested = []
    for fold in range(run.N_FOLDS):
        roles = run.fold_roles(fold, len(groups))
        assert roles["test"].isdisjoint(roles["val"]) and roles["test"].isdisjoint(roles["train"])
        assert roles["val"].isdisjoint(roles["train"])
        assert roles["test"] | roles["val"] | roles["train"] == set(range(len(groups)))
        tested += [s for g in roles["test"] for s in groups[g]]
    assert sorted(tested) == speakers
    assert run.speaker_groups(speakers, 10, seed=1) != groups  # the seed moves speakers


def test_pooled_cache_gives_the_frozen_head_the_same_probabilities():
    ds = apply_commands(load_with_silence(run.DATA), list(run.COMMANDS))
    picked = [next(c for c in ds.clips if c.label == lab) for lab in ("yes", UNKNOWN, SILENCE)]
    waves, _, _ = load_waves(picked, 16_000)
    waves[0] = waves[0][:12_000]  # a shorter clip: fewer frames than the others
    model = CommandClassifier(build_encoder(run.ENCODER, window=run.WINDOW),
                              {"command": ["yes", UNKNOWN, SILENCE]})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.normal_()
    cache = FeatureCache(model, waves, model.encoder.num_layers, run.CPU)
    pooled = run.pooled(cache)
    assert all(x.shape[1] == 1 for x in pooled.items) and cache.items[0].shape[1] > 1
    full = run.cached_probs(model, cache)
    np.testing.assert_allclose(run.cached_probs(model, pooled), full, atol=2e-3)
    model.eval()
    with torch.no_grad():
        direct = torch.softmax(forward_cached(model, cache, [0, 1, 2], run.CPU)["command"], -1)
    np.testing.assert_allclose(full, direct.numpy(), atol=1e-5)


def test_unknown_false_accept_at_recall_reads_the_right_threshold():
    labels = ["yes", "no", UNKNOWN]
    truth = ["yes"] * 10 + ["no"] * 10 + [UNKNOWN] * 4
    probs = np.zeros((24, 3))
    probs[:20, 2] = 0.0
    p_cmd = np.linspace(0.5, 0.99, 20)
    probs[:10, 0], probs[10:20, 1] = p_cmd[:10], p_cmd[10:]
    probs[:20, 2] = 1 - p_cmd
    probs[20:, 0] = [0.49, 0.52, 0.60, 0.95]  # unknown words' best command
    probs[20:, 2] = 1 - probs[20:, 0]
    # recall 0.95 of 20 commands keeps 19: threshold = the 19th highest, p_cmd[1] ~ 0.526
    assert run.unknown_fa_at_recall(labels, truth, probs) == pytest.approx(2 / 4)
    assert run.unknown_fa_at_recall(labels, truth, probs, recall=0.5) == pytest.approx(1 / 4)
    probs[:10, 0], probs[:10, 1] = 0.1, 0.9  # half the commands wrong: 0.95 unreachable
    assert run.unknown_fa_at_recall(labels, truth, probs) is None


def test_summary_and_table_report_mean_and_spread_per_point(tmp_path):
    runs = [{"system": "frozen", "augment": False, "point": "10", "fold": f, "n_train": 300,
             "accuracy": acc, "accuracy_argmax": acc, "macro_f1": acc, "command_recall": 0.9,
             "unknown_false_accept": 0.1, "silence_false_accept": 0.0,
             "unknown_fa_at_r95": None, "threshold": 0.5, "train_s": 1.0}
            for f, acc in ((0, 0.9), (1, 0.8))]
    runs[0]["unknown_fa_at_r95"] = 0.1  # the other fold never reaches recall 0.95
    runs.append({**runs[0], "system": "zero-shot", "point": "none"})
    rows = run.summarise(runs)
    assert [r["system"] for r in rows] == ["zero-shot", "frozen"]
    frozen = rows[1]
    assert frozen["folds"] == 2 and frozen["accuracy"] == pytest.approx(0.85)
    assert frozen["accuracy_std"] == pytest.approx(0.05)
    assert frozen["unknown_fa_at_r95"] is None and rows[0]["unknown_fa_at_r95"] == 0.1
    meta = {"run": "test", "command": "x", "wall_minutes": 0.1, "folds_run": [0, 1],
            "max_false_accept": 0.03, "skipped_blocks": ["top-k fold 4"]}
    text = run.markdown(rows, meta)
    assert "| frozen | 0.850 ± 0.050 |" in text
    assert "| zero-shot | 0.900 ± 0.000 |" in text  # no training: shown at every point
    assert "Not run (budget): top-k fold 4" in text
    run.write_outputs(runs, meta, "_test", tmp_path)
    saved = json.loads((tmp_path / "results_test.json").read_text())
    assert len(saved["runs"]) == 3 and (tmp_path / "speech_commands_test.png").stat().st_size


@pytest.mark.slow
def test_quick_run_writes_every_system(tmp_path):
    run.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results_quick.json").read_text())
    systems = {r["system"] for r in saved["runs"]}
    assert systems == set(run.SYSTEMS)
    frozen = [r for r in saved["runs"] if r["system"] == "frozen" and r["point"] == "10"]
    assert frozen and frozen[0]["accuracy"] > 0.5  # far above 12-class chance on new speakers
    assert (tmp_path / "results_quick.md").exists() and (tmp_path / "speech_commands_quick.png").exists()


class Stop(Exception):
    """Stands for a Ctrl-C (KeyboardInterrupt would stop pytest itself)."""


def fake_main(tmp_path, monkeypatch, argv: list[str], stop_at: int | None = None) -> None:
    """``main --quick`` with stub blocks over an earlier finished run's results in tmp_path;
    the ``stop_at``-th block raises Stop."""
    (tmp_path / "results_quick.json").write_text("earlier")
    done = []

    class Runner:
        groups, cost = [], {}

        def __init__(self, *args):
            pass

        def run_block(self, kind, aug, fold):
            done.append(kind)
            if len(done) == stop_at:
                raise Stop
            return [{"system": kind, "point": "3", "fold": fold, "accuracy": 0.5,
                     "command_recall": 0.5, "unknown_false_accept": 0.0,
                     "silence_false_accept": 0.0}]

    def write_outputs(runs, meta, suffix, out):
        for path in run.output_files(suffix, out):
            path.write_text(f"{len(runs)} runs")

    monkeypatch.setattr(run, "Runner", Runner)
    monkeypatch.setattr(run, "write_outputs", write_outputs)
    monkeypatch.setattr(run, "markdown", lambda rows, meta: "")
    monkeypatch.setattr(run, "summarise", lambda runs: [])
    run.main(["--quick", "--out", str(tmp_path), *argv])


def test_a_cut_run_leaves_the_finished_results_and_keeps_its_own_beside(tmp_path, monkeypatch):
    with pytest.raises(Stop):
        fake_main(tmp_path, monkeypatch, [], stop_at=2)
    assert (tmp_path / "results_quick.json").read_text() == "earlier"  # was replaced
    assert (tmp_path / "results_quick_partial.json").read_text() == "1 runs"
    fake_main(tmp_path, monkeypatch, [])  # the rerun finishes: its results, no partial left
    assert (tmp_path / "results_quick.json").read_text() != "earlier"
    assert not list(tmp_path.glob("*partial*"))


def test_a_budget_that_runs_nothing_writes_nothing(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="no block ran within --max-minutes 0"):
        fake_main(tmp_path, monkeypatch, ["--max-minutes", "0"])  # was the default budget
    assert [p.name for p in tmp_path.iterdir()] == ["results_quick.json"]
    for bad in (["--max-minutes", "-1"], ["--max-false-accept", "nan"]):  # -1: empty results
        with pytest.raises(SystemExit) as stop:
            run.main(["--out", str(tmp_path), *bad])
        assert stop.value.code == 2 and "is out of range" in capsys.readouterr().err


def test_an_out_folder_not_made_yet_gets_the_results_and_a_file_there_is_refused_at_once(
        tmp_path, monkeypatch, capsys):
    """--out in a folder not made yet was a FileNotFoundError at the first block's write; a file
    there, one after the first block's work."""
    write_outputs = run.write_outputs
    fake_main(tmp_path, monkeypatch, [])  # stubs the blocks
    monkeypatch.setattr(run, "write_outputs", write_outputs)
    out = tmp_path / "new" / "results"
    run.main(["--quick", "--out", str(out)])
    assert json.loads((out / "results_quick.json").read_text())["runs"]
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    monkeypatch.setattr(run, "Runner", lambda *args: pytest.fail("work began"))
    with pytest.raises(SystemExit) as stop:
        run.main(["--quick", "--out", str(taken)])
    assert stop.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err
