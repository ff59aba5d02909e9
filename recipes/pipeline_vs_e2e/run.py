"""Pipeline vs end-to-end vs transfer: a learning curve over training clips per command.

Leave-one-speaker-out on the bundled FSDD speakers: train on three speakers, test on takes
0-4 of the fourth. Training sets keep ``n`` clips per digit per training speaker, drawn by seed
from takes 5-49, for n in {1, 2, 5, 10, 20, 45}. Systems:

- pipeline (MFCC front end, classic model): ``gmm-hmm``, ``dtw``, ``svm``;
- end-to-end from scratch: ``ds-cnn``, ``raw-cnn``, ``whisper-scratch`` (Whisper tiny.en's
  network, random init);
- transfer from Whisper tiny.en: ``whisper-frozen`` (probe), ``whisper-top-2`` (top 2 blocks
  tuned), ``whisper-reinit-2`` (top 2 blocks re-initialised, everything tuned).

Frozen and top-2 train on lower-layer features computed once per clip (``FeatureCache``) and
shared by every fold, point and seed; their train time adds each clip's share of that pass.
The two Whisper systems that train through the whole encoder on waveforms are capped (fewer
points and folds). Training never sees the test speaker: no validation set, a fixed number of
epochs chosen so that small sets still get ``min_steps`` optimiser steps.

    python recipes/pipeline_vs_e2e/run.py --quick   # 1 fold, n in {1, 5}, 1 seed (< 5 min)
    python recipes/pipeline_vs_e2e/run.py           # the full curve (< 90 min on 2 CPU cores)

Writes results/results{,_quick}.{csv,json,md} and results/learning_curve{,_quick}.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from speechxfer.audio import Clip
from speechxfer.classic import build_classic
from speechxfer.cli import bounded
from speechxfer.data import FSDD_NAME, load_dataset, per_class
from speechxfer.encoders import build_encoder
from speechxfer.jobs import bundled, evaluate_system, mean_std, read_clips, write_results
from speechxfer.log import run_script
from speechxfer.model import CommandClassifier
from speechxfer.recognizer import Recognizer
from speechxfer.train import FeatureCache, TrainConfig, fit, frozen_blocks, pick_device

HERE = Path(__file__).resolve().parent
WHISPER = "whisper-tiny.en"
POOL_TAKES = range(5, 50)
TEST_TAKES = range(5)
BATCH_SIZE = 16


@dataclass(frozen=True)
class System:
    """One line of the learning curve: a classic kind, or an encoder plus a strategy."""

    name: str
    family: str  # pipeline / end-to-end / transfer
    builder: str  # classic kind or encoder name
    strategy: str | None = None  # None: classic
    k: int = 2
    lr_head: float = 2e-3  # scratch: the learning rate of the whole network
    min_steps: int = 100  # optimiser steps at least, however small the training set
    min_epochs: int = 6
    capped: bool = False  # trains all of Whisper on waveforms: only the capped points/folds


SYSTEMS = [
    System("gmm-hmm", "pipeline", "gmm-hmm"),
    System("dtw", "pipeline", "dtw"),
    System("svm", "pipeline", "svm"),
    System("ds-cnn", "end-to-end", "ds-cnn", "scratch", lr_head=3e-3),
    System("raw-cnn", "end-to-end", "raw-cnn", "scratch", lr_head=3e-3),
    System("whisper-frozen", "transfer", WHISPER, "frozen", min_steps=200, min_epochs=20),
    System("whisper-top-2", "transfer", WHISPER, "top-k"),
    System("whisper-reinit-2", "transfer", WHISPER, "reinit-k", min_steps=40, min_epochs=3,
           capped=True),
    System("whisper-scratch", "end-to-end", WHISPER, "scratch", lr_head=5e-4, min_steps=40,
           min_epochs=3, capped=True),
]
BY_NAME = {s.name: s for s in SYSTEMS}


@dataclass(frozen=True)
class Plan:
    points: tuple[int, ...]
    folds: int  # held-out speakers, in name order
    seeds: tuple[int, ...]  # seed 0 runs every system; further seeds only `seed_systems`
    systems: tuple[str, ...]
    capped_points: tuple[int, ...]
    capped_folds: int
    seed_systems: tuple[str, ...]  # cheapest first: the budget check may stop before the last
    max_minutes: float  # no block starts once its estimated end passes this


FULL = Plan(points=(1, 2, 5, 10, 20, 45), folds=4, seeds=(0, 1, 2),
            systems=tuple(s.name for s in SYSTEMS), capped_points=(2, 10), capped_folds=2,
            seed_systems=("whisper-frozen", "svm", "whisper-top-2", "ds-cnn", "dtw", "raw-cnn"),
            max_minutes=85)
QUICK = Plan(points=(1, 5), folds=1, seeds=(0,),
             systems=("gmm-hmm", "dtw", "svm", "ds-cnn", "whisper-frozen", "whisper-top-2"),
             capped_points=(), capped_folds=0, seed_systems=(), max_minutes=4.5)


def take(c: Clip) -> int:
    return int(FSDD_NAME.match(c.path.stem)["take"])


def blocks(plan: Plan, speakers: list[str]) -> list[list[tuple[str, str, int, int]]]:
    """Jobs (system, test speaker, point, seed) grouped into blocks, in priority order.

    Seed 0 of every system comes first, fold by fold (the capped systems on their folds right
    after the others), then further seeds system by system, so a budget stop loses least.
    """
    out = []
    for f, speaker in enumerate(speakers[: plan.folds]):
        for name in plan.systems:
            capped = BY_NAME[name].capped
            if capped and f >= plan.capped_folds:
                continue
            points = plan.capped_points if capped else plan.points
            out.append([(name, speaker, n, 0) for n in points])
    for seed in plan.seeds[1:]:
        for name in plan.seed_systems:
            out.append([(name, s, n, seed) for s in speakers[: plan.folds] for n in plan.points])
    return [b for b in out if b]


def epochs_for(system: System, n_train: int) -> int:
    steps_per_epoch = math.ceil(n_train / BATCH_SIZE)
    return max(system.min_epochs, math.ceil(system.min_steps / steps_per_epoch))


def classic_params(model: Recognizer) -> int:
    """Numbers a fitted classic model stores (DTW: its templates), read back from its save."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        return sum(a.size for a in load_file(str(Path(tmp) / "model.safetensors")).values())


class Runner:
    """Trains and scores one (system, fold, point, seed) job on waves loaded once."""

    def __init__(self, clips: list[Clip], waves: list[torch.Tensor], labels: list[str]):
        self.clips, self.waves, self.labels = clips, waves, labels
        self.index = {c.path: i for i, c in enumerate(clips)}
        self.caches: dict[str, tuple[FeatureCache, float, dict[int, int]]] = {}

    def cache(self, system: System, needed: list[int]) -> tuple[FeatureCache, float, dict[int, int]]:
        """Lower-layer features of clips ``needed``, once per strategy; s per clip; positions."""
        if system.strategy not in self.caches:
            model = self.new_model(system)
            n_frozen = frozen_blocks(model, TrainConfig(strategy=system.strategy, k=system.k))
            start = time.perf_counter()
            cache = FeatureCache(model, [self.waves[i] for i in needed], n_frozen,
                                 pick_device("auto"), desc=f"caching {system.name}")
            per_clip = (time.perf_counter() - start) / len(needed)
            positions = dict(zip(needed, range(len(needed))))
            self.caches[system.strategy] = (cache, per_clip, positions)
            print(f"cached {len(needed)} clips for {system.name}: {per_clip * 1e3:.1f} ms/clip")
        return self.caches[system.strategy]

    def new_model(self, system: System) -> CommandClassifier:
        encoder = build_encoder(system.builder, window="clip",
                                pretrained=system.strategy != "scratch")
        return CommandClassifier(encoder, {"command": self.labels})

    def run(self, system: System, train: list[Clip], test: list[Clip], seed: int,
            cache_clips: list[int]) -> dict:
        train_w = [self.waves[self.index[c.path]] for c in train]
        test_w = [self.waves[self.index[c.path]] for c in test]
        start = time.perf_counter()
        extra: dict = {}
        if system.strategy is None:
            model = build_classic(system.builder, seed=seed).fit(train_w, [c.label for c in train])
            train_s = time.perf_counter() - start
            params = classic_params(model)
        else:
            torch.manual_seed(seed)
            model = self.new_model(system)
            epochs = epochs_for(system, len(train))
            config = TrainConfig(strategy=system.strategy, k=system.k, epochs=epochs,
                                 batch_size=BATCH_SIZE, lr_head=system.lr_head, seed=seed)
            train_cache, feature_s = None, 0.0
            if system.strategy in ("frozen", "top-k"):
                cache, per_clip, positions = self.cache(system, cache_clips)
                train_cache = cache.subset([positions[self.index[c.path]] for c in train])
                feature_s = per_clip * len(train)
                start = time.perf_counter()
            fit(model, train_w, [c.labels for c in train], [], [], config,
                train_cache=train_cache)
            train_s = time.perf_counter() - start + feature_s
            params = sum(p.numel() for p in model.parameters())
            extra = {"epochs": epochs, "steps": epochs * math.ceil(len(train) / BATCH_SIZE)}
        report = evaluate_system(model, test_w, [c.label for c in test])
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                "n_test": report["n"], "train_s": train_s,
                "ms_per_clip": report["seconds_per_clip"] * 1e3, "params": int(params), **extra}


def summarise(runs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["system"], r["per_class"])].append(r)
    order = {s.name: i for i, s in enumerate(SYSTEMS)}
    rows = []
    for (name, n), rs in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        mean, std = mean_std([r["accuracy"] for r in rs])
        rows.append({"system": name, "family": BY_NAME[name].family, "per_class": n,
                     "n_train": rs[0]["n_train"], "runs": len(rs),
                     "folds": len({r["test_speaker"] for r in rs}),
                     "seeds": len({r["seed"] for r in rs}), "accuracy_mean": mean,
                     "accuracy_std": std, "train_s": float(np.mean([r["train_s"] for r in rs])),
                     "ms_per_clip": float(np.mean([r["ms_per_clip"] for r in rs])),
                     "params": int(np.mean([r["params"] for r in rs]))})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    points = sorted({r["per_class"] for r in rows})
    cell = {(r["system"], r["per_class"]): r for r in rows}
    systems = [s.name for s in SYSTEMS if any(r["system"] == s.name for r in rows)]
    lines = [f"# Pipeline vs end-to-end vs transfer ({meta['run']} run)", "",
             (f"Held-out speaker accuracy (mean ± std over folds × seeds), test = takes "
              f"{meta['test_takes']} of the held-out speaker; wall time "
              f"{meta['wall_minutes']:.1f} min."), "", "| system | " + " | ".join(f"n={n}" for n in points) + " |",
             "|---" * (len(points) + 1) + "|"]
    for name in systems:
        vals = [(f"{cell[name, n]['accuracy_mean']:.3f} ± {cell[name, n]['accuracy_std']:.3f}"
                 if (name, n) in cell else "–") for n in points]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    lines += ["", "n = training clips per command per training speaker (3 speakers).", "",
              ("| system | family | n | train clips | runs (folds × seeds) | accuracy | train s | "
               "ms/clip | params |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['family']} | {r['per_class']} | {r['n_train']} | "
                     f"{r['runs']} ({r['folds']} × {r['seeds']}) | {r['accuracy_mean']:.3f} ± "
                     f"{r['accuracy_std']:.3f} | {r['train_s']:.1f} | {r['ms_per_clip']:.1f} | "
                     f"{r['params']:,} |")
    if meta["skipped_blocks"]:
        lines += ["", f"Not run (budget): {meta['skipped_blocks']}"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"pipeline": "--", "end-to-end": ":", "transfer": "-"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for s in SYSTEMS:
        rs = [r for r in rows if r["system"] == s.name]
        if rs:
            ax.errorbar([r["per_class"] for r in rs], [r["accuracy_mean"] for r in rs],
                        yerr=[r["accuracy_std"] for r in rs], label=f"{s.name} ({s.family})",
                        linestyle=styles[s.family], marker="o", capsize=3)
    points = sorted({r["per_class"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(points, [str(n) for n in points])
    ax.minorticks_off()
    ax.set_xlabel("training clips per command per training speaker (3 speakers)")
    ax.set_ylabel("held-out speaker accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def output_files(suffix: str) -> list[Path]:
    """The files ``write_outputs`` writes for ``suffix``."""
    out = HERE / "results"
    return [*(out / f"results{suffix}.{ext}" for ext in ("csv", "json", "md")),
            out / f"learning_curve{suffix}.png"]


def write_outputs(runs: list[dict], meta: dict, suffix: str) -> None:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    rows = summarise(runs)
    with (out / f"results{suffix}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    (out / f"results{suffix}.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "runs": runs}, indent=2))
    (out / f"results{suffix}.md").write_text(markdown(rows, meta))
    plot(rows, out / f"learning_curve{suffix}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 fold, n in {1, 5}, 1 seed")
    parser.add_argument("--max-minutes", type=bounded(float, 0.0),
                        help="budget (default: 85 full, 4.5 quick)")
    parser.add_argument("--threads", type=bounded(int, 1), default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    budget = 60 * (plan.max_minutes if args.max_minutes is None else args.max_minutes)
    suffix = "_quick" if args.quick else ""
    started = time.perf_counter()

    ds = load_dataset(bundled("fsdd"))
    speakers = ds.speakers
    todo = blocks(plan, speakers)
    pools = {s: [c for c in ds.clips if c.speaker != s and take(c) in POOL_TAKES]
             for s in speakers}
    tests = {s: [c for c in ds.clips if c.speaker == s and take(c) in TEST_TAKES]
             for s in speakers}
    train_sets = {(s, n, seed): per_class(pools[s], n, seed)
                  for b in todo for _, s, n, seed in b}
    used = {c.path: c for key, cs in train_sets.items() for c in cs}
    used |= {c.path: c for b in todo for _, s, _, _ in b for c in tests[s]}
    waves, clips, _ = read_clips(sorted(used.values(), key=lambda c: str(c.path)), 16000, "all")
    runner = Runner(clips, waves, ds.labels)
    position = {c.path: i for i, c in enumerate(clips)}
    cache_clips = sorted({position[c.path] for cs in train_sets.values() for c in cs})

    meta = {"run": "quick" if args.quick else "full", "plan": asdict(plan),
            "test_takes": f"{TEST_TAKES.start}-{TEST_TAKES.stop - 1}",
            "pool_takes": f"{POOL_TAKES.start}-{POOL_TAKES.stop - 1}", "batch_size": BATCH_SIZE,
            "systems": [asdict(s) for s in SYSTEMS if s.name in plan.systems],
            "threads": args.threads, "skipped_blocks": [], "wall_minutes": 0.0}
    runs: list[dict] = []
    block_cost: dict[str, float] = {}  # seconds of a system's seed-0 block, to budget reruns
    for block in todo:
        name = block[0][0]
        elapsed = time.perf_counter() - started
        if elapsed + block_cost.get(name, 0.0) * len(block) / 6 > budget:
            meta["skipped_blocks"].append(f"{name} seed {block[0][3]} ({len(block)} jobs)")
            continue
        block_start = time.perf_counter()
        for name, speaker, n, seed in block:
            train = train_sets[(speaker, n, seed)]
            result = runner.run(BY_NAME[name], train, tests[speaker], seed, cache_clips)
            runs.append({"system": name, "family": BY_NAME[name].family, "test_speaker": speaker,
                         "per_class": n, "n_train": len(train), "seed": seed,
                         "epochs": None, "steps": None} | result)
            print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {name:17s} {speaker:9s} "
                  f"n={n:2d} seed={seed} acc={result['accuracy']:.3f} "
                  f"train={result['train_s']:.1f}s", flush=True)
        if block[0][3] == 0:
            block_cost.setdefault(name, 0.0)
            block_cost[name] = max(block_cost[name],
                                   (time.perf_counter() - block_start) * 6 / len(block))
        meta["wall_minutes"] = (time.perf_counter() - started) / 60
        write_results(lambda s: write_outputs(runs, meta, s), output_files, suffix, finished=False)
    if not runs:
        raise SystemExit(f"no block ran within --max-minutes {budget / 60:g}; nothing written")
    meta["wall_minutes"] = (time.perf_counter() - started) / 60
    write_results(lambda s: write_outputs(runs, meta, s), output_files, suffix, finished=True)
    print(markdown(summarise(runs), meta))


if __name__ == "__main__":
    run_script(main)
