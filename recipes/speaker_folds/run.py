"""Speaker-independent accuracy: train on three bundled speakers, test on the fourth, all folds.

    python recipes/speaker_folds/run.py                       # default strategy, all clips
    python recipes/speaker_folds/run.py --per-class 3         # few-shot: 3 clips/digit/speaker
    python recipes/speaker_folds/run.py --strategy frozen --name frozen

Writes results/<name>.json and results/<name>.md next to this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechxfer.data import load_dataset
from speechxfer.jobs import default_data, mean_std, train_job

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--strategy", default="top-k")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--per-class", type=int)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--encoder", default="whisper-tiny.en")
    parser.add_argument("--window", help="clip | Ns (e.g. 2s, 30s); default: the encoder's")
    parser.add_argument("--pooling", default="mean", choices=("mean", "attentive"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="results file name (default: derived from the options)")
    parser.add_argument("--work", type=Path, default=Path("runs/speaker_folds"))
    args = parser.parse_args()

    name = args.name or f"{args.strategy}_pc{args.per_class or 'all'}_{args.window or 'default'}"
    data = default_data()
    folds = []
    for speaker in load_dataset(data).speakers:
        summary = train_job(
            data=data, encoder=args.encoder, window=args.window, strategy=args.strategy, k=args.k,
            per_class_n=args.per_class, epochs=args.epochs, seed=args.seed,
            out=args.work / name / speaker, test_speakers=[speaker], pooling=args.pooling,
        )
        folds.append({"test_speaker": speaker, **summary["test"],
                      "train_seconds": summary["train_seconds"], "n_train": summary["n_train"]})
        print(f"{speaker}: accuracy {summary['test']['accuracy']:.4f}")
    mean, std = mean_std([f["accuracy"] for f in folds])
    result = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "mean_accuracy": mean, "std_accuracy": std, "folds": folds}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {f['test_speaker']} | {f['n_train']} | {f['accuracy']:.4f} | "
                     f"{f['macro_f1']:.4f} | {f['train_seconds']:.0f} |" for f in folds)
    (out / f"{name}.md").write_text(
        f"# Leave-one-speaker-out: {name}\n\n| test speaker | train clips | accuracy | macro-F1 | "
        f"train s |\n|---|---|---|---|---|\n{rows}\n\n**mean accuracy {mean:.4f} ± {std:.4f}**\n")
    print(f"mean accuracy over {len(folds)} held-out speakers: {mean:.4f} ± {std:.4f}")


if __name__ == "__main__":
    main()
