"""The pipeline-vs-end-to-end recipe's planning and reporting (no training)."""

import importlib.util
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "recipes" / "pipeline_vs_e2e" / "run.py"
spec = importlib.util.spec_from_file_location("pipeline_vs_e2e_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run  # dataclasses look their module up
spec.loader.exec_module(run)

SPEAKERS = ["george", "jackson", "theo", "yweweler"]


def test_plan_puts_seed_zero_first_and_caps_whole_whisper_training():
    todo = run.blocks(run.FULL, SPEAKERS)
    jobs = [job for block in todo for job in block]
    seeds = [seed for *_, seed in jobs]
    assert seeds == sorted(seeds)  # every seed-0 job comes before any rerun
    capped = [job for job in jobs if run.BY_NAME[job[0]].capped]
    assert {speaker for _, speaker, _, _ in capped} == set(SPEAKERS[: run.FULL.capped_folds])
    assert {n for _, _, n, _ in capped} == set(run.FULL.capped_points)
    assert {name for name, *_ in jobs} == {s.name for s in run.SYSTEMS}
    assert len({block[0][0] for block in run.blocks(run.QUICK, SPEAKERS)}) == len(run.QUICK.systems)


def test_small_sets_still_get_the_minimum_steps():
    system = run.BY_NAME["ds-cnn"]
    for n_train in (30, 60, 150, 1350):
        epochs = run.epochs_for(system, n_train)
        assert epochs >= system.min_epochs
        assert epochs * -(-n_train // run.BATCH_SIZE) >= system.min_steps


def test_summary_table_reports_mean_and_spread():
    runs = [{"system": "svm", "family": "pipeline", "test_speaker": s, "per_class": 1,
             "n_train": 30, "seed": 0, "accuracy": acc, "train_s": 1.0, "ms_per_clip": 2.0,
             "params": 10} for s, acc in (("george", 0.5), ("theo", 0.7))]
    (row,) = run.summarise(runs)
    assert row["runs"] == 2 and abs(row["accuracy_mean"] - 0.6) < 1e-9
    assert abs(row["accuracy_std"] - 0.1) < 1e-9
    meta = {"run": "test", "test_takes": "0-4", "wall_minutes": 0.1, "skipped_blocks": []}
    assert "| svm | 0.600 ± 0.100 |" in run.markdown([row], meta)


class Stop(Exception):
    """Stands for a Ctrl-C (KeyboardInterrupt would stop pytest itself)."""


def fake_run(tmp_path, monkeypatch, argv: list[str], stop_at: int | None = None) -> Path:
    """``main`` with every block a stub: the results folder under tmp_path, holding an earlier
    finished run's results; the runner raises Stop at the ``stop_at``-th job."""
    import pytest

    results = tmp_path / "results"
    results.mkdir()
    (results / "results_quick.json").write_text("earlier")
    jobs = []

    class Runner:
        def __init__(self, *args):
            pass

        def run(self, *args):
            jobs.append(args)
            if len(jobs) == stop_at:
                raise Stop
            return {"accuracy": 0.5, "train_s": 1.0, "ms_per_clip": 2.0, "params": 10}

    def write_outputs(runs, meta, suffix):
        for path in run.output_files(suffix):
            path.write_text(f"{len(runs)} runs")

    monkeypatch.setattr(run, "HERE", tmp_path)
    monkeypatch.setattr(run, "Runner", Runner)
    monkeypatch.setattr(run, "read_clips", lambda clips, rate, how: ([None] * len(clips), clips, []))
    monkeypatch.setattr(run, "write_outputs", write_outputs)
    monkeypatch.setattr(run, "markdown", lambda rows, meta: "")
    monkeypatch.setattr(sys, "argv", ["run.py", "--quick", *argv])
    if stop_at is None:
        run.main()
    else:
        with pytest.raises(Stop):
            run.main()
    return results


def test_a_cut_run_leaves_the_finished_results_and_keeps_its_own_beside(tmp_path, monkeypatch):
    results = fake_run(tmp_path, monkeypatch, [], stop_at=3)  # in the second block
    assert (results / "results_quick.json").read_text() == "earlier"  # was replaced
    assert (results / "results_quick_partial.json").read_text() == "2 runs"


def test_a_finished_run_replaces_the_results_and_leaves_no_partial(tmp_path, monkeypatch):
    results = fake_run(tmp_path, monkeypatch, [])
    assert (results / "results_quick.json").read_text() != "earlier"
    assert not list(results.glob("*partial*"))


def test_a_budget_that_runs_nothing_writes_nothing(tmp_path, monkeypatch, capsys):
    import pytest

    with pytest.raises(SystemExit, match="no block ran within --max-minutes 0"):
        fake_run(tmp_path, monkeypatch, ["--max-minutes", "0"])  # was the default budget
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["results_quick.json"]
    for bad in ("-1", "nan"):  # -1 emptied results_quick.csv, then a traceback
        monkeypatch.setattr(sys, "argv", ["run.py", "--max-minutes", bad])
        with pytest.raises(SystemExit) as stop:
            run.main()
        assert stop.value.code == 2 and "is out of range" in capsys.readouterr().err
