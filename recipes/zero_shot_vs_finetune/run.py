"""Zero-shot decoder scoring versus free transcription, and versus training on few clips.

``measure``: every speaker's clips are unseen (nothing is trained), so all four speakers are
scored. For each window, the same clips go through (a) zero-shot label scoring and
(b) greedy transcription with the same prompt, whose text is mapped to a label; each method
runs its own encoder pass, so the seconds per clip are end to end.

    python recipes/zero_shot_vs_finetune/run.py measure --window clip --takes 10
    python recipes/zero_shot_vs_finetune/run.py measure --window 30s --takes 2

``compare``: leave-one-speaker-out on the four bundled speakers, with 0, 1, 3, 10 and all
clips per command per training speaker: zero-shot, head-only (frozen encoder, linear head),
generative (decoder's last block fine-tuned on the label scores) and combined (head x
zero-shot prior). One frozen pass caches the encoder features for the heads and the decoder
inputs (plus zero-shot scores) for every clip; every run reuses them.

    python recipes/zero_shot_vs_finetune/run.py compare            # ~16 min, 1 thread
    python recipes/zero_shot_vs_finetune/run.py compare --quick    # < 5 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from speechxfer.audio import load
from speechxfer.cli import bounded
from speechxfer.decoder.combined import CombinedRecognizer, choose_weight, combine_log_linear
from speechxfer.decoder.generative import DecoderCache, GenerativeRecognizer
from speechxfer.decoder.scoring import ZeroShotRecognizer
from speechxfer.decoder.transcribe import text_to_label, transcribe
from speechxfer.encoders.registry import WHISPER_DEFAULT_WINDOW, build_whisper
from speechxfer.log import run_script
from speechxfer.model import CommandClassifier
from speechxfer.recognizer import softmax
from speechxfer.train import FeatureCache, TrainConfig, fit, fit_generative, forward_cached

ROOT = Path(__file__).resolve().parents[2]
FSDD = ROOT / "data" / "fsdd" / "recordings"
RESULTS = Path(__file__).resolve().parent / "results"
SPEAKERS = ("george", "jackson", "theo", "yweweler")
DIGITS = [str(d) for d in range(10)]


def measure(window: str, takes: int, encoder: str) -> dict:
    """Accuracy and seconds per clip of zero-shot scoring and of free transcription."""
    files = [(d, FSDD / f"{d}_{s}_{t}.wav") for s in SPEAKERS for d in DIGITS for t in range(takes)]
    waves, truth = [load(f) for _, f in files], [d for d, _ in files]
    system = ZeroShotRecognizer(DIGITS, encoder=encoder, window=window,
                                model=build_whisper(encoder, window=window))
    start = time.perf_counter()
    probs = system.predict_proba(waves)
    zs_seconds = (time.perf_counter() - start) / len(waves)
    zs_pred = [DIGITS[i] for i in probs.argmax(1)]
    start = time.perf_counter()
    texts = transcribe(system, waves)
    tr_seconds = (time.perf_counter() - start) / len(waves)
    tr_pred = [text_to_label(t, system.aliases) for t in texts]

    def accuracy(pred: list[str | None]) -> float:
        return sum(p == t for p, t in zip(pred, truth)) / len(truth)

    return {
        "encoder": encoder, "window": window, "takes_per_digit_per_speaker": takes,
        "n": len(waves), "speakers": list(SPEAKERS), "threads": torch.get_num_threads(),
        "prompt": system.options.prompt,
        "zero_shot": {"accuracy": accuracy(zs_pred), "seconds_per_clip": zs_seconds},
        "transcription": {"accuracy": accuracy(tr_pred), "seconds_per_clip": tr_seconds,
                          "unmapped": sum(p is None for p in tr_pred),
                          "examples": sorted(set(texts))[:20]},
    }


HEAD_STEPS = 150  # at least this many optimiser steps for the linear head, however few clips
GEN_STEPS, GEN_BATCH = 40, 8  # fixed fine-tuning budget of the generative strategy
STRATEGIES = ("zero-shot", "head-only", "generative", "combined")


class Bench:
    """Every clip loaded and passed once through the frozen encoder and decoder bottom."""

    def __init__(self, takes: int, window: str, encoder: str):
        self.items = [(s, d, t) for s in SPEAKERS for d in DIGITS for t in range(takes)]
        self.waves = [load(FSDD / f"{d}_{s}_{t}.wav") for s, d, t in self.items]
        self.truth = np.array([DIGITS.index(d) for _, d, _ in self.items])
        started = time.perf_counter()
        self.gen = GenerativeRecognizer(DIGITS, encoder=encoder, window=window)
        self.pretrained = {k: v.detach().clone() for k, v in self.gen.tuned_parameters().items()}
        self.decoder_cache = DecoderCache(self.gen, self.waves, self.gen.tuned_from)
        self.zero_probs = softmax(self.decoder_cache.scores, self.gen.options.temperature)
        self.encoder = self.gen.model.encoder  # the head's frozen encoder: the same weights
        probe = CommandClassifier(self.encoder, {"command": DIGITS})
        self.head_cache = FeatureCache(probe, self.waves, self.encoder.num_layers,
                                       torch.device("cpu"), desc="caching head features")
        self.cache_seconds = time.perf_counter() - started

    def where(self, speakers: set[str], takes: set[int] | None = None) -> list[int]:
        return [i for i, (s, _, t) in enumerate(self.items)
                if s in speakers and (takes is None or t in takes)]

    def pick(self, speakers: set[str], pool_takes: list[int], n: int | None, seed: int) -> list[int]:
        """``n`` takes per digit per speaker, drawn by ``seed`` (all pool takes for None)."""
        rng = np.random.default_rng(seed)
        chosen = []
        for s in sorted(speakers):
            for d in DIGITS:
                takes = pool_takes if n is None else sorted(rng.choice(pool_takes, n, replace=False))
                chosen += [i for i, (s2, d2, t) in enumerate(self.items)
                           if s2 == s and d2 == d and t in set(takes)]
        return chosen

    def train_head(self, idx: list[int], seed: int) -> CommandClassifier:
        """Frozen-encoder linear head on cached features (at least HEAD_STEPS steps)."""
        torch.manual_seed(seed)  # the head's initial weights: the same whatever ran before
        model = CommandClassifier(self.encoder, {"command": DIGITS})
        batch = 8 if len(idx) <= 300 else 32
        epochs = max(4, math.ceil(HEAD_STEPS / math.ceil(len(idx) / batch)))
        config = TrainConfig(strategy="frozen", epochs=epochs, seed=seed, device="cpu",
                             batch_size=batch)
        quiet = io.StringIO()  # per-epoch lines and bars: hundreds of them
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            fit(model, [self.waves[i] for i in idx],
                [{"command": DIGITS[self.truth[i]]} for i in idx], [], [], config,
                train_cache=self.head_cache.subset(idx))
        return model

    def head_probs(self, model: CommandClassifier, idx: list[int]) -> np.ndarray:
        cache, out = self.head_cache.subset(idx), []
        with torch.no_grad():
            for start in range(0, len(idx), 64):
                part = list(range(start, min(len(idx), start + 64)))
                logits = forward_cached(model, cache, part, torch.device("cpu"))["command"]
                out.append(torch.softmax(logits.float(), -1).numpy())
        return np.concatenate(out)

    def prior_weight(self, idx: list[int], seed: int) -> tuple[float, dict]:
        """Weight of the zero-shot prior by leave-one-training-speaker-out over ``idx``: the
        head is trained without one training speaker and scored on that speaker's clips."""
        heads, zeros, truth = [], [], []
        speakers = sorted({self.items[i][0] for i in idx})
        for s in speakers:
            fold = [i for i in idx if self.items[i][0] == s]
            rest = [i for i in idx if self.items[i][0] != s]
            heads.append(self.head_probs(self.train_head(rest, seed), fold))
            zeros.append(self.zero_probs[fold])
            truth.append(self.truth[fold])
        return choose_weight(np.concatenate(heads), np.concatenate(zeros), np.concatenate(truth))

    def train_generative(self, idx: list[int], seed: int) -> dict:
        with torch.no_grad():
            for k, v in self.gen.tuned_parameters().items():
                v.copy_(self.pretrained[k])
        return fit_generative(self.gen, [self.waves[i] for i in idx],
                              [DIGITS[self.truth[i]] for i in idx], steps=GEN_STEPS,
                              batch_size=GEN_BATCH, seed=seed, device="cpu",
                              cache=self.decoder_cache.subset(idx))


def accuracy(probs: np.ndarray, truth: np.ndarray) -> float:
    return float((probs.argmax(1) == truth).mean())


def compare(quick: bool, window: str, encoder: str, test_takes: int | None = None,
            only: list[int | None] | None = None) -> dict:
    """Leave-one-speaker-out accuracy of every strategy at every clips-per-command budget.

    ``test_takes`` overrides how many takes of each held-out digit are scored (up to 50);
    ``only`` restricts the budgets (None = all clips).
    """
    takes, default_test = (10, 5) if quick else (50, 10)
    test_takes = test_takes or default_test
    budgets: list[int | None] = [1, 3, None] if quick else [1, 3, 10, None]  # quick: all = 10
    budgets = [b for b in budgets if only is None or b in only]
    seeds = (0,) if quick else (0, 1, 2)
    seeds_for = {1: seeds, 3: seeds, 10: (0,), None: (0,)}
    bench = Bench(takes, window, encoder)
    print(f"cached {len(bench.waves)} clips in {bench.cache_seconds:.0f} s")
    runs = []
    for test in SPEAKERS:
        train_speakers = set(SPEAKERS) - {test}
        test_idx = bench.where({test}, set(range(test_takes)))
        truth = bench.truth[test_idx]
        zero = bench.zero_probs[test_idx]
        # no clips: generative and combined are zero-shot itself; a head cannot exist
        runs.append({"test_speaker": test, "n_per_class": 0, "seed": 0, "n_train": 0,
                     "accuracy": {s: accuracy(zero, truth) for s in STRATEGIES
                                  if s != "head-only"}})
        for n in budgets:
            for seed in seeds_for[n]:
                started = time.perf_counter()
                idx = bench.pick(train_speakers, list(range(takes)), n, seed)
                head = bench.head_probs(bench.train_head(idx, seed), test_idx)
                weight, nll = bench.prior_weight(idx, seed)
                fit_info = bench.train_generative(idx, seed)
                gen = softmax(bench.gen.cached_scores(bench.decoder_cache.subset(test_idx)))
                acc = {"zero-shot": accuracy(zero, truth), "head-only": accuracy(head, truth),
                       "generative": accuracy(gen, truth),
                       "combined": accuracy(combine_log_linear(head, zero, weight), truth)}
                runs.append({"test_speaker": test, "n_per_class": n if n else takes,
                             "all": n is None, "seed": seed, "n_train": len(idx),
                             "weight": weight, "weight_nll": nll, "generative_fit": fit_info,
                             "accuracy": acc, "seconds": time.perf_counter() - started})
                print(f"{test} n={n or 'all'} seed={seed} "
                      + " ".join(f"{k}={v:.3f}" for k, v in acc.items()) + f" w={weight}")
    return {"encoder": encoder, "window": window, "quick": quick, "speakers": list(SPEAKERS),
            "takes_per_digit_per_speaker": takes, "test_takes": test_takes,
            "test_clips_per_speaker": test_takes * len(DIGITS), "seeds": list(seeds),
            "seeds_for": {str(k or "all"): list(v) for k, v in seeds_for.items()},
            "head_steps_min": HEAD_STEPS, "generative_steps": GEN_STEPS,
            "generative_batch": GEN_BATCH,
            "cache_seconds": bench.cache_seconds, "threads": torch.get_num_threads(),
            "runs": runs, "summary": summarise(runs), "costs": costs(bench, test_takes)}


def summarise(runs: list[dict]) -> dict:
    """Mean (over speakers, then seeds pooled) and std over speakers of every cell."""
    table: dict = {}
    for n in sorted({r["n_per_class"] for r in runs}):
        rows = [r for r in runs if r["n_per_class"] == n]
        cell = {}
        for s in STRATEGIES:
            if s not in rows[0]["accuracy"]:
                continue
            per_speaker = [np.mean([r["accuracy"][s] for r in rows if r["test_speaker"] == sp])
                           for sp in SPEAKERS]
            cell[s] = {"mean": float(np.mean(per_speaker)), "std_over_speakers":
                       float(np.std(per_speaker)), "per_speaker": dict(zip(SPEAKERS, per_speaker))}
        weights = [r["weight"] for r in rows if "weight" in r]
        table[str(n)] = {"all": any(r.get("all") for r in rows), "runs": len(rows),
                         "accuracy": cell, "weights": weights,
                         "generative_train_seconds": float(np.mean(
                             [r["generative_fit"]["train_seconds"] for r in rows
                              if "generative_fit" in r] or [0.0]))}
    return table


def costs(bench: Bench, test_takes: int) -> dict:
    """End-to-end inference time per clip of the saved systems on 20 of george's clips."""
    waves = [bench.waves[i] for i in bench.where({"george"}, set(range(2)))]
    head = bench.train_head(bench.pick({"jackson"}, [0, 1], 1, 0), 0)
    zero = ZeroShotRecognizer(DIGITS, encoder=bench.gen.encoder_name, window=bench.gen.window)
    systems = {"zero-shot": zero, "head-only": head, "generative": bench.gen,
               "combined": CombinedRecognizer(head, zero, 1.0)}
    out = {}
    for name, system in systems.items():
        system.predict_proba(waves[:2])  # warm-up
        started = time.perf_counter()
        system.predict_proba(waves)
        out[name] = {"ms_per_clip": 1000 * (time.perf_counter() - started) / len(waves)}
    return out


def compare_stem(args: argparse.Namespace) -> str:
    """The results name of a ``compare`` run: every option away from its default is in it, so
    a run with other options never writes over another's results."""
    return (f"compare_{args.window}" + ("_quick" if args.quick else "")
            + ("" if args.encoder == "whisper-tiny.en" else f"_{args.encoder}")
            + (f"_test{args.test_takes}" if args.test_takes else "")
            + (f"_{args.budgets.replace(',', '-')}" if args.budgets else ""))


def write_outputs(result: dict, stem: str) -> None:
    """JSON, a Markdown table and a PNG plot of mean accuracy against clips per command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    summary = result["summary"]
    lines = [(f"Leave-one-speaker-out, {result['test_clips_per_speaker']} test clips per held-out "
             f"speaker (takes 0-{result['test_takes'] - 1}), window {result['window']}; mean "
             "accuracy over the 4 held-out speakers (± std over speakers)."), "",
             "| clips/command/speaker | " + " | ".join(STRATEGIES)
             + " | prior weights | generative train s |", "|---" * (len(STRATEGIES) + 3) + "|"]
    for n, row in summary.items():
        name = f"all ({n})" if row["all"] else n
        cells = [f"{row['accuracy'][s]['mean']:.3f} ± {row['accuracy'][s]['std_over_speakers']:.3f}"
                 if s in row["accuracy"] else "-" for s in STRATEGIES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['weights'] or '-'} | "
                     f"{row['generative_train_seconds']:.1f} |")
    lines += ["", "| system | ms/clip (end to end, 1 thread) |", "|---|---|"]
    lines += [f"| {k} | {v['ms_per_clip']:.0f} |" for k, v in result["costs"].items()]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [int(n) for n in summary]
    for s in STRATEGIES:
        xs = [i for i, n in enumerate(ns) if s in summary[str(n)]["accuracy"]]
        ax.plot(xs, [summary[str(ns[i])]["accuracy"][s]["mean"] for i in xs], "o-", label=s)
    ax.set_xticks(range(len(ns)), [f"all ({n})" if summary[str(n)]["all"] else str(n) for n in ns])
    ax.set_xlabel("labelled clips per command per training speaker")
    ax.set_ylabel("accuracy on the held-out speaker")
    ax.set_title(f"whisper-tiny.en, window {result['window']}, leave-one-speaker-out")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="zero-shot vs free transcription on all four speakers")
    m.add_argument("--window", default="2s", help="clip, 30s or a padded Ns window")
    m.add_argument("--takes", type=bounded(int, 1, 50), default=10,
                   help="takes per digit per speaker (max 50)")
    m.add_argument("--encoder", default="whisper-tiny.en")
    m.add_argument("--threads", type=bounded(int, 1), default=1,
                   help="torch threads (1: comparable timings)")
    c = sub.add_parser("compare", help="zero-shot vs head-only vs generative vs combined")
    c.add_argument("--quick", action="store_true", help="10 takes (all = 10), 5 test takes, 1 seed")
    c.add_argument("--window", default=WHISPER_DEFAULT_WINDOW)
    c.add_argument("--encoder", default="whisper-tiny.en")
    c.add_argument("--threads", type=bounded(int, 1), default=1)
    c.add_argument("--test-takes", type=bounded(int, 1, 50),
                   help="takes per held-out digit scored (default 10; quick: 5, at most 10)")
    c.add_argument("--budgets", help="comma-separated subset of 1,3,10,all (default: every one)")
    args = parser.parse_args()
    if args.command == "compare":  # else scored fewer clips or budgets than the name says
        if args.quick and (args.test_takes or 0) > 10:
            parser.error("--test-takes: --quick holds takes 0-9 only")
        known = ["1", "3", "all"] if args.quick else ["1", "3", "10", "all"]  # quick: all = 10
        if args.budgets and (unknown := set(args.budgets.split(",")) - set(known)):
            parser.error(f"--budgets: no budget {', '.join(sorted(unknown))} (there are: "
                         f"{', '.join(known)})")
    torch.set_num_threads(args.threads)
    if args.command == "compare":
        only = ([None if b == "all" else int(b) for b in args.budgets.split(",")]
                if args.budgets else None)
        result = compare(args.quick, args.window, args.encoder, args.test_takes, only)
        stem = compare_stem(args)
        write_outputs(result, stem)
        print((RESULTS / f"{stem}.md").read_text())
        return
    result = measure(args.window, args.takes, args.encoder)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"measure_{args.encoder}_{args.window}_takes{args.takes}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("window", "n", "zero_shot")}))
    print(json.dumps({k: v for k, v in result["transcription"].items() if k != "examples"}))


if __name__ == "__main__":
    run_script(main)
