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
