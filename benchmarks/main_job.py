"""Wall time and peak memory of the no-flag main job (`speechxfer train`): target < 5 min on 2 cores.

Run: ``python benchmarks/main_job.py [--out runs/bench_main]``. Prints the held-out accuracy too,
so a speed-up that costs accuracy shows in the same line.
"""

from __future__ import annotations

import argparse
import resource
import time

from speechxfer.jobs import train_job
from speechxfer.log import run_script
from speechxfer.recognizer import is_model_folder
from speechxfer.store import StoreError, check_replaceable

TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_main")
    args = parser.parse_args()
    try:  # a folder the run may not replace is said now, as a line, not a traceback
        check_replaceable(args.out, is_model_folder)
    except StoreError as err:
        parser.error(f"--out {err}")
    start = time.perf_counter()
    summary = train_job(out=args.out)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    test = summary.get("test") or summary["held_out_by_speaker"]  # no test speaker: cross-fit
    held = (f"held-out {summary['test_speakers']}" if summary.get("test")
            else "speakers held out by fold (validation takes)")
    print(f"main job: {seconds:.0f} s wall ({seconds / TARGET_SECONDS:.2f} of the "
          f"{TARGET_SECONDS:.0f} s target), peak RSS {peak_gib:.2f} GiB, strategy "
          f"{summary['strategy']['strategy']}, window {summary['window']}, {held} "
          f"accuracy {test['accuracy']:.4f} on {test['n']} clips")


if __name__ == "__main__":
    run_script(main)
