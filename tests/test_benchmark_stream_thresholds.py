"""benchmarks/stream_thresholds.py: the reading of eval-stream curves, and its refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stream_thresholds.py"


def report(seed: int = 0, threshold: float = 0.65, **changes) -> dict:
    """A half-hour stream whose utterances scored 0.5 (a false accept) and 0.7 (a hit) of 2
    commands, shaped as ``evaluate_stream`` writes it."""
    det = [{"threshold": 0.0, "miss_rate": 0.5, "false_accepts_per_hour": 4.0},
           {"threshold": 0.5, "miss_rate": 0.5, "false_accepts_per_hour": 2.0},
           {"threshold": 0.7, "miss_rate": 0.5, "false_accepts_per_hour": 0.0},
           {"threshold": 0.7000000000000001, "miss_rate": 1.0, "false_accepts_per_hour": 0.0}]
    return {"hours": 0.5, "threshold": threshold, "pad_s": 0.1, "filler_margin": None,
            "filler_below": 0.9, "det": det,
            "stream": {"data": "/tmp/sc", "minutes": 30.0, "seed": seed}, **changes}


def run(tmp_path: Path, reports: list[dict | str], *options: str) -> subprocess.CompletedProcess:
    paths = []
    for i, r in enumerate(reports):
        path = tmp_path / f"r{i}.json"
        path.write_text(r if isinstance(r, str) else json.dumps(r))
        paths.append(str(path))
    return subprocess.run([sys.executable, str(SCRIPT), *paths, *options],
                          check=False, capture_output=True, text=True, timeout=60)


def test_a_threshold_between_two_scores_lets_only_the_higher_fire(tmp_path):
    # At 0.6 the 0.5 utterance no longer fires: recall 0.5 and no false accept, so 0.60 is the
    # best threshold within 0 false accepts (reading the point under 0.6 counted the 0.5 one).
    done = run(tmp_path, [report(0), report(1)], "--grid", "0.4", "0.8", "0.1",
               "--per-stream", "0", "--total", "0")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("0.60"))
    assert "0.5000 / 0 FA" in line and line.endswith("within")
    assert "best within the limits: threshold 0.60, mean recall 0.5000" in done.stdout
    # Above the top score nothing fires.
    assert "0.80           0.0000 / 0 FA" in done.stdout


@pytest.mark.parametrize("reports, says", [
    ([report(0), report(1, threshold=0.4)], "threshold differs"),
    ([report(0), report(1, pad_s=0.25)], "pad_s differs"),
    ([report(0, model="/m/a"), report(1, model="/m/b")], "model differs"),
    ([report(0), report(0)], "measure the same stream"),
    ([report(0), {"recall": 0.9, "hours": 0.5}], "r1.json: no DET curve"),
    ([report(0), report(1, det=[])], "r1.json: no DET curve"),
    ([report(0), "not json"], "r1.json: not a readable JSON report"),
    ([report(0, det=[{"threshold": 0.0, "miss_rate": None, "false_accepts_per_hour": 2.0}])],
     "r0.json: the curve has no recall"),
    # NaN read as the best mean recall, or crashing the false-accept count; a hand-made curve
    ([report(0), report(1, det=[{"threshold": 0.0, "miss_rate": float("nan"),
                                 "false_accepts_per_hour": 0.0}])], "r1.json: a curve point's"),
    ([report(0), report(1, det=[{"threshold": 0.0, "miss_rate": 0.5,
                                 "false_accepts_per_hour": float("nan")}])], "'false_accepts"),
    ([report(0), report(1, det=[{"miss_rate": 0.5, "false_accepts_per_hour": 1.0}])],
     "r1.json: a curve point's 'threshold'"),
    ([report(0), report(1, det=[[0.5, 0.5, 1.0]])], "r1.json: \"det\" is not a list"),
    ([report(0), report(1, hours="0.5")], "r1.json: \"hours\" is not a positive number"),
    ([report(0), report(1, hours=0)], "r1.json: \"hours\" is not a positive number"),
])
def test_reports_that_would_give_a_wrong_figure_are_refused(tmp_path, reports, says):
    done = run(tmp_path, reports)
    assert done.returncode != 0 and says in done.stderr
    assert "Traceback" not in done.stderr and "best within" not in done.stdout


@pytest.mark.parametrize("grid", [("0.4", "0.9", "0"), ("0.9", "0.4", "0.05"),
                                  ("0.4", "1.5", "0.1")])
def test_a_grid_off_the_threshold_range_is_refused(tmp_path, grid):
    done = run(tmp_path, [report(0)], "--grid", *grid)
    assert done.returncode == 2 and "--grid needs" in done.stderr


def test_the_grid_ends_at_or_before_its_last_threshold(tmp_path):
    done = run(tmp_path, [report(0)], "--grid", "0.4", "0.9", "0.3")
    assert done.returncode == 0, done.stderr
    rows = [x.split()[0] for x in done.stdout.splitlines()[1:] if x.strip()[:1].isdigit()]
    assert rows == ["0.40", "0.70"]  # not 1.00, past TO


def test_cross_fitted_recordings_are_one_model_each(tmp_path):
    """Scored recordings (--labels) name no stream folder: each recording is its own."""
    rooms = [report(0, model=f"/m/{r}", stream={"recording": f"/rec/{r}.wav",
                                                 "labels": f"/rec/{r}.csv"}) for r in "ab"]
    done = run(tmp_path, rooms, "--cross-fit")
    assert done.returncode == 0, done.stderr


def test_cross_fitted_folds_read_as_one_system_with_one_model_per_stream_folder(tmp_path):
    fold_a = report(0, model="/m/a", stream={"data": "/tmp/a", "minutes": 30.0, "seed": 0})
    fold_b = report(0, model="/m/b", stream={"data": "/tmp/b", "minutes": 30.0, "seed": 0})
    done = run(tmp_path, [fold_a, fold_b], "--cross-fit")
    assert done.returncode == 0, done.stderr
    assert "best within the limits" in done.stdout
    # Without --cross-fit two models are two systems.
    assert "model differs" in run(tmp_path, [fold_a, fold_b]).stderr
    # Two models on one stream folder are refused even cross-fitted, and so is another detector.
    other = report(1, model="/m/b", stream={"data": "/tmp/a", "minutes": 30.0, "seed": 1})
    done = run(tmp_path, [fold_a, other], "--cross-fit")
    assert done.returncode != 0 and "two models" in done.stderr
    done = run(tmp_path, [fold_a, {**fold_b, "pad_s": 0.25}], "--cross-fit")
    assert done.returncode != 0 and "pad_s differs" in done.stderr
