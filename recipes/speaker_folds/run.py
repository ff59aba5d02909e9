"""Speaker-independent accuracy: train on three bundled speakers, test on the fourth, all folds.

    python recipes/speaker_folds/run.py                          # default strategy, all clips
    python recipes/speaker_folds/run.py --per-class 3            # few-shot: 3 clips/digit/speaker
    python recipes/speaker_folds/run.py --strategy frozen --window clip
    python recipes/speaker_folds/run.py --data data/digits.csv --name combined_pcall_digits  # + 38 voices

Each fold is the main job on the FSDD digits (`speechxfer train --data data/fsdd --test-speaker
S`): the same split, validation drawn from the training speakers, the same training loop. For strategies that keep
the lower encoder frozen (frozen, top-k) the frozen part runs once over all clips and every fold
reuses it, so the four folds cost little more than one. Every test clip of the held-out speaker
(500 per fold) is scored.

Writes results/<name>.json and results/<name>.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from speechxfer.cli import SEED, bounded
from speechxfer.data import DatasetError, load_dataset, load_waves, per_class, split_dataset
from speechxfer.encoders import build_encoder
from speechxfer.evaluate import score
from speechxfer.jobs import (
    DEFAULT_STRATEGY,
    JOBS,
    bundled,
    check_options,
    finished_run,
    mean_std,
    train_job,
)
from speechxfer.log import run_script
from speechxfer.model import PRIMARY_TASK, CommandClassifier
from speechxfer.train import (
    FeatureCache,
    TrainConfig,
    default_epochs,
    fit,
    forward_cached,
    frozen_blocks,
)

HERE = Path(__file__).resolve().parent
CACHED = ("frozen", "top-k")


def cached_folds(args: argparse.Namespace) -> list[dict]:
    """All folds on one shared feature cache (frozen / top-k strategies)."""
    ds = load_dataset(bundled("fsdd"))
    waves, clips, _ = load_waves(ds.clips, 16_000)
    where = {c.path: i for i, c in enumerate(clips)}
    config = TrainConfig(strategy=args.strategy, k=args.k, epochs=args.epochs, seed=args.seed)
    base = CommandClassifier(build_encoder(args.encoder, window=args.window), {"command": ds.labels})
    started = time.perf_counter()
    cache = FeatureCache(base, waves, frozen_blocks(base, config), torch.device("cpu"))
    cache_seconds = time.perf_counter() - started
    pretrained = {k: v.clone() for k, v in base.encoder.state_dict().items()}
    folds = []
    for speaker in ds.speakers:
        split = split_dataset(ds, [speaker], seed=args.seed)
        train, val = split.train, split.validation
        if args.per_class:
            train, val = per_class(train + val, args.per_class, args.seed), []
        tr, va, te = ([where[c.path] for c in part] for part in (train, val, split.test))
        started = time.perf_counter()
        torch.manual_seed(args.seed)
        encoder = build_encoder(args.encoder, window=args.window, pretrained=False)
        encoder.load_state_dict(pretrained)
        model = CommandClassifier(encoder, {"command": ds.labels}, pooling=args.pooling)
        fit(model, [waves[i] for i in tr], [clips[i].labels for i in tr],
            [waves[i] for i in va], [clips[i].labels for i in va], config,
            train_cache=cache.subset(tr))
        train_seconds = time.perf_counter() - started + cache_seconds * len(tr) / len(waves)
        test_cache = cache.subset(te)
        with torch.no_grad():
            probs = torch.cat([
                torch.softmax(forward_cached(model, test_cache, list(range(s, min(s + 32, len(te)))),
                                             torch.device("cpu"))[PRIMARY_TASK], -1)
                for s in range(0, len(te), 32)
            ]).numpy()
        report = score(model.labels, [clips[i].label for i in te], probs)
        folds.append({"test_speaker": speaker, "n": report["n"], "accuracy": report["accuracy"],
                      "macro_f1": report["macro_f1"], "train_seconds": train_seconds,
                      "n_train": len(tr)})
        print(f"{speaker}: accuracy {report['accuracy']:.4f}", flush=True)
    return folds


def finished_fold(folder: Path, args: argparse.Namespace, data: Path, speaker: str) -> dict | None:
    """The train summary of a fold a run with these options finished in ``folder`` (a rerun
    resumes), None when there is none; a folder trained otherwise is an error, not a result
    (``jobs.finished_run``)."""
    wanted = {"data": data, "test_speakers": [speaker], "encoder": args.encoder,
              "per_class": args.per_class, "strategy": args.strategy, "seed": args.seed,
              "epochs": args.epochs, "k": args.k, "pooling": args.pooling,
              **({"window": args.window} if args.window is not None else {})}
    try:
        summary = finished_run(folder, wanted)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if summary is not None and "test" not in summary:
        raise SystemExit(f"{folder}: a fold with no test scores; remove it or give another --work")
    return summary


def job_folds(args: argparse.Namespace) -> list[dict]:
    """All folds through the main job itself (strategies that train the whole encoder); a
    fold finished by an earlier run of the same options is kept, and every fold folder is
    checked before any trains (a folder of other options stops the run before it spends any)."""
    folds = []
    data = Path(load_dataset(args.data).location)
    speakers = load_dataset(bundled("fsdd")).speakers
    finished = {s: finished_fold(args.work / s, args, data, s) for s in speakers}
    for speaker in speakers:
        folder = args.work / speaker
        summary = finished[speaker]
        if summary is not None:
            print(f"{speaker}: kept the finished fold in {folder}", flush=True)
        else:
            summary = train_job(
                args.data, encoder=args.encoder, window=args.window, strategy=args.strategy,
                k=args.k, per_class_n=args.per_class, epochs=args.epochs, seed=args.seed,
                out=folder, test_speakers=[speaker], pooling=args.pooling,
            )
        folds.append({"test_speaker": speaker, **summary["test"],
                      "train_seconds": summary["train_seconds"], "n_train": summary["n_train"]})
        print(f"{speaker}: accuracy {summary['test']['accuracy']:.4f}", flush=True)
    return folds


def results_name(args: argparse.Namespace, on_fsdd: bool) -> str:
    """Strategy, clips and window, then every other option away from its default: runs that
    differ in any option neither share a results file nor a fold folder."""
    name = f"{args.strategy}_pc{args.per_class or 'all'}_{args.window or 'default'}"
    others = [("" if on_fsdd else f"data-{args.data.stem}"),
              ("" if args.encoder == "whisper-tiny.en" else args.encoder),
              ("" if args.k == 2 else f"k{args.k}"),  # main refuses --k where it is not read
              ("" if args.epochs == default_epochs(args.strategy) else f"ep{args.epochs}"),
              ("" if args.pooling == "mean" else args.pooling),
              ("" if args.seed == 0 else f"seed{args.seed}")]
    return "_".join([name, *filter(None, others)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(JOBS))
    # the CLI's ranges: 0 would read as the default (all clips, the strategy's epochs)
    parser.add_argument("--k", type=bounded(int, 1), default=2)
    parser.add_argument("--per-class", type=bounded(int, 1))
    parser.add_argument("--epochs", type=bounded(int, 1), help="default: the strategy's (as the CLI)")
    parser.add_argument("--encoder", default="whisper-tiny.en")
    parser.add_argument("--window", help="clip | Ns (e.g. 2s, 30s); default: the encoder's")
    parser.add_argument("--pooling", default="mean", choices=("mean", "attentive"))
    parser.add_argument("--seed", type=SEED, default=0)
    fsdd = bundled("fsdd")
    parser.add_argument("--data", type=Path, default=fsdd,
                        help="training set holding the FSDD speakers (the folds), e.g. "
                             "data/digits.csv (strategies through the main job only)")
    parser.add_argument("--name", help="results file name (default: derived from the options)")
    parser.add_argument("--work", type=Path, default=Path("runs/speaker_folds"))
    args = parser.parse_args()
    try:  # an unknown encoder, a bad window or an option the strategy ignores: said now
        build_encoder(args.encoder, window=args.window, pretrained=False)
        check_options(args.strategy, k=args.k, epochs=args.epochs, keep="best", layer=None,
                      pooling=args.pooling, head_options=None, window=args.window,
                      encoder=args.encoder)
    except ValueError as err:
        parser.error(str(err))
    args.epochs = args.epochs or default_epochs(args.strategy)
    on_fsdd = args.data.resolve() == fsdd.resolve()  # however the path is spelt
    if args.strategy in CACHED and not on_fsdd:
        parser.error(f"--data: the {args.strategy} folds run on the FSDD digits' shared cache")
    try:  # said now, not after the first fold's set-up
        held = set(load_dataset(fsdd).speakers) - set(load_dataset(args.data).speakers)
    except DatasetError as err:
        parser.error(f"--data: {err}")
    if held:
        parser.error(f"--data {args.data}: no clips of {', '.join(sorted(held))}, the FSDD "
                     "speakers the folds hold out")

    if args.work.exists() and not args.work.is_dir():  # else a traceback from the first fold
        parser.error(f"--work {args.work}: exists and is not a folder")
    name = args.name or results_name(args, on_fsdd)
    args.work = args.work / name
    started = time.perf_counter()
    folds = cached_folds(args) if args.strategy in CACHED else job_folds(args)
    mean, std = mean_std([f["accuracy"] for f in folds])
    result = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "mean_accuracy": mean, "std_accuracy": std,
              "wall_seconds": time.perf_counter() - started, "folds": folds}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {f['test_speaker']} | {f['n_train']} | {f['n']} | {f['accuracy']:.4f} | "
                     f"{f['macro_f1']:.4f} | {f['train_seconds']:.0f} |" for f in folds)
    (out / f"{name}.md").write_text(
        f"# Leave-one-speaker-out: {name}\n\n`python recipes/speaker_folds/run.py "
        f"--strategy {args.strategy} --k {args.k} --epochs {args.epochs}"
        f"{f' --per-class {args.per_class}' if args.per_class else ''}"
        f"{f' --window {args.window}' if args.window else ''}"
        f"{'' if on_fsdd else f' --data {args.data}'}"
        f"{'' if args.encoder == 'whisper-tiny.en' else f' --encoder {args.encoder}'}"
        f"{'' if args.pooling == 'mean' else f' --pooling {args.pooling}'}"
        f"{f' --seed {args.seed}' if args.seed else ''}`\n\n"
        f"| test speaker | train clips | test clips | accuracy | macro-F1 | train s |\n"
        f"|---|---|---|---|---|---|\n{rows}\n\n"
        f"**mean accuracy {mean:.4f} ± {std:.4f}** (min {np.min([f['accuracy'] for f in folds]):.4f})\n")
    print(f"mean accuracy over {len(folds)} held-out speakers: {mean:.4f} ± {std:.4f} "
          f"(written to {out / name}.json and .md)")


if __name__ == "__main__":
    run_script(main)
