"""Accuracy of the default model's fast path against its torch system, leave one speaker out.

Each fold trains the default strategy on the FSDD digits alone with ``speechxfer train --data
data/fsdd --test-speaker S`` (which writes the int8 ONNX fast path) and scores the held-out
speaker with both paths, and also the Speech Commands digit clips shipped in
``data/speech_commands`` (38 speakers in no FSDD fold; the default training set,
``data/digits.csv``, holds them, so it is not used here).

Run: ``python benchmarks/fast_path_folds.py [--speakers george jackson theo yweweler]
[--out runs/folds]`` (about 3 minutes a fold on 2 cores).
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
from speechxfer.log import run_script

FSDD = bundled("fsdd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", nargs="+", default=["george", "jackson", "theo", "yweweler"])
    parser.add_argument("--out", type=Path, default=Path("runs/folds"))
    args = parser.parse_args()
    fsdd = load_dataset(FSDD)
    # the Speech Commands digits as the default training set lists them, labelled "0".."9"
    sets = {"speech_commands_digits": [c for c in load_dataset(default_data()).clips
                                       if c.speaker not in fsdd.speakers]}
    for speaker in args.speakers:
        folder = args.out / speaker
        if cli(["train", "--data", str(FSDD), "--test-speaker", speaker, "--out", str(folder)]) != 0:
            raise SystemExit(f"training the {speaker} fold failed")
        fast = load_model(folder)
        torch_system = load_model(folder)
        torch_system.fast = None
        if fast.fast is None:
            raise SystemExit(f"{folder}: no fast path was written (are onnx and onnxruntime installed?)")
        row = {"speaker": speaker}
        for name, clips in {"held_out": [c for c in fsdd.clips if c.speaker == speaker],
                            **sets}.items():
            waves, kept, _ = load_waves(clips, SAMPLE_RATE)
            truth = np.array([fast.labels.index(c.label) for c in kept])
            reference = torch_system.predict_proba(waves).argmax(1)
            quick = fast.predict_proba(waves).argmax(1)
            row[name] = {"n": len(kept), "torch": float((reference == truth).mean()),
                         "fast": float((quick == truth).mean()),
                         "agreement": float((quick == reference).mean())}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    run_script(main)
