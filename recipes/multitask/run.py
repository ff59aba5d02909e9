"""When does multi-task learning pay? Command, speaker and multi-label heads on one Whisper encoder.

Data: the ten command words of Speech Commands (``data/speech_commands``, 80 crowd-sourced
speakers), split by speaker as in ``recipes/speech_commands`` (groups of 8, seed 0): groups 0
and 1 (16 speakers) are the **test** speakers, group 2 the **validation** speakers (used only to
choose the multi-label decision threshold), groups 3-9 (56 speakers) **train**. Tasks:

- ``command``: the word (10 classes), accuracy on the test speakers' clips;
- ``speaker``: a 64-d AM-softmax embedding over the 56 training speakers, scored by verification
  EER (cosine) over every pair of the test speakers' clips: voices the head never heard;
- ``commands`` (multi-label): which words a clip holds, micro-F1 on concatenations of 1-3 test
  clips of one test speaker; single clips carry their one word as a multi-label too.

Every run shares the encoder, the cached lower-layer features, the learning rates and batch; a
"single-task" run keeps the other heads but gives their losses weight 0. The last epoch is
scored (no validation, no early stopping). Conditions (``CONDITIONS``) test the textbook's three:
shared features (do two tasks on one block help each other at all), more data in the other task
(scarce speaker labels with plentiful command labels, and the reverse), a network big enough
(one tuned block vs two, vs whisper-base); and the multi-label collapse (more epochs, its loss
weighted up, and a threshold tuned on the validation speakers).

    python recipes/multitask/run.py --quick    # 1 seed, a few conditions (< 5 min on CPU)
    python recipes/multitask/run.py            # every condition, seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechxfer.audio import Clip
from speechxfer.cli import SEED, bounded, results_folder
from speechxfer.data import load_dataset
from speechxfer.encoders import build_encoder
from speechxfer.evaluate import eer_of_pairs
from speechxfer.jobs import read_clips
from speechxfer.log import run_script
from speechxfer.model import CommandClassifier
from speechxfer.multitask import MULTI_TASK, make_concatenations, multilabel_micro_f1
from speechxfer.train import FeatureCache, TrainConfig, fit, frozen_blocks, pick_device

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "data" / "speech_commands"
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
N_GROUPS, GROUP_SEED = 10, 0  # as recipes/speech_commands: fold 0 tests on groups 0 and 1
TEST_GROUPS, VAL_GROUPS = (0, 1), (2,)
SPEAKER_OPTIONS = {"kind": "embedding", "embedding_dim": 64}
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)  # multi-label decision thresholds tried
WINDOW = "clip"  # the 1-s clips as they are: half the frames of the 2-s window, half the cost
SCARCE = 0.1  # share of training clips that keep a scarce task's label

C, S, M = "command", "speaker", MULTI_TASK


@dataclass(frozen=True)
class Condition:
    weights: dict  # task -> loss weight (0: head present, untrained)
    scarce: str | None = None  # task of which only SCARCE of the training clips keep a label
    k: int = 1  # top blocks tuned (the lower ones are cached)
    encoder: str = "whisper-tiny.en"
    epochs: float = 1.0  # times the base epochs

    @property
    def multi(self) -> bool:
        """Runs with the multi-label head train on single clips + concatenations."""
        return M in self.weights


# in the order they run: a time budget cuts the last conditions, never a seed
CONDITIONS = {
    # shared low-level features: two tasks on one tuned block, all labels
    "command only": Condition({C: 1, S: 0}),
    "speaker only": Condition({C: 0, S: 1}),
    "command+speaker": Condition({C: 1, S: 1}),
    # the multi-label collapse (its tuned threshold comes with every multi-label row)
    "multi-label only": Condition({C: 0, S: 0, M: 1}),
    "all three": Condition({C: 1, S: 1, M: 1}),
    # more data in the other task
    "speaker only, 10% speaker labels": Condition({C: 0, S: 1}, scarce=S),
    "command+speaker, 10% speaker labels": Condition({C: 1, S: 1}, scarce=S),
    "command only, 10% command labels": Condition({C: 1, S: 0}, scarce=C),
    "command+speaker, 10% command labels": Condition({C: 1, S: 1}, scarce=C),
    # the collapse: loss balance, then training length
    "all three, multi-label loss x5": Condition({C: 1, S: 1, M: 5}),
    "all three, 2x epochs": Condition({C: 1, S: 1, M: 1}, epochs=2),
    # network size: two tuned blocks, a bigger encoder
    "top-2: command only": Condition({C: 1, S: 0}, k=2),
    "top-2: speaker only": Condition({C: 0, S: 1}, k=2),
    "top-2: command+speaker": Condition({C: 1, S: 1}, k=2),
    "multi-label only, 2x epochs": Condition({C: 0, S: 0, M: 1}, epochs=2),
    # which other head drags the multi-label head down
    "command+multi-label": Condition({C: 1, S: 0, M: 1}),
    "speaker+multi-label": Condition({C: 0, S: 1, M: 1}),
    "base: command only": Condition({C: 1, S: 0}, encoder="whisper-base"),
    "base: speaker only": Condition({C: 0, S: 1}, encoder="whisper-base"),
    "base: command+speaker": Condition({C: 1, S: 1}, encoder="whisper-base"),
}


def relative_cost(cond: Condition) -> float:
    """A condition's cost relative to a top-1 single-clip run (for the time budget): multi-label
    runs also read the concatenations; two blocks or whisper-base cost more per clip."""
    return ((1.5 if cond.multi else 1.0) * cond.epochs * (1 + 0.8 * (cond.k - 1))
            * (3.0 if cond.encoder == "whisper-base" else 1.0))


QUICK = ("command only", "speaker only", "command+speaker", "multi-label only", "all three")

# (row with more tasks, row with fewer, metric): the paired per-seed differences reported
PAIRS = [
    ("command+speaker", "command only", "command_accuracy"),
    ("command+speaker", "speaker only", "speaker_eer"),
    ("command+speaker, 10% speaker labels", "speaker only, 10% speaker labels", "speaker_eer"),
    ("command+speaker, 10% command labels", "command only, 10% command labels",
     "command_accuracy"),
    ("top-2: command+speaker", "top-2: command only", "command_accuracy"),
    ("top-2: command+speaker", "top-2: speaker only", "speaker_eer"),
    ("base: command+speaker", "base: command only", "command_accuracy"),
    ("base: command+speaker", "base: speaker only", "speaker_eer"),
    ("all three", "multi-label only", "commands_f1"),
    ("all three", "multi-label only", "commands_f1_tuned"),
    ("command+multi-label", "multi-label only", "commands_f1"),
    ("speaker+multi-label", "multi-label only", "commands_f1"),
    ("command+multi-label", "multi-label only", "commands_f1_tuned"),
    ("speaker+multi-label", "multi-label only", "commands_f1_tuned"),
    ("command+multi-label", "command only", "command_accuracy"),
    ("all three, multi-label loss x5", "multi-label only", "commands_f1"),
    ("all three, 2x epochs", "multi-label only", "commands_f1"),
    ("all three, 2x epochs", "multi-label only, 2x epochs", "commands_f1"),
    ("all three, 2x epochs", "multi-label only, 2x epochs", "commands_f1_tuned"),
    ("all three", "command only", "command_accuracy"),
    ("all three", "command+speaker", "command_accuracy"),
    ("all three", "speaker only", "speaker_eer"),
]


def speaker_groups(speakers: list[str], n_groups: int, seed: int) -> list[list[str]]:
    """Speakers shuffled by ``seed`` and cut into groups, exactly as recipes/speech_commands."""
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    return [sorted(order[i::n_groups]) for i in range(n_groups)]


def with_commands(c: Clip) -> Clip:
    """A single clip's multi-label is its one command (every other class absent)."""
    return Clip(c.path, c.labels | {M: c.labels[C]}, c.speaker)


def scarce(labels: list[dict[str, str]], task: str, keep: float, seed: int) -> list[dict]:
    """Hide ``task``'s label on all but about ``keep`` of the single clips (concatenations,
    which only the multi-label runs use, keep theirs)."""
    rng = random.Random(seed)
    return [lab if rng.random() < keep or C not in lab else
            {k: v for k, v in lab.items() if k != task} for lab in labels]


class Data:
    """Clips, waves and speaker split; one feature cache per (encoder, k), built on demand."""

    def __init__(self, args, device: torch.device):
        self.device = device
        dataset = load_dataset(DATA)
        words = [c for c in dataset.clips if c.speaker and c.label != "_silence_"]
        self.groups = speaker_groups(sorted({c.speaker for c in words}), N_GROUPS, GROUP_SEED)
        group_of = {s: g for g, members in enumerate(self.groups) for s in members}
        clips = [c for c in words if c.label in COMMANDS]
        if args.speakers_per_group:  # quick mode: fewer speakers in every role
            keep = {s for g in self.groups for s in g[: args.speakers_per_group]}
            clips = [c for c in clips if c.speaker in keep]
        role = {g: "test" if g in TEST_GROUPS else "val" if g in VAL_GROUPS else "train"
                for g in range(N_GROUPS)}
        parts = {r: [c for c in clips if role[group_of[c.speaker]] == r]
                 for r in ("train", "val", "test")}
        work = Path(args.work)
        self.singles = [with_commands(c) for c in parts["train"]]
        self.concat = make_concatenations(self.singles, args.concat_train, 0,
                                          work / "concat_train", hide_label=0.1, hide_entry=0.2)
        val_concat = make_concatenations(parts["val"], args.concat_val, 1, work / "concat_val")
        test_concat = make_concatenations(parts["test"], args.concat_test, 2, work / "concat_test")
        sr = 16_000
        self.single_waves, self.singles, _ = read_clips(self.singles, sr, "training")
        self.concat_waves, self.concat, _ = read_clips(self.concat, sr, "training")
        self.test_waves, self.test, _ = read_clips(parts["test"], sr, "test")
        self.eval_waves, self.eval_clips, _ = read_clips(test_concat + val_concat, sr, "test")
        self.n_test_concat = len(test_concat)
        self.tasks = {C: list(COMMANDS), M: list(COMMANDS),
                      S: sorted({c.speaker for c in self.singles})}
        self.caches: dict[tuple[str, int], FeatureCache] = {}
        self.concat_keys: set[tuple[str, int]] = set()  # caches that also hold concatenations
        self.cache_seconds: dict[str, float] = {}
        self.counts = {"train_singles": len(self.singles), "train_concatenations": len(self.concat),
                       "train_speakers": len(self.tasks[S]), "test_clips": len(self.test),
                       "test_speakers": len({c.speaker for c in self.test}),
                       "test_concatenations": self.n_test_concat,
                       "val_concatenations": len(val_concat),
                       "val_speakers": len({c.speaker for c in parts["val"]})}

    def new_model(self, cond: Condition, seed: int) -> CommandClassifier:
        torch.manual_seed(seed)
        tasks = {t: self.tasks[t] for t in cond.weights}
        options = {S: SPEAKER_OPTIONS, M: {"kind": "multi"}}
        return CommandClassifier(build_encoder(cond.encoder, WINDOW), tasks,
                                 head_options={t: o for t, o in options.items() if t in tasks})

    def cache(self, cond: Condition, with_concat: bool) -> FeatureCache:
        """Lower-layer features of the singles (+ concatenations), computed once per encoder/k."""
        key = (cond.encoder, cond.k)
        if key not in self.caches:
            started = time.perf_counter()
            base = CommandClassifier(build_encoder(cond.encoder, WINDOW), {C: ["x", "y"]})
            base.to(self.device)
            n_frozen = frozen_blocks(base, TrainConfig(strategy="top-k", k=cond.k))
            waves = self.single_waves + (self.concat_waves if key in self.concat_keys else [])
            self.caches[key] = FeatureCache(base, waves, n_frozen, self.device)
            self.cache_seconds[f"{cond.encoder} k={cond.k}"] = time.perf_counter() - started
        full = self.caches[key]
        return full if with_concat else full.subset(list(range(len(self.single_waves))))


def tuned_threshold(probs: np.ndarray, values: list[str], classes: list[str]) -> float:
    """The decision threshold with the best micro-F1 on the validation concatenations."""
    scores = [multilabel_micro_f1(probs, values, classes, t) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(scores))])


def run_one(name: str, data: Data, args, seed: int) -> dict:
    cond = CONDITIONS[name]
    model = data.new_model(cond, seed)
    waves = data.single_waves + (data.concat_waves if cond.multi else [])
    labels = [c.labels for c in data.singles + (data.concat if cond.multi else [])]
    if cond.scarce:
        labels = scarce(labels, cond.scarce, SCARCE, seed)
    weights = {t: float(w) for t, w in cond.weights.items()}
    config = TrainConfig(strategy="top-k", k=cond.k, epochs=round(args.epochs * cond.epochs),
                         batch_size=32, lr_head=2e-3, lr_encoder=2e-4, seed=seed,
                         device=str(data.device), task_weights=weights)
    cache = data.cache(cond, cond.multi)
    started = time.perf_counter()
    fit(model, waves, labels, [], [], config, train_cache=cache)
    row = {"train_seconds": time.perf_counter() - started, "epochs": config.epochs,
           "n_train": len(labels)}
    row |= {f"n_{t}_labels": sum(t in lab for lab in labels) for t in weights if weights[t]}
    started = time.perf_counter()
    out = model.predict_all(data.test_waves, embeddings=True)
    if weights[C]:
        truth = np.array([data.tasks[C].index(c.label) for c in data.test])
        row["command_accuracy"] = float(np.mean(out[C].argmax(1) == truth))
    if weights[S]:
        row["speaker_eer"] = eer_of_pairs(out[S], [c.speaker for c in data.test])
    if weights.get(M):
        probs = model.predict_all(data.eval_waves)[M]
        values = [c.labels.get(M) for c in data.eval_clips]
        n = data.n_test_concat
        threshold = tuned_threshold(probs[n:], values[n:], data.tasks[M])
        row |= {"commands_f1": multilabel_micro_f1(probs[:n], values[:n], data.tasks[M]),
                "commands_threshold": threshold,
                "commands_f1_tuned": multilabel_micro_f1(probs[:n], values[:n], data.tasks[M],
                                                         threshold),
                "commands_mean_prob_present": mean_prob(probs[:n], values[:n], data.tasks[M])}
    row["eval_seconds"] = time.perf_counter() - started
    return row


def mean_prob(probs: np.ndarray, values: list[str], classes: list[str]) -> float:
    """Mean sigmoid output on the classes truly present: low means the head stays under 0.5."""
    present = [probs[i, classes.index(w)] for i, v in enumerate(values) for w in v.split("|")
               if w in classes]
    return float(np.mean(present))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    # as train's ranges: --epochs 0 would read as the default, -1 would score untrained heads
    parser.add_argument("--seeds", type=SEED, nargs="+", default=None)
    parser.add_argument("--only", nargs="+", default=None, help="condition names to run")
    parser.add_argument("--epochs", type=bounded(int, 1), default=None, help="base epochs")
    parser.add_argument("--skip-base", action="store_true", help="leave out the whisper-base rows")
    parser.add_argument("--work", default="runs/multitask", help="generated audio goes here")
    parser.add_argument("--out", type=results_folder, default=HERE / "results")
    parser.add_argument("--max-minutes", type=bounded(float, 0.0), default=45.0,
                        help="skip the remaining conditions that would not finish in time")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="keep the conditions already in the results file; run the others")
    parser.add_argument("--tag", default=None, help="results file suffix (default quick/full)")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"epochs": 4, "seeds": [0], "speakers_per_group": 3, "concat": (60, 40, 60)}
    else:
        defaults = {"epochs": 3, "seeds": [0, 1, 2], "speakers_per_group": 0,
                    "concat": (200, 100, 150)}
    args.epochs = args.epochs or defaults["epochs"]
    seeds = args.seeds or defaults["seeds"]
    args.speakers_per_group = defaults["speakers_per_group"]
    args.concat_train, args.concat_val, args.concat_test = defaults["concat"]
    names = args.only or (list(QUICK) if args.quick else list(CONDITIONS))
    if unknown := [n for n in names if n not in CONDITIONS]:
        parser.error(f"--only: no condition {', '.join(unknown)} (there are: "
                     f"{', '.join(CONDITIONS)})")
    if args.skip_base:
        names = [n for n in names if CONDITIONS[n].encoder != "whisper-base"]
        if not names:  # else the data load, then an empty results file
            parser.error("--skip-base leaves none of the --only conditions")
    tag = args.tag or ("quick" if args.quick else "full")
    earlier_path = args.out / f"results_{tag}.json"
    args.earlier = {}
    if earlier_path.is_file():  # said before the data load: a refusal costs nothing
        if not args.resume:
            parser.error(f"{earlier_path} holds earlier results, which this run would replace: "
                         "--continue adds the missing conditions to them, --tag NAME writes "
                         "another file (or remove it to start over)")
        args.earlier = json.loads(earlier_path.read_text())
        if args.earlier["seeds"] != seeds or args.earlier["base_epochs"] != args.epochs:
            raise SystemExit("--continue: the earlier results used other seeds or epochs")
    torch.set_num_threads(1)
    device = pick_device("auto")
    started = time.perf_counter()
    data = Data(args, device)
    data.concat_keys = {(CONDITIONS[n].encoder, CONDITIONS[n].k) for n in names
                        if CONDITIONS[n].multi}
    print("data", json.dumps(data.counts), flush=True)
    results: dict[str, list[dict]] = {}
    if args.earlier:
        if args.earlier["split"]["n"] != data.counts:  # --continue --tag X, --quick or not
            raise SystemExit("--continue: the earlier results used other data (--quick?)")
        results = dict(args.earlier["per_seed"])
        names = [n for n in names if n not in results]
        print("continuing after:", ", ".join(results), flush=True)
    skipped: list[str] = []
    unit = None  # seconds per seed of a relative cost of 1, from the first condition run
    for name in names:
        cond = CONDITIONS[name]
        spent = (time.perf_counter() - started) / 60
        if unit and spent + unit * relative_cost(cond) * len(seeds) / 60 > args.max_minutes:
            skipped.append(name)
            print(f"skipped (budget {args.max_minutes} min, {spent:.1f} spent): {name}", flush=True)
            continue
        t0 = time.perf_counter()
        for seed in seeds:
            row = run_one(name, data, args, seed) | {"seed": seed}
            results.setdefault(name, []).append(row)
            print(f"seed {seed} | {name} | {json.dumps(row)}", flush=True)
        unit = unit or (time.perf_counter() - t0) / len(seeds) / relative_cost(cond)
        write(args, data, results, skipped, seeds, started)
    write(args, data, results, skipped, seeds, started)


def write(args, data: Data, results: dict, skipped: list[str], seeds: list[int],
          started: float) -> None:
    """Write the results so far (after every condition: a cut run keeps what it measured)."""
    tag = args.tag or ("quick" if args.quick else "full")
    summary = {
        "mode": tag,
        "command": [*commands(args.earlier.get("command", [])),
                    " ".join(["python", "recipes/multitask/run.py", *sys.argv[1:]])],
        "base_epochs": args.epochs, "seeds": seeds, "data": str(DATA.name),
        "split": {"test_groups": TEST_GROUPS, "val_groups": VAL_GROUPS,
                  "groups": data.groups, "n": data.counts},
        "cache_seconds": args.earlier.get("cache_seconds", {}) | data.cache_seconds,
        "window": WINDOW,
        "total_seconds": args.earlier.get("total_seconds", 0) + time.perf_counter() - started,
        "skipped_for_time": skipped,
        "rows": {name: aggregate(rows) for name, rows in results.items()},
        "pairs": paired(results),
        "per_seed": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{tag}.json").write_text(json.dumps(summary, indent=2))
    (args.out / f"results_{tag}.md").write_text(table(summary))
    plot(summary, args.out / f"results_{tag}.png")


def commands(earlier: str | list[str]) -> list[str]:
    """The commands of the runs these results continue (one string in older files)."""
    return [earlier] if isinstance(earlier, str) else earlier


def aggregate(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r if k != "seed"})
    return {k: {"mean": float(np.mean([r[k] for r in rows if k in r])),
                "std": float(np.std([r[k] for r in rows if k in r])),
                "n": sum(k in r for r in rows)} for k in keys}


def paired(results: dict[str, list[dict]]) -> list[dict]:
    """Per-seed differences, the row with more tasks minus the one with fewer, on the same seed
    (EER: lower is better)."""
    out = []
    for multi, single, metric in PAIRS:
        if multi not in results or single not in results:
            continue
        a = {r["seed"]: r[metric] for r in results[multi] if r.get(metric) is not None}
        b = {r["seed"]: r[metric] for r in results[single] if r.get(metric) is not None}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diffs = [a[s] - b[s] for s in seeds]
        better = [d < 0 if "eer" in metric else d > 0 for d in diffs]
        out.append({"multi": multi, "single": single, "metric": metric, "seeds": seeds,
                    "diffs": diffs, "mean": float(np.mean(diffs)),
                    "multi_better": int(sum(better)),
                    "multi_worse": int(sum(d != 0 and not b for d, b in zip(diffs, better)))})
    return out


COLUMNS = [("command_accuracy", "command acc"), ("speaker_eer", "speaker EER (unseen)"),
           ("commands_f1", "multi-label F1 @0.5"), ("commands_f1_tuned", "multi-label F1 @tuned"),
           ("commands_threshold", "tuned threshold"),
           ("commands_mean_prob_present", "mean p(present)")]


def cell(m: dict, key: str) -> str:
    return f"{m[key]['mean']:.3f} ± {m[key]['std']:.3f}" if key in m else "—"


def table(summary: dict) -> str:
    n = summary["split"]["n"]
    title = (f"# Multi-task results ({summary['mode']}: seeds {summary['seeds']}, "
             f"{summary['base_epochs']} base epochs; mean ± std over seeds)")
    about = (f"Speech Commands, ten words. Train: {n['train_singles']} clips of "
             f"{n['train_speakers']} speakers (+ {n['train_concatenations']} concatenations for "
             f"multi-label runs); test: {n['test_clips']} clips of {n['test_speakers']} unseen "
             f"speakers + {n['test_concatenations']} concatenations of them; threshold chosen on "
             f"{n['val_concatenations']} concatenations of {n['val_speakers']} validation speakers.")
    lines = [title, "", about, "", "| run | " + " | ".join(c for _, c in COLUMNS) + " | epochs | train s |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for name, m in summary["rows"].items():
        lines.append(f"| {name} | " + " | ".join(cell(m, k) for k, _ in COLUMNS) +
                     f" | {m['epochs']['mean']:.0f} | {m['train_seconds']['mean']:.0f} |")
    lines += ["", "## Paired per-seed differences (more tasks minus fewer, same seed)", "",
              ("| more tasks | fewer tasks | metric | per-seed differences | mean | "
               "more tasks better / worse |"), "|---|---|---|---|---|---|"]
    for p in summary["pairs"]:
        diffs = ", ".join(f"{d:+.3f}" for d in p["diffs"])
        lines.append(f"| {p['multi']} | {p['single']} | {p['metric']} | {diffs} | "
                     f"{p['mean']:+.3f} | {p['multi_better']} / {p['multi_worse']} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = COLUMNS[:4]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 6))
    for ax, (key, title) in zip(axes, shown):
        names = [n for n, m in summary["rows"].items() if key in m]
        means = [summary["rows"][n][key]["mean"] for n in names]
        stds = [summary["rows"][n][key]["std"] for n in names]
        # mean ± std and each seed as a dot, on an axis zoomed to the values (no bars from 0)
        ax.errorbar(means, range(len(names)), xerr=stds, fmt="o", color="tab:blue", capsize=3)
        for i, n in enumerate(names):
            vals = [r[key] for r in summary["per_seed"][n] if r.get(key) is not None]
            ax.plot(vals, [i] * len(vals), "k.", ms=3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title + (" (lower is better)" if "eer" in key else ""), fontsize=9)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_script(main)
