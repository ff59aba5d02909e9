"""Speech Commands, twelve classes: the ten commands, "none of these" and "nothing", on new speakers.

Data: data/speech_commands (80 speakers; `yes no up down left right on off stop go`, every other
word -> ``_unknown_``, the ``_silence_/`` noise clips -> ``_silence_``). Systems:

- ``zero-shot``: Whisper tiny.en's decoder scores the label spellings (no training);
- ``frozen``: a linear probe on Whisper tiny.en's encoder (2-s window);
- ``combined``: the frozen probe times the zero-shot prior, p_head * p_zero^w (the default);
- ``top-k``: the top 2 encoder blocks tuned (capped: 10 shots and all data; with augmentation
  10 shots only, last in the queue);
- ``svm``: the best-value classic pipeline (MFCC statistics + RBF SVM).

Protocol: the 80 speakers are shuffled (seeded) into 10 groups of 8. Fold f tests on groups 2f
and 2f+1 (16 speakers, never used for any choice), calibrates on group 2f+2 (the validation
speakers) and trains on the other 7 groups (56 speakers). Training sets: 1, 3, 10 or 30 clips
per command in total (``vocab.shots``: from as many speakers as possible; unknown and silence
clips kept as given) or all clips. Each system's rejection threshold is calibrated on the
validation speakers' unknown and silence clips for at most 3% false accepts
(``openset.calibrate_threshold``). The zero-shot ``_unknown_`` level, ``_silence_`` offset and
temperature are fitted on all the validation speakers' clips (``fit_open_set``, 3 numbers); the
combined weight is chosen on them with all data (``decoder.combined.choose_weight``) and is 1 with
shots (a user with 10 clips has no spare ones to choose it on).
Augmentation (``augment.Augmenter``, K copies of every training clip: speed, shift, simulated
room, noise at 5-20 dB from the ``_silence_`` clips of the clip's own group plus synthetic
noise) touches training clips only, so no validation or test sound enters training.

Cost: every clip's encoder features are computed once per augmentation copy and shared by every
fold, point and system (``FeatureCache.subset``); the zero-shot scores and the MFCCs once per
clip. The frozen probe's cache keeps each clip's mean over frames: with mean pooling the head
(layer mix, mean, layer norm, linear) gives the same logits, at 1/50 of the memory and time.
A block (system x augmentation x fold) starts only if its estimated end is inside the budget.

    python recipes/speech_commands/run.py --quick   # fold 0, 3 and 10 shots, K=1 (< 5 min)
    python recipes/speech_commands/run.py           # 5 folds, every point (40-min budget)

Writes results/results{,_quick}.{json,md} and results/speech_commands{,_quick}.png.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from speechxfer.audio import batch_waves, batches_by_length
from speechxfer.augment import AugmentConfig, Augmenter
from speechxfer.classic import build_classic
from speechxfer.cli import add_measurement_options, bounded
from speechxfer.data import load_waves
from speechxfer.decoder.combined import choose_weight, combine_log_linear
from speechxfer.decoder.scoring import SILENCE_OFFSET, UNKNOWN_SCORE, ZeroShotRecognizer
from speechxfer.encoders import build_encoder
from speechxfer.jobs import write_results
from speechxfer.log import run_script
from speechxfer.model import PRIMARY_TASK, CommandClassifier
from speechxfer.openset import (
    DEFAULT_MAX_FALSE_ACCEPT,
    acceptance,
    calibrate_threshold,
    open_set_metrics,
)
from speechxfer.train import (
    FeatureCache,
    TrainConfig,
    default_epochs,
    fit,
    forward_cached,
    frozen_blocks,
)
from speechxfer.vocab import SILENCE, UNKNOWN, apply_commands, is_command, load_with_silence, shots

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "data" / "speech_commands"
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ENCODER, WINDOW = "whisper-tiny.en", "2s"
N_FOLDS = 5  # 2 groups of speakers per fold: 10 groups
CPU = torch.device("cpu")
BATCH_SIZE = 32
SYSTEMS = ("zero-shot", "frozen", "combined", "top-k", "svm")
RECALL = 0.95  # for the descriptive "unknown false accept at this command recall" figure


@dataclass(frozen=True)
class Plan:
    folds: tuple[int, ...]  # which of the N_FOLDS folds run
    points: tuple[int | None, ...]  # clips per command in total; None: all data
    copies: int  # K augmented copies per training clip
    topk_points: tuple[int | None, ...]
    topk_aug_points: tuple[int | None, ...]  # top-k on K augmented copies: the costliest runs
    topk_folds: tuple[int, ...]
    topk_min_epochs: int
    topk_min_steps: int
    max_minutes: float


FULL = Plan(folds=(0, 1, 2, 3, 4), points=(1, 3, 10, 30, None), copies=4,
            topk_points=(10, None), topk_aug_points=(10,), topk_folds=(0, 1, 2, 3, 4),
            topk_min_epochs=4,
            topk_min_steps=100, max_minutes=40)
QUICK = Plan(folds=(0,), points=(3, 10), copies=1, topk_points=(3,), topk_aug_points=(),
             topk_folds=(0,), topk_min_epochs=1, topk_min_steps=30, max_minutes=4.5)


def point_name(n: int | None) -> str:
    return "all" if n is None else str(n)


def speaker_groups(speakers: list[str], n_groups: int, seed: int) -> list[list[str]]:
    """Speakers shuffled by ``seed`` and cut into ``n_groups`` groups of (nearly) equal size."""
    order = sorted(speakers)
    random.Random(seed).shuffle(order)
    return [sorted(order[i::n_groups]) for i in range(n_groups)]


def fold_roles(fold: int, n_groups: int) -> dict[str, set[int]]:
    """Groups that test (2f, 2f+1), validate (2f+2) and train (the rest) in fold ``fold``."""
    test = {2 * fold % n_groups, (2 * fold + 1) % n_groups}
    val = {(2 * fold + 2) % n_groups}
    return {"test": test, "val": val, "train": set(range(n_groups)) - test - val}


def pooled(cache: FeatureCache) -> FeatureCache:
    """Each clip's hidden states averaged over its frames (one frame left).

    For a frozen encoder under a mean-pooled head this is exact: the layer mix is linear and the
    mean over frames commutes with it, so the head sees the same pooled vector.
    """
    part = cache.subset(list(range(len(cache.items))))
    part.items = [x.float().mean(1, keepdim=True).to(torch.float16) for x in cache.items]
    return part


def cached_probs(model: CommandClassifier, cache: FeatureCache, batch: int = 64) -> np.ndarray:
    """Primary-task probabilities of every clip in ``cache`` (only the trainable top runs)."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(cache.items), batch):
            idx = list(range(s, min(s + batch, len(cache.items))))
            out.append(torch.softmax(forward_cached(model, cache, idx, CPU)[PRIMARY_TASK].float(), -1))
    return torch.cat(out).numpy()


def unknown_fa_at_recall(labels: list[str], truth: list[str], probs: np.ndarray,
                         recall: float = RECALL) -> float | None:
    """Unknown-word false accepts at the highest threshold that keeps ``recall`` of the command
    clips accepted with the right label (``openset``'s rule); None when no threshold keeps so many.

    Descriptive only: this threshold is read off the test clips, so no system could deploy it.
    """
    best, p = acceptance(labels, probs)
    truth_a = np.array(truth)
    commands = np.array([is_command(t) for t in truth])
    right = commands & (np.array(labels)[best] == truth_a) & (p > 0)
    need = math.ceil(recall * commands.sum() - 1e-9)
    if need == 0 or right.sum() < need:
        return None
    threshold = np.sort(p[right])[::-1][need - 1]
    unknown = truth_a == UNKNOWN
    return float(np.mean(p[unknown] >= threshold)) if unknown.any() else None


def open_set(labels: list[str], val: tuple[list[str], np.ndarray],
             test: tuple[list[str], np.ndarray], max_false_accept: float) -> dict:
    """Threshold from the validation speakers, every figure on the test speakers."""
    threshold = calibrate_threshold(labels, val[0], val[1], max_false_accept)
    report = open_set_metrics(labels, test[0], test[1], threshold)
    truth, probs = test
    plain = [labels[i] for i in probs.argmax(1)]
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "accuracy_argmax": float(np.mean([a == b for a, b in zip(truth, plain)])),
            **report["open_set"], "threshold": threshold,
            "unknown_fa_at_r95": unknown_fa_at_recall(labels, truth, probs), "n_test": len(truth)}


class Runner:
    """Clips, waves and every shared cache; runs one block (system, augmentation, fold)."""

    def __init__(self, plan: Plan, seed: int, max_false_accept: float, log=print):
        self.plan, self.seed, self.max_fa, self.log = plan, seed, max_false_accept, log
        ds = apply_commands(load_with_silence(DATA), list(COMMANDS))
        self.waves, self.clips, skipped = load_waves(ds.clips, 16_000)
        if skipped:
            raise RuntimeError(f"unreadable clips in {DATA}: {skipped[:3]}")
        self.labels = sorted({c.label for c in self.clips})
        self.truth = [c.label for c in self.clips]
        speakers = sorted({c.speaker for c in self.clips if c.label != SILENCE})
        self.groups = speaker_groups(speakers, 2 * N_FOLDS, seed)
        group_of = {s: g for g, members in enumerate(self.groups) for s in members}
        self.group = [group_of[c.speaker] for c in self.clips]
        self.encoder = build_encoder(ENCODER, window=WINDOW)
        self.aug: dict[int, list[list[torch.Tensor]]] = {}  # group -> K lists of copies
        self.aug_index = {}  # clip -> position within its group's lists
        self.frozen = self.topk = None
        self.frozen_pos: dict[tuple[int, int], int] = {}
        self.topk_pos: dict[tuple[int, int], int] = {}
        self.zero: dict[int, np.ndarray] = {}  # clip -> decoder candidate scores
        self.zero_fit: dict[int, dict] = {}  # fold -> fitted open-set levels
        self._zero_system: ZeroShotRecognizer | None = None
        self.mfcc: dict[int, np.ndarray] = {}  # id(wave) -> MFCC matrix
        self.cost: dict[str, float] = defaultdict(float)  # seconds of each shared pass

    # ---- splits ------------------------------------------------------------------------
    def split(self, fold: int, n: int | None) -> tuple[list[int], list[int], list[int]]:
        roles = fold_roles(fold, len(self.groups))
        part = {r: [i for i in range(len(self.clips)) if self.group[i] in gs]
                for r, gs in roles.items()}
        train = part["train"]
        if n is not None:
            keep = {id(c) for c in shots([self.clips[i] for i in train], n, self.seed)}
            train = [i for i in train if id(self.clips[i]) in keep]
        return train, part["val"], part["test"]

    # ---- shared passes -----------------------------------------------------------------
    def wave(self, key: tuple[int, int]) -> torch.Tensor:
        copy, i = key
        if copy == 0:
            return self.waves[i]
        g = self.group[i]
        if g not in self.aug:
            started = time.perf_counter()
            members = [j for j in range(len(self.clips)) if self.group[j] == g]
            noises = [self.waves[j] for j in members if self.truth[j] == SILENCE]
            config = AugmentConfig(copies=self.plan.copies, seed=1000 * self.seed + g)
            self.aug[g] = Augmenter(config, noises).copies([self.waves[j] for j in members])
            self.aug_index.update({j: k for k, j in enumerate(members)})
            self.cost["augment"] += time.perf_counter() - started
        return self.aug[g][copy - 1][self.aug_index[i]]

    def features(self, kind: str, keys: list[tuple[int, int]]) -> FeatureCache:
        """The frozen (pooled) or top-k lower-layer cache of ``keys``, computing what is new."""
        pos = self.frozen_pos if kind == "frozen" else self.topk_pos
        new = [k for k in dict.fromkeys(keys) if k not in pos]
        if new:
            started = time.perf_counter()
            model = self.new_model(kind)
            n_frozen = frozen_blocks(model, TrainConfig(strategy=kind, k=2))
            for s in range(0, len(new), 256):
                chunk = new[s : s + 256]
                part = FeatureCache(model, [self.wave(k) for k in chunk], n_frozen, CPU,
                                    desc=f"caching {kind}")
                part = pooled(part) if kind == "frozen" else part
                cache = self.frozen if kind == "frozen" else self.topk
                if cache is None:
                    cache = part
                    if kind == "frozen":
                        self.frozen = part
                    else:
                        self.topk = part
                else:
                    cache.items += part.items
                    if cache.full is not None:
                        cache.full += part.full
                pos.update({k: len(pos) + j for j, k in enumerate(chunk)})
            self.cost[f"cache {kind}"] += time.perf_counter() - started
            self.log(f"  cached {len(new)} clips for {kind} "
                     f"({(time.perf_counter() - started) / len(new) * 1e3:.0f} ms/clip)")
        cache = self.frozen if kind == "frozen" else self.topk
        return cache.subset([pos[k] for k in keys])

    def zero_shot(self, fold: int, val: list[int], test: list[int]):
        """Zero-shot probabilities of the fold's validation and test clips, and the open-set
        levels fitted on the validation clips (``fit_open_set``: the ``_unknown_`` level, the
        ``_silence_`` offset and the temperature). The decoder runs once per clip: its
        candidate scores are kept and each fold only re-forms the label columns."""
        system = self.zero_system()
        new = [i for i in dict.fromkeys(val + test) if i not in self.zero]
        if new:
            started = time.perf_counter()
            with torch.no_grad():
                for pos in batches_by_length([self.waves[i] for i in new],
                                             system.options.batch_size):
                    idx = [new[p] for p in pos]
                    batch, lengths = batch_waves([self.waves[i] for i in idx])
                    cand = system.candidate_scores(*system.encode(batch, lengths)).numpy()
                    self.zero.update(zip(idx, cand))
            self.cost["zero-shot"] += time.perf_counter() - started
        if fold not in self.zero_fit:
            system.options = replace(system.options, unknown_score=UNKNOWN_SCORE,
                                     silence_offset=SILENCE_OFFSET, temperature=1.0)
            self.zero_fit[fold], _ = system.fit_open_set(self.zero_scores(val),
                                                         [self.truth[i] for i in val])
        fitted = self.zero_fit[fold]
        system.options = replace(system.options, unknown_score=fitted["unknown_score"],
                                 silence_offset=fitted["silence_offset"],
                                 temperature=fitted["temperature"])
        return (system.proba_from_scores(self.zero_scores(val)),
                system.proba_from_scores(self.zero_scores(test)), fitted)

    def zero_scores(self, idx: list[int]) -> np.ndarray:
        """Label scores of clips ``idx`` under the zero-shot system's current levels."""
        cand = torch.from_numpy(np.stack([self.zero[i] for i in idx]))
        with torch.no_grad():
            return self.zero_system().labels_from_candidates(cand).numpy()

    def zero_system(self) -> ZeroShotRecognizer:
        """The decoder scorer over the same twelve labels as the heads."""
        if self._zero_system is None:
            self._zero_system = ZeroShotRecognizer(self.labels, window=WINDOW)
        return self._zero_system

    def new_model(self, kind: str) -> CommandClassifier:
        encoder = self.encoder
        if kind == "top-k":  # its top blocks train: a fresh copy of the pretrained encoder
            encoder = build_encoder(ENCODER, window=WINDOW)
        return CommandClassifier(encoder, {"command": self.labels})

    def classic(self):
        """An SVM whose MFCCs come from a per-wave memo: each clip's features computed once."""
        system = build_classic("svm", seed=self.seed)
        compute = system.features

        def features(waves):
            new = [w for w in waves if id(w) not in self.mfcc]
            if new:
                started = time.perf_counter()
                self.mfcc.update(zip(map(id, new), compute(new)))
                self.cost["mfcc"] += time.perf_counter() - started
            return [self.mfcc[id(w)] for w in waves]

        system.features = features
        return system

    # ---- one block -----------------------------------------------------------------------
    def run_block(self, kind: str, aug: bool, fold: int) -> list[dict]:
        points = self.plan.points
        if kind == "top-k":
            points = self.plan.topk_aug_points if aug else self.plan.topk_points
        rows = []
        for n in points:
            train, val, test = self.split(fold, n)
            copies = range(self.plan.copies + 1) if aug else range(1)
            keys = [(c, i) for c in copies for i in train]
            truth_val = [self.truth[i] for i in val]
            truth_test = [self.truth[i] for i in test]
            base = {"fold": fold, "point": point_name(n), "augment": aug,
                    "n_train": len(keys), "n_commands": sum(is_command(self.truth[i]) for i in train)}
            if kind == "svm":
                started = time.perf_counter()
                system = self.classic().fit([self.wave(k) for k in keys],
                                            [self.truth[i] for _, i in keys])
                train_s = time.perf_counter() - started
                cols = [system.labels.index(lab) for lab in self.labels]
                pv = system.predict_proba([self.waves[i] for i in val])[:, cols]
                pt = system.predict_proba([self.waves[i] for i in test])[:, cols]
                rows.append({"system": "svm", **base, "train_s": train_s,
                             **open_set(self.labels, (truth_val, pv), (truth_test, pt), self.max_fa)})
                continue
            neural = self.features(kind, keys)
            held = {"val": self.features(kind, [(0, i) for i in val]),
                    "test": self.features(kind, [(0, i) for i in test])}
            config = TrainConfig(strategy=kind, k=2, batch_size=BATCH_SIZE, seed=self.seed,
                                 epochs=self.epochs(kind, len(keys)))
            torch.manual_seed(self.seed)
            model = self.new_model(kind)
            started = time.perf_counter()
            fit(model, [self.wave(k) for k in keys], [self.clips[i].labels for _, i in keys],
                [], [], config, train_cache=neural)
            train_s = time.perf_counter() - started
            pv, pt = cached_probs(model, held["val"]), cached_probs(model, held["test"])
            rows.append({"system": kind, **base, "train_s": train_s, "epochs": config.epochs,
                         **open_set(self.labels, (truth_val, pv), (truth_test, pt), self.max_fa)})
            if kind != "frozen":
                continue
            zv, zt, fitted = self.zero_shot(fold, val, test)
            if not aug and n == self.plan.points[0]:  # no training: one row per fold
                rows.append({"system": "zero-shot", **base, "point": "none", "augment": False,
                             "n_train": 0, "n_commands": 0, "train_s": 0.0,
                             "open_set_fit": {k: v for k, v in fitted.items() if k != "n"},
                             **open_set(self.labels, (truth_val, zv), (truth_test, zt),
                                        self.max_fa)})
            weight = 1.0
            if n is None:
                target = np.array([self.labels.index(t) for t in truth_val])
                weight, _ = choose_weight(pv, zv, target)
            cv, ct = combine_log_linear(pv, zv, weight), combine_log_linear(pt, zt, weight)
            rows.append({"system": "combined", **base, "train_s": train_s, "weight": weight,
                         **open_set(self.labels, (truth_val, cv), (truth_test, ct), self.max_fa)})
        return rows

    def epochs(self, kind: str, n_train: int) -> int:
        if kind == "frozen":
            return default_epochs("frozen")
        steps = math.ceil(n_train / BATCH_SIZE)
        return max(self.plan.topk_min_epochs, math.ceil(self.plan.topk_min_steps / steps))


def blocks(plan: Plan) -> list[tuple[str, bool, int]]:
    """(system, augment, fold) in priority order: plain first, then augmented, then top-k."""
    out = [(kind, False, f) for f in plan.folds for kind in ("frozen", "svm")]
    out += [(kind, True, f) for f in plan.folds for kind in ("frozen", "svm")]
    out += [("top-k", False, f) for f in plan.topk_folds]
    if plan.topk_aug_points:
        out += [("top-k", True, f) for f in plan.topk_folds]
    return out


METRICS = ("accuracy", "accuracy_argmax", "macro_f1", "command_recall", "unknown_false_accept",
           "silence_false_accept", "unknown_fa_at_r95", "threshold", "train_s")


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and std over folds per (system, augment, point)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["system"], r["augment"], r["point"])].append(r)
    def key(item: tuple) -> tuple:
        system, aug, point = item[0]
        rank = {"none": -1, "all": 10**6}.get(point)
        return SYSTEMS.index(system), aug, int(point) if rank is None else rank

    rows = []
    for (system, aug, point), rs in sorted(groups.items(), key=key):
        row = {"system": system, "augment": aug, "point": point, "folds": len(rs),
               "n_train": float(np.mean([r["n_train"] for r in rs]))}
        for m in METRICS:  # a figure some fold lacks (recall 0.95 out of reach) is left out
            vals = [r.get(m) for r in rs]
            whole = all(v is not None for v in vals)
            row[m] = float(np.mean(vals)) if whole else None
            row[f"{m}_std"] = float(np.std(vals)) if whole else None
        if "weight" in rs[0]:
            row["weights"] = [r["weight"] for r in rs]
        rows.append(row)
    return rows


def _cell(row: dict | None, metric: str, spread: bool = True) -> str:
    if row is None or row[metric] is None:
        return "–"
    text = f"{row[metric]:.3f}"
    return text + (f" ± {row[metric + '_std']:.3f}" if spread else "")


def row_name(system: str, aug: bool) -> str:
    return f"{system} + aug" if aug else system


def markdown(rows: list[dict], meta: dict) -> str:
    points = [p for p in ("1", "3", "10", "30", "all") if any(r["point"] == p for r in rows)]
    cell = {(r["system"], r["augment"], r["point"]): r for r in rows}
    lines_of = sorted({(r["system"], r["augment"]) for r in rows},
                      key=lambda sa: (SYSTEMS.index(sa[0]), sa[1]))
    names = {"1": "1 shot", "all": "all data"}
    head = "| system | " + " | ".join(names.get(p, f"{p} shots") for p in points) + " |"
    rule = "|---" * (len(points) + 1) + "|"
    out = [f"# Speech Commands, 12 classes ({meta['run']} run)", "",
           (f"`{meta['command']}`; wall time {meta['wall_minutes']:.1f} min; folds run: "
           f"{meta['folds_run']} (16 test speakers each); threshold for at most "
           f"{meta['max_false_accept']:.0%} false accepts on the validation speakers."), "",
           "## 12-class accuracy (after rejection at the calibrated threshold)", "",
           ("Mean ± std over folds. zero-shot needs no training clips: the same figure in every "
           "column."), "", head, rule]
    for system, aug in lines_of:
        vals = [_cell(cell.get((system, aug, "none" if system == "zero-shot" else p)),
                      "accuracy") for p in points]
        out.append(f"| {row_name(system, aug)} | " + " | ".join(vals) + " |")
    out += ["", "## Open set: command recall / unknown false accept / silence false accept", "",
            "At the threshold calibrated on the validation speakers (means over folds).", "",
            head, rule]
    for system, aug in lines_of:
        vals = []
        for p in points:
            r = cell.get((system, aug, "none" if system == "zero-shot" else p))
            vals.append("–" if r is None else " / ".join(
                _cell(r, m, False) for m in ("command_recall", "unknown_false_accept",
                                             "silence_false_accept")))
        out.append(f"| {row_name(system, aug)} | " + " | ".join(vals) + " |")
    out += ["", "## Every figure", "",
            ("| system | point | folds | train clips | accuracy | argmax acc | macro-F1 | "
            "cmd recall | unknown FA | silence FA | unknown FA @ recall 0.95 (test-read) | "
            "threshold | train s |"), "|---" * 13 + "|"]
    for r in rows:
        out.append(
            f"| {row_name(r['system'], r['augment'])} | {r['point']} | {r['folds']} | "
            f"{r['n_train']:.0f} | {_cell(r, 'accuracy')} | {_cell(r, 'accuracy_argmax')} | "
            f"{_cell(r, 'macro_f1', False)} | {_cell(r, 'command_recall')} | "
            f"{_cell(r, 'unknown_false_accept')} | {_cell(r, 'silence_false_accept')} | "
            f"{_cell(r, 'unknown_fa_at_r95')} | {_cell(r, 'threshold', False)} | "
            f"{_cell(r, 'train_s', False)} |")
    out += ["", ("Unknown FA @ recall 0.95 is read at the threshold where the test clips' command "
            "recall is 0.95 (no system could set it so): how well the scores separate; \"–\" where "
            "some fold never reaches that recall.")]
    if meta["skipped_blocks"]:
        out += ["", f"Not run (budget): {', '.join(meta['skipped_blocks'])}"]
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path, max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT) -> None:
    """Accuracy (all systems, then the top band), command recall and unknown false accepts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = ["1", "3", "10", "30", "all"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = (("accuracy", "12-class accuracy (after rejection)", (0, 1)),
              ("accuracy", "the same, top band (svm off the scale)", (0.85, 1.0)),
              ("command_recall", "command recall at the calibrated threshold", (0, 1.0)),
              ("unknown_false_accept", "unknown-word false accepts at that threshold", None))
    colours = dict(zip(SYSTEMS, ("tab:gray", "tab:blue", "tab:red", "tab:green", "tab:orange")))
    lines = [(system, aug) for system in SYSTEMS for aug in (False, True)]
    for ax, (metric, title, ylim) in zip(axes.flat, panels):
        for k, (system, aug) in enumerate(lines):
            rs = [r for r in rows if r["system"] == system and r["augment"] == aug
                  and r[metric] is not None]
            if not rs:
                continue
            if system == "zero-shot":
                ax.axhline(rs[0][metric], color=colours[system], linestyle=":",
                           label="zero-shot (no training)")
                continue
            xs = [ticks.index(r["point"]) + 0.03 * (k - len(lines) / 2) for r in rs]
            ax.errorbar(xs, [r[metric] for r in rs], yerr=[r[f"{metric}_std"] for r in rs],
                        color=colours[system], linestyle="--" if aug else "-", marker="o",
                        markersize=4, capsize=2, label=row_name(system, aug))
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_xlabel("training clips per command (all: every clip of the 56 training speakers)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
    fa = axes.flat[3]
    fa.axhline(max_false_accept, color="black", linewidth=0.8,
               label=f"calibration target ({max_false_accept:.0%}, validation speakers)")
    fa.set_ylim(0, max(0.3, fa.get_ylim()[1]))
    fa.legend(fontsize=7, loc="upper left")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Speech Commands, 12 classes, speaker-held-out folds (mean ± std over folds; "
                 "dashed: augmented training)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def output_files(suffix: str, out: Path) -> list[Path]:
    """The files ``write_outputs`` writes for ``suffix``."""
    return [out / f"results{suffix}.json", out / f"results{suffix}.md",
            out / f"speech_commands{suffix}.png"]


def write_outputs(runs: list[dict], meta: dict, suffix: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs)
    (out / f"results{suffix}.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "runs": runs}, indent=2))
    (out / f"results{suffix}.md").write_text(markdown(rows, meta))
    if rows:
        plot(rows, out / f"speech_commands{suffix}.png", meta["max_false_accept"])


def results_suffix(args: argparse.Namespace) -> str:
    """``_quick``, then the seed and false-accept bar when not the defaults: a run with other
    options never writes over another's results."""
    return (("_quick" if args.quick else "") + (f"_seed{args.seed}" if args.seed else "")
            + ("" if args.max_false_accept == DEFAULT_MAX_FALSE_ACCEPT
               else f"_fa{args.max_false_accept:g}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fold 0, 3 and 10 shots, K=1")
    parser.add_argument("--max-minutes", type=bounded(float, 0.0),
                        help="budget (default: 40 full, 4.5 quick)")
    add_measurement_options(parser, HERE / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    budget = 60 * (plan.max_minutes if args.max_minutes is None else args.max_minutes)
    suffix = results_suffix(args)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {text}", flush=True)

    runner = Runner(plan, args.seed, args.max_false_accept, log)
    command = " ".join(["python recipes/speech_commands/run.py",
                        *(sys.argv[1:] if argv is None else argv)])
    meta = {"run": "quick" if args.quick else "full", "command": command, "plan": asdict(plan),
            "seed": args.seed, "max_false_accept": args.max_false_accept,
            "encoder": ENCODER, "window": WINDOW, "threads": args.threads,
            "speaker_groups": runner.groups, "folds_run": [], "skipped_blocks": [],
            "costs_s": {}, "wall_minutes": 0.0}
    runs: list[dict] = []
    block_cost: dict[tuple[str, bool], float] = {}
    for kind, aug, fold in blocks(plan):
        name = f"{row_name(kind, aug)} fold {fold}"
        if time.perf_counter() - started + block_cost.get((kind, aug), 0.0) > budget:
            meta["skipped_blocks"].append(name)
            log(f"skip {name} (budget)")
            continue
        block_start = time.perf_counter()
        for r in runner.run_block(kind, aug, fold):
            runs.append(r)
            log(f"{row_name(r['system'], aug):15s} fold {fold} {r['point']:>4s}: "
                f"acc {r['accuracy']:.3f} recall {r['command_recall']:.3f} "
                f"unkFA {r['unknown_false_accept']:.3f} silFA {r['silence_false_accept']:.3f}")
        block_cost[(kind, aug)] = time.perf_counter() - block_start
        meta["folds_run"] = sorted({r["fold"] for r in runs})
        meta["costs_s"] = dict(runner.cost)
        meta["wall_minutes"] = (time.perf_counter() - started) / 60
        write_results(lambda s: write_outputs(runs, meta, s, args.out),
                      lambda s: output_files(s, args.out), suffix, finished=False)
    if not runs:
        raise SystemExit(f"no block ran within --max-minutes {budget / 60:g}; nothing written")
    meta["wall_minutes"] = (time.perf_counter() - started) / 60
    write_results(lambda s: write_outputs(runs, meta, s, args.out),
                  lambda s: output_files(s, args.out), suffix, finished=True)
    print(markdown(summarise(runs), meta))


if __name__ == "__main__":
    run_script(main)
