"""What each augmentation buys on speakers never heard: the digits and Speech Commands.

Conditions, each with K augmented copies of every training clip (``augment.Augmenter``, seeded;
validation and test clips are never augmented):

- ``none``: the clean clips only (``none-seed1``: the same, another training seed: how much a
  figure moves with nothing changed);
- ``noise``, ``reverb``, ``speed``, ``shift``: that augmentation alone, on every copy;
- ``specaugment``: clean copies whose log-mel features are masked before the frozen encoder
  reads them (``train.masked_features``: the cache holds K masked copies);
- ``all``: the library's chain at its probabilities (``AugmentConfig``: noise 0.8, reverb 0.3,
  speed 0.5, shift 0.5) plus the masks.

Tasks (Whisper tiny.en, 2-s window, frozen probe trained by ``train.fit`` on a ``FeatureCache``):

- ``digits``: data/fsdd, leave one speaker out (4 folds), ``--digits-per-class`` clips per digit
  per training speaker (as ``train --per-class``: no validation clips), 25 clips per digit of
  the held-out speaker tested (the zero-shot prior costs 150 ms a clip here); the frozen probe
  and the combined default (probe x zero-shot prior, weight 1 as ``train --per-class`` uses). Noise: synthetic white/pink/brown (FSDD has no noise
  clips; what ``train --augment`` uses there).
- ``speech_commands``: fold 0 of recipes/speech_commands (56 training speakers, 8 validation
  speakers calibrate the rejection threshold, 16 test speakers), all data, the frozen probe;
  noise from the training speakers' ``_silence_`` clips plus synthetic noise, as ``train
  --augment --commands`` draws it.

"Beyond noise": each condition's test clips are paired with ``none``'s, and the clips one gets
right and the other wrong are counted (an exact two-sided sign test, McNemar's); a difference
within ``none`` vs ``none-seed1`` is noise too. The frozen cache keeps each clip's mean over
frames (exact for a mean-pooled head, see recipes/speech_commands).

    python recipes/augmentation/run.py --quick   # 5 clips/digit/speaker, 10 shots, K=1: < 5 min
    python recipes/augmentation/run.py           # the README table (about 25 min on 2 busy cores)

Writes results/results{,_quick}.{json,md}, named also by every non-default option
(``results_stem``: tasks, copies, seed, false-accept bar, budget).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from speechxfer.augment import AugmentConfig, Augmenter
from speechxfer.cli import add_measurement_options, bounded
from speechxfer.data import load_dataset, load_waves, per_class
from speechxfer.decoder.combined import combine_log_linear
from speechxfer.decoder.scoring import ZeroShotRecognizer
from speechxfer.encoders import build_encoder
from speechxfer.jobs import bundled
from speechxfer.log import run_script
from speechxfer.model import CommandClassifier
from speechxfer.openset import DEFAULT_MAX_FALSE_ACCEPT, decide
from speechxfer.train import FeatureCache, TrainConfig, default_epochs, fit, masked_features
from speechxfer.vocab import SILENCE, apply_commands, load_with_silence, shots

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("speech_commands_recipe",
                                               HERE.parent / "speech_commands" / "run.py")
sc = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)  # the Speech Commands protocol: folds, pooled cache, open-set scoring

CPU = torch.device("cpu")
ENCODER, WINDOW = "whisper-tiny.en", "2s"
CHUNK = 256  # clips cached per pass before pooling (unpooled states are 400 kB a clip)
ALONE = {"noise_prob": 0.0, "reverb_prob": 0.0, "speed_prob": 0.0, "shift_prob": 0.0}
CONDITIONS: dict[str, dict] = {  # in the order they run (a budget cut drops the last)
    "none": {},
    "none-seed1": {},
    "all": {"specaugment": True},
    "speed": {**ALONE, "speed_prob": 1.0},
    "noise": {**ALONE, "noise_prob": 1.0},
    "specaugment": {**ALONE, "specaugment": True},
    "reverb": {**ALONE, "reverb_prob": 1.0},
    "shift": {**ALONE, "shift_prob": 1.0},
}


@dataclass(frozen=True)
class Plan:
    copies: int
    digits_per_class: int
    digits_test_per_class: int | None  # test clips per digit per held-out speaker; None: all
    sc_shots: int | None  # Speech Commands clips per command; None: all data
    conditions: tuple[str, ...]
    sc_conditions: tuple[str, ...]
    max_minutes: float


FULL = Plan(copies=2, digits_per_class=15, digits_test_per_class=25, sc_shots=None,
            conditions=tuple(CONDITIONS), sc_conditions=tuple(CONDITIONS), max_minutes=28)
QUICK = Plan(copies=1, digits_per_class=5, digits_test_per_class=10, sc_shots=10,
             conditions=("none", "none-seed1", "speed", "specaugment", "all"),
             sc_conditions=("none", "all"), max_minutes=4.5)


class Features:
    """Pooled frozen-encoder features of clean clips and of each condition's copies."""

    def __init__(self, labels: list[str], log):
        self.model = CommandClassifier(build_encoder(ENCODER, window=WINDOW), {"command": labels})
        self.n_frozen = self.model.encoder.num_layers
        self.log = log
        self.seconds = 0.0

    def cache(self, waves: list[torch.Tensor], augmenter: Augmenter | None = None) -> FeatureCache:
        started = time.perf_counter()
        parts = []
        with masked_features(self.model.encoder, augmenter):
            for s in range(0, len(waves), CHUNK):
                parts.append(sc.pooled(FeatureCache(self.model, waves[s : s + CHUNK],
                                                    self.n_frozen, CPU)))
        out = parts[0]
        for part in parts[1:]:
            out = out.joined(part)
        self.seconds += time.perf_counter() - started
        self.log(f"    cached {len(waves)} clips "
                 f"({(time.perf_counter() - started) / max(len(waves), 1) * 1e3:.0f} ms/clip)")
        return out


def augmenter(name: str, copies: int, seed: int, noises: list[torch.Tensor]) -> Augmenter | None:
    if name.startswith("none"):
        return None
    return Augmenter(AugmentConfig(copies=copies, seed=seed, **CONDITIONS[name]), noises)


def train_probe(feats: Features, labels: list[str], cache: FeatureCache, truth: list[dict],
                seed: int) -> CommandClassifier:
    """The frozen probe as ``train --strategy frozen`` trains it, on cached features (the
    encoder is shared: it never trains)."""
    config = TrainConfig(strategy="frozen", epochs=default_epochs("frozen"), seed=seed)
    torch.manual_seed(seed)
    model = CommandClassifier(feats.model.encoder, {"command": labels})
    fit(model, [torch.zeros(1)] * len(truth), truth, [], [], config, train_cache=cache)
    return model


def sign_test(right: np.ndarray, base: np.ndarray) -> dict:
    """Clips only this condition gets right (``gained``), only ``none`` gets right (``lost``),
    and the exact two-sided sign-test p of that split."""
    gained, lost = int(np.sum(right & ~base)), int(np.sum(~right & base))
    p = binomtest(gained, gained + lost).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": float(p)}


class Study:
    def __init__(self, plan: Plan, seed: int, max_false_accept: float, log=print):
        self.plan, self.seed, self.max_fa, self.log = plan, seed, max_false_accept, log
        self.started = time.perf_counter()
        self.skipped: list[str] = []

    def minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60

    def within_budget(self, what: str, estimate_min: float) -> bool:
        if self.minutes() + estimate_min > self.plan.max_minutes:
            self.skipped.append(what)
            self.log(f"  skipped {what}: {self.minutes():.1f} + {estimate_min:.1f} min "
                     f"is past the {self.plan.max_minutes} min budget")
            return False
        return True

    def condition(self, name: str, feats: Features, clean: FeatureCache,
                  train_waves: list[torch.Tensor], noises: list[torch.Tensor]
                  ) -> tuple[FeatureCache, int, int]:
        """A condition's training cache (the clean clips, then its K augmented copies in the
        same order), how many times each training clip appears in it, and its training seed."""
        seed = self.seed + (1 if name == "none-seed1" else 0)
        aug = augmenter(name, self.plan.copies, self.seed, noises)
        if aug is None:
            return clean, 1, seed
        copies = aug.copies(train_waves)
        return clean.joined(feats.cache([w for copy in copies for w in copy], aug)), \
            1 + len(copies), seed

    # ---- digits ----------------------------------------------------------------------------
    def digits(self, out: dict) -> Iterator[None]:
        """Fills ``out``; yields after the shared passes and after each condition, so the two
        tasks take turns and a budget cut drops the least important conditions of both."""
        plan = self.plan
        ds = load_dataset(bundled("fsdd"))
        waves, clips, _ = load_waves(ds.clips, 16_000)
        index = {c.path: i for i, c in enumerate(clips)}
        pool = [index[c.path] for c in per_class(clips, plan.digits_per_class, self.seed)]
        test_pool = (list(range(len(clips))) if plan.digits_test_per_class is None else
                     [index[c.path] for c in per_class(clips, plan.digits_test_per_class,
                                                       self.seed + 1)])
        speakers = sorted({c.speaker for c in clips})
        labels = ds.labels
        feats = Features(labels, self.log)
        self.log(f"digits: {len(pool)} training-eligible clips, {len(test_pool)} test clips")
        both = sorted(set(pool) | set(test_pool))  # one encoder pass per clip
        where = {i: k for k, i in enumerate(both)}
        cached = feats.cache([waves[i] for i in both])
        clean = cached.subset([where[i] for i in pool])
        test_cache = cached.subset([where[i] for i in test_pool])
        started = time.perf_counter()
        zero = ZeroShotRecognizer(labels, window=WINDOW).predict_proba([waves[i] for i in test_pool])
        zero_s = time.perf_counter() - started
        self.log(f"    zero-shot prior for {len(test_pool)} clips: {zero_s:.0f} s")
        per_copy_min = feats.seconds / 60 / len(both)
        rows, right = [], {}
        out.update(rows=rows, sign_tests={}, speakers=speakers, n_pool=len(pool),
                   n_test=len(test_pool), zero_shot_seconds=zero_s)
        yield
        for name in plan.conditions:
            cost = per_copy_min * len(pool) * (0 if name.startswith("none") else plan.copies)
            if not self.within_budget(f"digits/{name}", cost):
                continue
            started = time.perf_counter()
            cache, reps, seed = self.condition(name, feats, clean, [waves[i] for i in pool], [])
            for fold, speaker in enumerate(speakers):
                train = [j for j, i in enumerate(pool) if clips[i].speaker != speaker]
                idx = [r * len(pool) + j for r in range(reps) for j in train]
                model = train_probe(feats, labels, cache.subset(idx),
                                    [clips[pool[j]].labels for j in idx_mod(idx, len(pool))], seed)
                test = [j for j, i in enumerate(test_pool) if clips[i].speaker == speaker]
                head = sc.cached_probs(model, test_cache.subset(test))
                truth = np.array([labels.index(clips[test_pool[j]].label) for j in test])
                for system, probs in (("frozen", head),
                                      ("combined", combine_log_linear(head, zero[test], 1.0))):
                    ok = probs.argmax(1) == truth
                    right[(name, system, speaker)] = ok
                    rows.append({"condition": name, "system": system, "speaker": speaker,
                                 "n_train": len(idx), "n_test": len(test),
                                 "accuracy": float(ok.mean())})
            self.log(f"  digits/{name}: " + ", ".join(
                f"{r['system']} {r['speaker']} {r['accuracy']:.3f}" for r in rows
                if r["condition"] == name) + f" ({time.perf_counter() - started:.0f} s)")
            for system in ("frozen", "combined"):
                if name != "none":
                    base = np.concatenate([right[("none", system, s)] for s in speakers])
                    mine = np.concatenate([right[(name, system, s)] for s in speakers])
                    out["sign_tests"][f"{name}/{system}"] = sign_test(mine, base)
            out["cache_seconds"] = feats.seconds
            yield

    # ---- Speech Commands -----------------------------------------------------------------------
    def speech_commands(self, out: dict) -> Iterator[None]:
        """Fills ``out``, yielding as ``digits`` does."""
        plan = self.plan
        ds = apply_commands(load_with_silence(sc.DATA), list(sc.COMMANDS))
        waves, clips, _ = load_waves(ds.clips, 16_000)
        labels = sorted({c.label for c in clips})
        truth = [c.label for c in clips]
        speakers = sorted({c.speaker for c in clips if c.label != SILENCE})
        groups = sc.speaker_groups(speakers, 2 * sc.N_FOLDS, self.seed)
        group_of = {s: g for g, members in enumerate(groups) for s in members}
        roles = sc.fold_roles(0, len(groups))
        part = {r: [i for i, c in enumerate(clips) if group_of[c.speaker] in gs]
                for r, gs in roles.items()}
        train = part["train"]
        if plan.sc_shots is not None:
            keep = {id(c) for c in shots([clips[i] for i in train], plan.sc_shots, self.seed)}
            train = [i for i in train if id(clips[i]) in keep]
        noises = [waves[i] for i in train if truth[i] == SILENCE]
        feats = Features(labels, self.log)
        self.log(f"speech_commands fold 0: {len(train)} training clips, {len(part['val'])} "
                 f"validation, {len(part['test'])} test")
        clean = feats.cache([waves[i] for i in train])
        val_cache, test_cache = (feats.cache([waves[i] for i in part[r]]) for r in ("val", "test"))
        per_copy_min = feats.seconds / 60 / (len(train) + len(part["val"]) + len(part["test"]))
        rows, right = [], {}
        tv, tt = [truth[i] for i in part["val"]], [truth[i] for i in part["test"]]
        out.update(rows=rows, sign_tests={}, n_train=len(train), n_test=len(part["test"]))
        yield
        for name in plan.sc_conditions:
            cost = per_copy_min * len(train) * (0 if name.startswith("none") else plan.copies)
            if not self.within_budget(f"speech_commands/{name}", cost):
                continue
            started = time.perf_counter()
            cache, reps, seed = self.condition(name, feats, clean, [waves[i] for i in train],
                                               noises)
            model = train_probe(feats, labels, cache, [clips[i].labels for i in train] * reps, seed)
            pv, pt = sc.cached_probs(model, val_cache), sc.cached_probs(model, test_cache)
            report = sc.open_set(labels, (tv, pv), (tt, pt), self.max_fa)
            decided = decide(labels, pt, report["threshold"])
            right[name] = np.array([d == t for d, t in zip(decided, tt)])
            rows.append({"condition": name, "n_train": len(train) * reps, **report})
            self.log(f"  speech_commands/{name}: accuracy {report['accuracy']:.3f} "
                     f"(argmax {report['accuracy_argmax']:.3f}), unknown FA "
                     f"{report['unknown_false_accept']:.3f} ({time.perf_counter() - started:.0f} s)")
            if name != "none":
                out["sign_tests"][name] = sign_test(right[name], right["none"])
            out["cache_seconds"] = feats.seconds
            yield


def idx_mod(idx: list[int], n: int) -> list[int]:
    """Positions in the clean pool of the cache rows ``idx`` (copies follow the clean clips)."""
    return [i % n for i in idx]


def markdown(result: dict) -> str:
    out = [f"# Augmentation, one at a time (`{result['command']}`)", "",
           (f"{result['minutes']:.1f} minutes; K = {result['plan']['copies']} augmented copies "
           "per training clip. p: exact sign test of the clips the condition changes against "
           "`none` (gained / lost)."), ""]
    if "digits" in result:
        d = result["digits"]
        speakers = d["speakers"]
        out += [(f"## Digits: leave one speaker out, {result['plan']['digits_per_class']} clips "
                f"per digit per training speaker, {d['n_test']} test clips"), "",
                "| condition | system | " + " | ".join(speakers) + " | mean | gained / lost | p |",
                "|---|---|" + "---|" * (len(speakers) + 3)]
        for name in result["plan"]["conditions"]:
            for system in ("frozen", "combined"):
                accs = {r["speaker"]: r["accuracy"] for r in d["rows"]
                        if r["condition"] == name and r["system"] == system}
                if not accs:
                    continue
                t = d["sign_tests"].get(f"{name}/{system}")
                test = f"{t['gained']} / {t['lost']} | {t['p']:.2g}" if t else "– | –"
                out.append(f"| {name} | {system} | "
                           + " | ".join(f"{accs[s]:.3f}" for s in speakers)
                           + f" | {np.mean(list(accs.values())):.4f} | {test} |")
        out.append("")
    if "speech_commands" in result:
        s = result["speech_commands"]
        out += [(f"## Speech Commands fold 0: frozen probe, {s['n_train']} training clips, "
                f"{s['n_test']} test clips (16 speakers)"), "",
                ("| condition | 12-class accuracy | argmax accuracy | command recall | unknown FA "
                "| silence FA | gained / lost | p |"), "|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            t = s["sign_tests"].get(r["condition"])
            test = f"{t['gained']} / {t['lost']} | {t['p']:.2g}" if t else "– | –"
            out.append(f"| {r['condition']} | {r['accuracy']:.3f} | {r['accuracy_argmax']:.3f} | "
                       f"{r['command_recall']:.3f} | {r['unknown_false_accept']:.3f} | "
                       f"{r['silence_false_accept']:.3f} | {test} |")
        out.append("")
    if result["skipped"]:
        out += ["Skipped (budget): " + ", ".join(result["skipped"]), ""]
    return "\n".join(out)


def results_stem(args: argparse.Namespace, tasks: list[str]) -> str:
    """``results[_quick]``, then the tasks when not both and every option that changes a figure
    away from its default: a run with other options never writes over another's results (a
    budget other than the plan's may cut conditions the default run has)."""
    stem = "results_quick" if args.quick else "results"
    if set(tasks) != {"digits", "speech_commands"}:
        stem += "_" + "_".join(tasks)
    default_budget = (QUICK if args.quick else FULL).max_minutes
    return (stem + (f"_copies{args.copies}" if args.copies is not None else "")
            + (f"_seed{args.seed}" if args.seed else "")
            + ("" if args.max_false_accept == DEFAULT_MAX_FALSE_ACCEPT
               else f"_fa{args.max_false_accept:g}")
            + ("" if args.max_minutes in (None, default_budget)
               else f"_budget{args.max_minutes:g}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="5 clips/digit/speaker, 10 test clips/digit, SC 10 shots, K=1")
    parser.add_argument("--tasks", default="digits,speech_commands")
    parser.add_argument("--copies", type=bounded(int, 1),
                        help="K augmented copies (default 2; quick 1)")
    parser.add_argument("--max-minutes", type=bounded(float, 0.0),
                        help="budget (default 28; quick 4.5); another is named in the results")
    add_measurement_options(parser, HERE / "results")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    if unknown := set(tasks) - {"digits", "speech_commands"}:  # not an empty results file
        parser.error(f"--tasks: no task {', '.join(sorted(unknown))} (there are: digits, "
                     "speech_commands)")
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    if args.copies is not None:
        plan = replace(plan, copies=args.copies)
    if args.max_minutes is not None:
        plan = replace(plan, max_minutes=args.max_minutes)
    study = Study(plan, args.seed, args.max_false_accept, log=lambda m: print(m, flush=True))
    result: dict = {"plan": {**plan.__dict__}, "seed": args.seed}
    turns = []
    for task in ("digits", "speech_commands"):
        if task in tasks:
            result[task] = {}
            turns.append(getattr(study, task)(result[task]))
    while turns:  # the tasks take turns, one condition each
        for turn in list(turns):
            if next(turn, StopIteration) is StopIteration:
                turns.remove(turn)
    result.update(minutes=study.minutes(), skipped=study.skipped,
                  command=" ".join(["python recipes/augmentation/run.py", *(argv or sys.argv[1:])]))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args, tasks)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    run_script(main)
