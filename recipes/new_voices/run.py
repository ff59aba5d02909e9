"""The default digit model on voices outside FSDD: its bundled training set (``data/digits.csv``:
FSDD's four speakers and 38 Speech Commands speakers) against FSDD alone, on speakers that
training never heard.

    python recipes/new_voices/run.py [--work runs/new_voices] [--seeds 0 1 2] [--channel-rate 8000]

The 38 Speech Commands speakers are dealt, sorted, into two halves. Each fold is the main job
holding one half out (``speechxfer train --test-speaker ...``, one flag per speaker of the half)
and scores that half; the FSDD-only model (``speechxfer train --data data/fsdd``) scores both.
Every figure is given for the int8 fast path ``predict`` uses, the torch system and the head
alone, summed over the two halves (87 clips), per training seed and their mean (a seed draws
the head's initialisation and batches; the validation takes are fixed). Nothing is chosen here:
the runs are the defaults. ``--channel-rate 8000`` scores the same folds on the clips heard
through an 8-kHz channel (resampled down and back up), the band FSDD's recordings have.
Writes results/results.json and results/results.md next to this file (seed 0), or
results_seeds-0-1-2.{json,md} for other seeds and results_channel-8000.{json,md} for a channel,
so a variant never replaces the default figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from speechxfer import load_model
from speechxfer.audio import SAMPLE_RATE, resample
from speechxfer.cli import SEED, bounded
from speechxfer.cli import main as cli
from speechxfer.data import load_dataset, load_waves
from speechxfer.jobs import bundled, default_data, finished_run
from speechxfer.log import run_script

HERE = Path(__file__).resolve().parent
PATHS = ("fast path", "torch", "head alone")


def train(args: list[str], folder: Path, data: Path, held: list[str], seed: int) -> Path:
    """``speechxfer train ARGS --seed SEED --out FOLDER``, unless a run on ``data`` holding out
    ``held`` with that seed and otherwise the defaults finished there (``jobs.finished_run``: a
    rerun resumes; another fold's or seed's folder is an error)."""
    try:
        finished = finished_run(folder, {"data": data, "test_speakers": held, "seed": seed})
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if finished is None and cli(["train", *args, "--seed", str(seed), "--out", str(folder)]) != 0:
        raise SystemExit(f"training {folder} failed")
    return folder


def right(folder: Path, clips: list, channel_rate: int | None = None) -> dict[str, int]:
    """Clips right under each path of the saved system in ``folder``, each clip heard through
    a ``channel_rate`` channel first when one is given."""
    system = load_model(folder)
    if system.fast is None:
        raise SystemExit(f"{folder}: no fast path was written (its training printed why: ONNX "
                         "missing, or the parity check refused the graph)")
    waves, kept, _ = load_waves(clips, SAMPLE_RATE)
    if channel_rate:
        waves = [resample(resample(w, SAMPLE_RATE, channel_rate), channel_rate, SAMPLE_RATE)
                 for w in waves]
    truth = np.array([system.labels.index(c.label) for c in kept])
    fast = system.predict_proba(waves)
    system.fast = None  # the same system on torch
    probs = (fast, system.predict_proba(waves), load_model(folder / "head").predict_proba(waves))
    return {name: int((p.argmax(1) == truth).sum()) for name, p in zip(PATHS, probs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/new_voices"),
                        help="the trained folds; a finished one is kept (a rerun resumes)")
    parser.add_argument("--seeds", type=SEED, nargs="+", default=[0],
                        metavar="S",
                        help="training seeds (default: 0)")
    parser.add_argument("--channel-rate", type=bounded(int, 1000, SAMPLE_RATE - 1), metavar="HZ",
                        help="hear every scored clip through a channel of this sample rate "
                             "(resampled down and back up; 8000: FSDD's band)")
    args = parser.parse_args()
    if len(set(args.seeds)) < len(args.seeds):  # a seed twice would count its folds twice
        parser.error(f"--seeds: each seed once, got {args.seeds}")
    # results named by the options unless the default's: a variant never replaces its figures
    parts = ([] if args.seeds == [0] else [f"seeds-{'-'.join(map(str, args.seeds))}"]) + (
        [f"channel-{args.channel_rate}"] if args.channel_rate else [])
    stem = "_".join(["results", *parts])
    fsdd_set = load_dataset(bundled("fsdd"))
    fsdd, fsdd_data = set(fsdd_set.speakers), Path(fsdd_set.location)
    clips = [c for c in load_dataset(default_data()).clips if c.speaker not in fsdd]
    speakers = sorted({c.speaker for c in clips})
    halves = [speakers[0::2], speakers[1::2]]
    names = ("default (data/digits.csv)", "FSDD alone")
    accuracy = {name: {p: {} for p in PATHS} for name in names}
    for seed in args.seeds:
        suffix = f"_seed{seed}" if seed else ""  # seed 0 keeps the folder names of earlier runs
        fsdd_only = train(["--data", str(bundled("fsdd"))], args.work / f"fsdd_only{suffix}",
                          fsdd_data, [], seed)
        rows = {name: dict.fromkeys(PATHS, 0) for name in names}
        for k, half in enumerate(halves):
            held = [c for c in clips if c.speaker in half]
            fold = train([a for s in half for a in ("--test-speaker", s)],
                         args.work / f"half{k}{suffix}", default_data(), half, seed)
            for name, folder in zip(names, (fold, fsdd_only)):
                for path, n in right(folder, held, args.channel_rate).items():
                    rows[name][path] += n
        for name in names:
            for path in PATHS:
                accuracy[name][path][str(seed)] = rows[name][path] / len(clips)
    results = {"n_clips": len(clips), "n_speakers": len(speakers), "halves": halves,
               "seeds": args.seeds, "channel_rate": args.channel_rate,
               "accuracy": {name: {p: {"mean": float(np.mean(list(by_seed.values()))), **by_seed}
                                   for p, by_seed in acc.items()}
                            for name, acc in accuracy.items()}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{stem}.json").write_text(json.dumps(results, indent=2))
    lines = [(f"{len(clips)} digit clips of {len(speakers)} Speech Commands speakers, each "
              "scored by a model that never heard its speaker"), "",
             "| training set | " + " | ".join(PATHS) + " |", "|---|" + "---|" * len(PATHS)]
    def cell(by_seed: dict) -> str:
        seeds = [f"{by_seed[str(s)]:.3f}" for s in args.seeds]
        return f"{by_seed['mean']:.3f}" + (f" ({', '.join(seeds)})" if len(seeds) > 1 else "")

    lines[0] += f"; seeds {', '.join(map(str, args.seeds))}" + (
        f"; heard through a {args.channel_rate}-Hz channel" if args.channel_rate else "")
    lines += [f"| {name} | " + " | ".join(cell(acc[p]) for p in PATHS) + " |"
              for name, acc in results["accuracy"].items()]
    (HERE / "results" / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_script(main)
