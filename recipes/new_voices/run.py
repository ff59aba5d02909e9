"""The default digit model on voices outside FSDD: its bundled training set (``data/digits.csv``:
FSDD's four speakers and 38 Speech Commands speakers) against FSDD alone, on speakers that
training never heard.

    python recipes/new_voices/run.py [--work runs/new_voices]

The 38 Speech Commands speakers are dealt, sorted, into two halves. Each fold is the main job
holding one half out (``speechxfer train --test-speaker ...``, one flag per speaker of the half)
and scores that half; the FSDD-only model (``speechxfer train --data data/fsdd``) scores both.
Every figure is given for the int8 fast path ``predict`` uses, the torch system and the head
alone, summed over the two halves (87 clips). Nothing is chosen here: the runs are the defaults.
Writes results/results.json and results/results.md next to this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from speechxfer import load_model
from speechxfer.audio import SAMPLE_RATE
from speechxfer.cli import main as cli
from speechxfer.data import load_dataset, load_waves
from speechxfer.jobs import bundled, default_data

HERE = Path(__file__).resolve().parent
PATHS = ("fast path", "torch", "head alone")


def train(args: list[str], folder: Path) -> Path:
    done = (folder / "config.json").is_file()  # a finished fold is kept: rerun = resume
    if not done and cli(["train", *args, "--out", str(folder)]) != 0:
        raise SystemExit(f"training {folder} failed")
    return folder


def right(folder: Path, clips: list) -> dict[str, int]:
    """Clips right under each path of the saved system in ``folder``."""
    system = load_model(folder)
    if system.fast is None:
        raise SystemExit(f"{folder}: no fast path was written (its training printed why: ONNX "
                         "missing, or the parity check refused the graph)")
    waves, kept, _ = load_waves(clips, SAMPLE_RATE)
    truth = np.array([system.labels.index(c.label) for c in kept])
    fast = system.predict_proba(waves)
    system.fast = None  # the same system on torch
    probs = (fast, system.predict_proba(waves), load_model(folder / "head").predict_proba(waves))
    return {name: int((p.argmax(1) == truth).sum()) for name, p in zip(PATHS, probs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/new_voices"))
    args = parser.parse_args()
    fsdd = set(load_dataset(bundled("fsdd")).speakers)
    clips = [c for c in load_dataset(default_data()).clips if c.speaker not in fsdd]
    speakers = sorted({c.speaker for c in clips})
    halves = [speakers[0::2], speakers[1::2]]
    fsdd_only = train(["--data", str(bundled("fsdd"))], args.work / "fsdd_only")
    rows = {name: dict.fromkeys(PATHS, 0) for name in ("default (data/digits.csv)", "FSDD alone")}
    for k, half in enumerate(halves):
        held = [c for c in clips if c.speaker in half]
        fold = train([a for s in half for a in ("--test-speaker", s)], args.work / f"half{k}")
        for name, folder in (("default (data/digits.csv)", fold), ("FSDD alone", fsdd_only)):
            for path, n in right(folder, held).items():
                rows[name][path] += n
    results = {"n_clips": len(clips), "n_speakers": len(speakers), "halves": halves,
               "accuracy": {name: {p: n / len(clips) for p, n in r.items()}
                            for name, r in rows.items()}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "results.json").write_text(json.dumps(results, indent=2))
    lines = [(f"{len(clips)} digit clips of {len(speakers)} Speech Commands speakers, each "
              "scored by a model that never heard its speaker"), "",
             "| training set | " + " | ".join(PATHS) + " |", "|---|" + "---|" * len(PATHS)]
    lines += [f"| {name} | " + " | ".join(f"{acc[p]:.3f}" for p in PATHS) + " |"
              for name, acc in results["accuracy"].items()]
    (HERE / "results" / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
