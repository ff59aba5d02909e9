"""Single-task vs multi-task heads on one Whisper tiny.en encoder (top-1 block tuned, cached).

Two splits, because the tasks need different held-out sets:
- A, speaker-disjoint: command accuracy on a speaker never heard in training (theo);
- B, take-based: takes 0-4 of every speaker are the test set, so speaker ID can be scored on
  voices seen in training; the multi-label test set is concatenations built from those takes.
Every run shares the encoder, the cached lower-layer features, the epochs and the learning rates;
a "single-task" run keeps the other heads in the model but gives their losses weight 0.

    python recipes/multitask/run.py --quick    # takes 0-9, 5 epochs, 1 seed (< 5 min on CPU)
    python recipes/multitask/run.py            # all 50 takes, 8 epochs, 2 seeds
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from speechxfer.audio import Clip
from speechxfer.data import FSDD_NAME, load_dataset
from speechxfer.encoders import build_encoder
from speechxfer.jobs import default_data, read_clips
from speechxfer.model import CommandClassifier
from speechxfer.multitask import MULTI_TASK, make_concatenations, task_metrics
from speechxfer.train import FeatureCache, TrainConfig, fit, frozen_blocks, pick_device

HERE = Path(__file__).resolve().parent
HELD_OUT = "theo"
TEST_TAKES = range(5)
SPEAKER_OPTIONS = {"kind": "embedding", "embedding_dim": 64}

# run name -> (split, task weights, scarce speaker labels); tasks with weight 0 are untrained
RUNS = {
    "A command only": ("A", {"command": 1, "speaker": 0}, False),
    "A command+speaker": ("A", {"command": 1, "speaker": 1}, False),
    "B speaker only": ("B", {"command": 0, "speaker": 1, MULTI_TASK: 0}, False),
    "B commands only": ("B", {"command": 0, "speaker": 0, MULTI_TASK: 1}, False),
    "B command only": ("B", {"command": 1, "speaker": 0, MULTI_TASK: 0}, False),
    "B all three": ("B", {"command": 1, "speaker": 1, MULTI_TASK: 1}, False),
    "B speaker only, 10% speaker labels": ("B", {"command": 0, "speaker": 1, MULTI_TASK: 0}, True),
    "B all three, 10% speaker labels": ("B", {"command": 1, "speaker": 1, MULTI_TASK: 1}, True),
}


def take(c: Clip) -> int:
    return int(FSDD_NAME.match(c.path.stem)["take"])


def with_commands(c: Clip) -> Clip:
    """A single clip's multi-label is its one command (every other class absent)."""
    return Clip(c.path, c.labels | {MULTI_TASK: c.labels["command"]}, c.speaker)


def scarce(labels: list[dict[str, str]], keep: float, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [lab if rng.random() < keep else {k: v for k, v in lab.items() if k != "speaker"}
            for lab in labels]


def run_one(name: str, split: dict, cache: FeatureCache, args, seed: int, device) -> dict:
    part, weights, few_speakers = RUNS[name]
    data = split[part]
    torch.manual_seed(seed)
    tasks = {t: data["tasks"][t] for t in weights}
    options = {"speaker": SPEAKER_OPTIONS, MULTI_TASK: {"kind": "multi"}}
    model = CommandClassifier(build_encoder("whisper-tiny.en", pretrained=True), tasks,
                              head_options={t: o for t, o in options.items() if t in tasks})
    labels = [c.labels for c in data["train"]]
    if few_speakers:
        labels = scarce(labels, 0.1, seed)
    config = TrainConfig(strategy="top-k", k=1, epochs=args.epochs, batch_size=32, lr_head=2e-3,
                         lr_encoder=2e-4, seed=seed, device=str(device), task_weights=weights)
    started = time.perf_counter()
    fit(model, data["train_waves"], labels, [], [], config,
        train_cache=cache.subset(data["train_index"]))
    seconds = time.perf_counter() - started
    metrics = task_metrics(model, data["test_waves"], data["test"])
    flat = {"seconds": seconds, "n_train": len(labels),
            "n_speaker_labels": sum("speaker" in lab for lab in labels)}
    for task, m in metrics.items():
        if weights.get(task):
            flat |= {f"{task}_{k}": v for k, v in m.items() if isinstance(v, float)}
    return flat


def build_splits(args) -> tuple[dict, list, list]:
    clips = [c for c in load_dataset(default_data()).clips if take(c) < args.takes]
    a_train = [c for c in clips if c.speaker != HELD_OUT]
    a_test = [c for c in clips if c.speaker == HELD_OUT]
    b_train = [with_commands(c) for c in clips if take(c) not in TEST_TAKES]
    b_test = [c for c in clips if take(c) in TEST_TAKES]
    work = Path(args.work)
    b_train += make_concatenations(b_train, args.concat_train, 0, work / "concat_train",
                                   hide_label=0.1, hide_entry=0.2)
    b_test += make_concatenations(b_test, args.concat_test, 1, work / "concat_test")
    split = {"A": {"train": a_train, "test": a_test}, "B": {"train": b_train, "test": b_test}}
    # one pool of training clips whose features are cached once for every run
    pool = sorted({str(c.path): c for c in a_train + b_train}.values(), key=lambda c: str(c.path))
    return split, pool, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", default="runs/multitask", help="generated audio goes here")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.takes, args.epochs, seeds = (10, 5, [0]) if args.quick else (50, 8, [0, 1])
    args.concat_train, args.concat_test = (100, 60) if args.quick else (500, 200)
    torch.set_num_threads(1)
    device = pick_device("auto")
    started = time.perf_counter()
    split, pool, _ = build_splits(args)
    base = CommandClassifier(build_encoder("whisper-tiny.en", pretrained=True),
                            {"command": ["x", "y"]})
    base.to(device)
    n_frozen = frozen_blocks(base, TrainConfig(strategy="top-k", k=1))
    pool_waves, pool, _ = read_clips(pool, base.sample_rate, "training")
    cache = FeatureCache(base, pool_waves, n_frozen, device)
    position = {str(c.path): i for i, c in enumerate(pool)}
    for part in split.values():
        part["train_index"] = [position[str(c.path)] for c in part["train"]]
        part["train_waves"] = [pool_waves[i] for i in part["train_index"]]
        part["test_waves"], part["test"], _ = read_clips(part["test"], base.sample_rate, "test")
        part["tasks"] = {
            "command": sorted({c.labels["command"] for c in part["train"] if "command" in c.labels}),
            "speaker": sorted({c.speaker for c in part["train"] if c.speaker}),
            MULTI_TASK: sorted({c.labels["command"] for c in part["train"] if "command" in c.labels}),
        }
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        for name in RUNS:
            results.setdefault(name, []).append(run_one(name, split, cache, args, seed, device))
            print(name, json.dumps(results[name][-1]))
    summary = {
        "mode": "quick" if args.quick else "full", "takes_per_digit_speaker": args.takes,
        "epochs": args.epochs, "seeds": seeds, "strategy": "top-k, k=1 (cached lower 3 blocks)",
        "split_A": f"train: speakers != {HELD_OUT}; test: {HELD_OUT} (command accuracy)",
        "split_B": "train: takes >= 5 of all speakers + concatenations; test: takes 0-4 + "
                   "concatenations of them (speaker ID, EER, multi-label micro-F1)",
        "n": {p: {"train": len(s["train"]), "test": len(s["test"])} for p, s in split.items()},
        "total_seconds": time.perf_counter() - started,
        "runs": {name: aggregate(rows) for name, rows in results.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    (args.out / f"results_{tag}.json").write_text(json.dumps(summary, indent=2))
    (args.out / f"results_{tag}.md").write_text(table(summary))
    plot(summary, args.out / f"results_{tag}.png")
    print(table(summary))


def aggregate(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    return {k: {"mean": float(np.mean([r[k] for r in rows if k in r])),
                "std": float(np.std([r[k] for r in rows if k in r]))} for k in keys}


COLUMNS = [("command_accuracy", "command acc"), ("speaker_accuracy", "speaker ID acc"),
           ("speaker_eer_known", "speaker EER"), (f"{MULTI_TASK}_micro_f1", "multi-label micro-F1")]


def table(summary: dict) -> str:
    head = (f"# Multi-task results ({summary['mode']}: seeds {summary['seeds']}, "
            f"{summary['epochs']} epochs, {summary['strategy']})")
    lines = [head, "",
             f"- A: {summary['split_A']}", f"- B: {summary['split_B']}", "",
             "| run | " + " | ".join(c for _, c in COLUMNS) + " | speaker labels | train s |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for name, m in summary["runs"].items():
        cells = [f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" if k in m else "—" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {m['n_speaker_labels']['mean']:.0f} | {m['seconds']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 4.5))
    for ax, (key, title) in zip(axes, COLUMNS):
        names = [n for n, m in summary["runs"].items() if key in m]
        means = [summary["runs"][n][key]["mean"] for n in names]
        stds = [summary["runs"][n][key]["std"] for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title + (" (lower is better)" if "eer" in key else ""))
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
