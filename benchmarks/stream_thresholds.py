"""One stream threshold for several streams: recall and false accepts read off their DET curves.

``speechxfer eval-stream --json`` reports each stream's curve (``det``). A threshold for a
system must hold on every calibration stream at once, which no single report says: this reads
the reports of the same system on several streams (other seeds, other rooms) and prints, for
each threshold of a grid, every stream's recall and false-accept count at it, then the
threshold with the highest mean recall within the limits (by default at most 1 false accept on
any stream and 1 over all of them). How the stream ensemble's candidates were compared on the
calibration speakers' streams (README "Measured (issue 10)").

Run: ``python benchmarks/stream_thresholds.py REPORT.json REPORT.json ... [--grid 0.40 0.90
0.05] [--per-stream 1] [--total 1]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def at_threshold(report: dict, threshold: float) -> tuple[float, int]:
    """Recall and false-accept count of a stream when events need ``threshold``: the curve's
    last point at or under it (the curve steps where an event drops out)."""
    points = [p for p in report["det"] if p["threshold"] <= threshold + 1e-12]
    point = max(points, key=lambda p: p["threshold"])
    return 1 - point["miss_rate"], round(point["false_accepts_per_hour"] * report["hours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="eval-stream --json outputs")
    parser.add_argument("--grid", nargs=3, type=float, default=(0.40, 0.90, 0.05),
                        metavar=("FROM", "TO", "STEP"))
    parser.add_argument("--per-stream", type=int, default=1, help="false accepts on any stream")
    parser.add_argument("--total", type=int, default=1, help="false accepts over all streams")
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    low, high, step = args.grid
    grid = [round(low + i * step, 6) for i in range(round((high - low) / step) + 1)]
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
    main()
