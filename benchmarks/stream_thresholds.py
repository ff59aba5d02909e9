"""One stream threshold for several streams: recall and false accepts read off their DET curves.

``speechxfer eval-stream --json`` reports each stream's curve (``det``). A threshold for a
system must hold on every calibration stream at once, which no single report says: this reads
the reports of the same system on several streams (other seeds, other rooms) and prints, for
each threshold of a grid, every stream's recall and false-accept count at it, then the
threshold with the highest mean recall within the limits (by default at most 1 false accept on
any stream and 1 over all of them). How the stream ensemble's candidates were compared on the
calibration speakers' streams (README "Measured (issue 10)"). The reports must be of one
system (the same threshold, pad and filler check) on different streams: others are refused.

Run: ``python benchmarks/stream_thresholds.py REPORT.json REPORT.json ... [--grid 0.40 0.90
0.05] [--per-stream 1] [--total 1]``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from speechxfer.log import run_script

# The model (eval-stream names it; older reports do not) and the detector options that change
# which utterances a threshold lets through: the reports of one system agree on them.
SYSTEM_KEYS = ("model", "threshold", "pad_s", "filler_margin", "filler_below")


def at_threshold(report: dict, threshold: float) -> tuple[float, int]:
    """Recall and false-accept count of a stream when events need ``threshold``: an utterance
    fires when its score is at or above it, so the curve's first point at or above it (each
    point is a score; one above the top score, with nothing firing, ends the curve)."""
    points = [p for p in report["det"] if p["threshold"] >= threshold - 1e-12]
    point = (min(points, key=lambda p: p["threshold"]) if points
             else max(report["det"], key=lambda p: p["threshold"]))
    return 1 - point["miss_rate"], round(point["false_accepts_per_hour"] * report["hours"])


def load_report(path: Path) -> dict:
    """An ``eval-stream --json`` report with a curve this can read, or an error naming the file."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a readable JSON report ({err})") from None
    if not isinstance(report, dict) or not report.get("det") or "hours" not in report:
        raise SystemExit(f"{path}: no DET curve (\"det\") and \"hours\"; give the output of "
                         "speechxfer eval-stream --json")
    det = report["det"]
    if not isinstance(det, list) or not all(isinstance(p, dict) for p in det):
        raise SystemExit(f"{path}: \"det\" is not a list of curve points: {det!r:.80}")
    if any(p.get("miss_rate") is None or p.get("false_accepts_per_hour") is None for p in det):
        raise SystemExit(f"{path}: the curve has no recall or false-accept rate (no command of "
                         "the model in the stream, or an empty stream)")
    # NaN would read as a recall of nan chosen as best, or as counts that are no numbers
    if not number(report["hours"], 0, math.inf) or report["hours"] == 0:
        raise SystemExit(f"{path}: \"hours\" is not a positive number: {report['hours']!r:.40}")
    for key, low, high in (("threshold", 0, math.inf), ("miss_rate", 0, 1),
                           ("false_accepts_per_hour", 0, math.inf)):
        bad = next((p for p in det if not number(p.get(key), low, high)), None)
        if bad is not None:
            raise SystemExit(f"{path}: a curve point's {key!r} is not a number in [{low}, "
                             f"{high}]: {bad!r:.80}")
    return report


def number(value: object, low: float, high: float) -> bool:
    """A finite real in [low, high]; not a bool or a string."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and low <= value <= high)


def check_one_system(paths: list[Path], reports: list[dict], cross_fit: bool = False) -> None:
    """One system on different streams, or an error: another system's curve, or a stream counted
    twice, would move the mean and the limits without a sign. Cross-fitted, the model may differ
    between stream folders but not within one (two models on one folder are two systems)."""
    if cross_fit:
        models: dict[str, tuple[Path, object]] = {}
        for path, report in zip(paths, reports):
            stream = report.get("stream") or {}  # a built stream's folder, or a recording
            folder = json.dumps(stream.get("data", stream.get("recording")))
            first = models.setdefault(folder, (path, report.get("model")))
            if first[1] != report.get("model"):
                raise SystemExit(f"{first[0]} and {path} score the stream folder {folder} with "
                                 f"two models ({first[1]}, {report.get('model')}): one model "
                                 "per fold")
    for key in SYSTEM_KEYS[1:] if cross_fit else SYSTEM_KEYS:
        values = [(p, r.get(key)) for p, r in zip(paths, reports)]
        if len({v for _, v in values}) > 1:
            raise SystemExit(f"the reports are not of one system: {key} differs ("
                             + ", ".join(f"{p} {v}" for p, v in values) + ")")
    seen: dict[str, Path] = {}
    for path, report in zip(paths, reports):
        stream = json.dumps(report.get("stream"), sort_keys=True)
        if report.get("stream") is not None and stream in seen:
            raise SystemExit(f"{seen[stream]} and {path} measure the same stream ({stream})")
        seen[stream] = path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="eval-stream --json outputs")
    parser.add_argument("--grid", nargs=3, type=float, default=(0.40, 0.90, 0.05),
                        metavar=("FROM", "TO", "STEP"))
    parser.add_argument("--per-stream", type=int, default=1, help="false accepts on any stream")
    parser.add_argument("--total", type=int, default=1, help="false accepts over all streams")
    parser.add_argument("--cross-fit", action="store_true",
                        help="the reports are of one model per stream folder (cross-fitted folds)")
    args = parser.parse_args()
    low, high, step = args.grid
    if not (step > 0 and 0 <= low <= high <= 1):
        parser.error(f"--grid needs 0 <= FROM <= TO <= 1 and STEP > 0, got {low} {high} {step}")
    reports = [load_report(p) for p in args.reports]
    check_one_system(args.reports, reports, args.cross_fit)
    # whole steps within [FROM, TO]: rounding the count could add a threshold past TO
    grid = [round(low + i * step, 6) for i in range(math.floor((high - low) / step + 1e-9) + 1)]
    best = None
    print("threshold  " + "  ".join(f"{p.name:>22}" for p in args.reports) + "  mean recall  FAs")
    for t in grid:
        row = [at_threshold(r, t) for r in reports]
        mean = sum(recall for recall, _ in row) / len(row)
        fas = [fa for _, fa in row]
        ok = max(fas) <= args.per_stream and sum(fas) <= args.total
        cells = "  ".join(f"{f'{recall:.4f} / {fa} FA':>22}" for recall, fa in row)
        print(f"{t:9.2f}  {cells}  {mean:11.4f}  {sum(fas):3d}{'  within' if ok else ''}")
        if ok and (best is None or mean > best[1]):
            best = (t, mean)
    if best is None:
        print(f"no threshold of the grid keeps <= {args.per_stream} per stream and "
              f"<= {args.total} in all")
    else:
        print(f"best within the limits: threshold {best[0]:.2f}, mean recall {best[1]:.4f}")


if __name__ == "__main__":
    run_script(main)
