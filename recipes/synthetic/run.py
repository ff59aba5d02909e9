"""Synthetic voices (``speechxfer synth``) against real recordings, on real speakers never heard.

Two tasks, each measured on real speakers held out whole:

- **Ten Speech Commands words** (data/speech_commands, fold 0 of recipes/speech_commands: test
  on speaker groups 0 and 1, 16 speakers; the rejection threshold is calibrated on group 2; real
  training clips come from the other 56 speakers). Systems: zero-shot; a frozen Whisper probe
  and the combined system (probe x zero-shot prior) trained on synthetic clips only, on k real
  clips per command (k = 1, 3, 10, all; real unknown words and silence kept, as
  ``--shots``), and on both. Systems that saw no real clip (zero-shot, synthetic only) are
  also scored on all 72 speakers outside the validation group. Synthetic training sets hold the ten commands, distractor words
  from the shipped list as ``_unknown_`` (none of the dataset's own words) and synthetic
  white/pink/brown noise as ``_silence_``; the open-set comparison trains the same synthetic
  sets without the distractors.
- **Ten digits** (data/fsdd, leave one speaker out: george and yweweler have Greek and German
  accents): zero-shot; synthetic clips only; the default combined system on the three other
  speakers, alone and with synthetic digits added, whose voices are varied four ways: English
  voices at their default rate and pitch, plus other languages' voices (accents), plus rate,
  pitch and vocal-tract warp (perturbation), or both.

Every clip's Whisper tiny.en encoder states are computed once (2-s window) and averaged over
frames (``recipes/speech_commands``' ``pooled``: exact for the mean-pooled probe); the zero-shot
decoder scores each real clip once. Probes train with ``speechxfer.train.fit`` on those caches
(30 epochs, last kept). The combined weight is chosen on real validation clips
(``choose_weight``) when the system had real clips, else 1.

    python recipes/synthetic/run.py --quick    # few clips per word (~8 min)
    python recipes/synthetic/run.py            # the README figures (16 min on a quiet 2-core CPU)

Writes results/results{,_quick}.{json,md} and results/synthetic{,_quick}.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from speechxfer import CommandClassifier
from speechxfer.audio import batch_waves
from speechxfer.augment import synthetic_noise
from speechxfer.cli import add_measurement_options
from speechxfer.data import load_dataset, load_waves, split_dataset
from speechxfer.decoder.combined import choose_weight, combine_log_linear
from speechxfer.decoder.scoring import ZeroShotRecognizer
from speechxfer.encoders import build_encoder
from speechxfer.log import run_script
from speechxfer.openset import acceptance
from speechxfer.synth import SynthConfig, distractors, synthesise
from speechxfer.train import FeatureCache, TrainConfig, default_epochs, fit, frozen_blocks
from speechxfer.vocab import SILENCE, UNKNOWN, apply_commands, is_command, load_with_silence, shots

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("speech_commands_run",
                                               ROOT / "recipes" / "speech_commands" / "run.py")
sc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sc  # dataclasses look their module up
_spec.loader.exec_module(sc)


FSDD = ROOT / "data" / "fsdd"
DIGITS = tuple(str(d) for d in range(10))
CPU = torch.device("cpu")
RECALL_GRID = tuple(round(0.30 + 0.01 * k, 2) for k in range(66))  # 0.30 .. 0.95
RECALLS = (0.85, 0.88, 0.90)  # the table's columns of the curve
FOLD0 = "fold 0 (16 speakers)"
WIDE = "72 speakers (all but validation)"
DIGIT_VARIANTS = {  # name -> (accent voices, rate/pitch/warp perturbation)
    "english": (False, False), "accents": (True, False), "perturb": (False, True),
    "accents+perturb": (True, True)}


@dataclass(frozen=True)
class Plan:
    sc_per_word: int  # synthetic clips per command word
    sc_unknown_words: int  # distractor words drawn from the shipped list
    sc_unknown_clips: int
    noise_clips: int  # synthetic _silence_ clips
    sc_points: tuple[int | None, ...]  # real clips per command; None: all
    digit_per_word: int
    digit_variants: tuple[str, ...]


FULL = Plan(sc_per_word=100, sc_unknown_words=150, sc_unknown_clips=300, noise_clips=60,
            sc_points=(1, 3, 10, None), digit_per_word=50, digit_variants=tuple(DIGIT_VARIANTS))
QUICK = Plan(sc_per_word=12, sc_unknown_words=30, sc_unknown_clips=40, noise_clips=12,
             sc_points=(3,), digit_per_word=12, digit_variants=("english", "accents+perturb"))


class Bank:
    """Every clip of the run (real and synthetic), its pooled encoder states computed once."""

    def __init__(self, log) -> None:
        self.log = log
        self.waves: list[torch.Tensor] = []
        self.labels: list[str] = []
        self.speakers: list[str | None] = []
        self.model = CommandClassifier(build_encoder(sc.ENCODER, window=sc.WINDOW),
                                       {"command": ["a", "b"]})
        self.n_frozen = frozen_blocks(self.model, TrainConfig(strategy="frozen"))
        self.items: dict[int, torch.Tensor] = {}
        self.template: FeatureCache | None = None
        self.seconds = {"features": 0.0, "zero-shot": 0.0, "synthesis": 0.0, "training": 0.0}

    def add(self, waves, labels, speakers) -> list[int]:
        start = len(self.waves)
        self.waves += list(waves)
        self.labels += list(labels)
        self.speakers += list(speakers)
        return list(range(start, len(self.waves)))

    def features(self, idx: list[int]) -> FeatureCache:
        new = [i for i in dict.fromkeys(idx) if i not in self.items]
        if new:
            started = time.perf_counter()
            for s in range(0, len(new), 256):
                chunk = new[s : s + 256]
                part = sc.pooled(FeatureCache(self.model, [self.waves[i] for i in chunk],
                                              self.n_frozen, CPU))
                self.items.update(zip(chunk, part.items))
                self.template = part
            self.seconds["features"] += time.perf_counter() - started
            self.log(f"  encoder states of {len(new)} clips "
                     f"({(time.perf_counter() - started) / len(new) * 1e3:.0f} ms/clip)")
        cache = self.template.subset([])
        cache.items = [self.items[i] for i in idx]
        return cache

    def train_probe(self, labels: list[str], idx: list[int], seed: int) -> CommandClassifier:
        """A frozen probe over ``labels`` on clips ``idx`` (train.fit on the pooled cache)."""
        started = time.perf_counter()
        torch.manual_seed(seed)
        model = CommandClassifier(self.model.encoder, {"command": labels})
        config = TrainConfig(strategy="frozen", batch_size=sc.BATCH_SIZE, seed=seed,
                             epochs=default_epochs("frozen"))
        fit(model, [self.waves[i] for i in idx], [{"command": self.labels[i]} for i in idx],
            [], [], config, train_cache=self.features(idx))
        self.seconds["training"] += time.perf_counter() - started
        return model

    def probs(self, model: CommandClassifier, idx: list[int]) -> np.ndarray:
        return sc.cached_probs(model, self.features(idx))


class ZeroShot:
    """Decoder candidate scores of each clip, computed once; label probabilities on demand."""

    def __init__(self, bank: Bank, labels: list[str]) -> None:
        self.bank, self.system = bank, ZeroShotRecognizer(labels, window=sc.WINDOW)
        self.cand: dict[int, np.ndarray] = {}

    def scores(self, idx: list[int]) -> np.ndarray:
        new = sorted((i for i in dict.fromkeys(idx) if i not in self.cand),
                     key=lambda i: self.bank.waves[i].numel())
        started = time.perf_counter()
        with torch.no_grad():
            step = self.system.options.batch_size
            for s in range(0, len(new), step):
                chunk = new[s : s + step]
                batch, lengths = batch_waves([self.bank.waves[i] for i in chunk])
                cand = self.system.candidate_scores(*self.system.encode(batch, lengths)).numpy()
                self.cand.update(zip(chunk, cand))
        self.bank.seconds["zero-shot"] += time.perf_counter() - started
        stacked = torch.from_numpy(np.stack([self.cand[i] for i in idx]))
        with torch.no_grad():
            return self.system.labels_from_candidates(stacked).numpy()

    def probs(self, idx: list[int]) -> np.ndarray:
        return self.system.proba_from_scores(self.scores(idx))


def synth_waves(config: SynthConfig, out: Path, bank: Bank) -> list[int]:
    """Synthesise ``config`` into ``out`` and add its clips to the bank (speaker: the voice)."""
    started = time.perf_counter()
    synthesise(config, out)
    data = load_dataset(out)
    waves, clips, skipped = load_waves(data.clips, 16_000)
    if skipped:
        raise RuntimeError(f"unreadable synthetic clips: {skipped[:3]}")
    bank.seconds["synthesis"] += time.perf_counter() - started
    return bank.add(waves, [c.label for c in clips], [c.speaker for c in clips])


def noise_waves(n: int, seed: int, bank: Bank) -> list[int]:
    """``n`` one-second white/pink/brown noises at random levels: synthetic ``_silence_``."""
    rng = np.random.default_rng([seed, 7])
    waves = []
    for k in range(n):
        torch.manual_seed(int(rng.integers(2**31)))
        wave = synthetic_noise(("white", "pink", "brown")[k % 3], 16_000)
        waves.append(wave / wave.abs().max() * float(10 ** rng.uniform(-3, -0.5)))
    return bank.add(waves, [SILENCE] * n, ["noise"] * n)


def command_accuracy(labels: list[str], truth: list[str], probs: np.ndarray) -> float:
    """Closed-set accuracy on the command clips: the best of the command columns only."""
    cols = [i for i, lab in enumerate(labels) if is_command(lab)]
    rows = [j for j, t in enumerate(truth) if is_command(t)]
    best = np.array(labels)[np.array(cols)[probs[np.ix_(rows, cols)].argmax(1)]]
    return float(np.mean(best == np.array(truth)[rows]))


def max_recall(labels: list[str], truth: list[str], probs: np.ndarray) -> float:
    """The highest command recall any threshold gives: clips whose best command is right and
    beats the ``_unknown_`` and ``_silence_`` columns (``openset.acceptance``)."""
    best, p = acceptance(labels, probs)
    truth_a = np.array(truth)
    commands = np.array([is_command(t) for t in truth])
    right = commands & (np.array(labels)[best] == truth_a) & (p > 0)
    return float(right.sum() / commands.sum())


def sc_figures(labels, val, test, max_fa) -> dict:
    """The Speech Commands recipe's open-set figures, closed-set command accuracy, and the
    unknown false accepts at each command recall of ``RECALL_GRID`` (thresholds read off the
    test clips: an equal-recall comparison, not a deployable setting)."""
    out = sc.open_set(labels, val, test, max_fa)
    out["command_accuracy"] = command_accuracy(labels, *test)
    out["max_recall"] = max_recall(labels, *test)
    out["fa_curve"] = {f"{r:.2f}": sc.unknown_fa_at_recall(labels, *test, recall=r)
                       for r in RECALL_GRID}
    for r in RECALLS:
        out[f"unknown_fa_at_r{round(r * 100)}"] = out["fa_curve"][f"{r:.2f}"]
    return out


def speech_commands(plan: Plan, bank: Bank, work: Path, seed: int, max_fa: float, log) -> list[dict]:
    ds = apply_commands(load_with_silence(sc.DATA), list(sc.COMMANDS))
    waves, clips, skipped = load_waves(ds.clips, 16_000)
    if skipped:
        raise RuntimeError(f"unreadable clips in {sc.DATA}: {skipped[:3]}")
    real = bank.add(waves, [c.label for c in clips], [c.speaker for c in clips])
    clip_of = dict(zip(real, clips))
    speakers = sorted({c.speaker for c in clips if c.label != SILENCE})
    groups = sc.speaker_groups(speakers, 2 * sc.N_FOLDS, seed)
    group_of = {s: g for g, members in enumerate(groups) for s in members}
    roles = sc.fold_roles(0, len(groups))
    part = {r: [i for i, c in zip(real, clips) if group_of[c.speaker] in gs]
            for r, gs in roles.items()}
    labels = sorted({c.label for c in clips})
    # distractors: none of the dataset's own words (the test's unknown words stay unheard)
    vocabulary = sorted({p.name for p in sc.DATA.iterdir() if p.is_dir()})
    unknown = distractors(plan.sc_unknown_words, vocabulary, seed)
    log(f"Speech Commands fold 0: {len(part['train'])} train, {len(part['val'])} val, "
        f"{len(part['test'])} test clips; synthesising {plan.sc_per_word} clips x 10 words + "
        f"{plan.sc_unknown_clips} of {len(unknown)} distractor words")
    syn = synth_waves(SynthConfig(words=sc.COMMANDS, unknown_words=tuple(unknown),
                                  per_word=plan.sc_per_word, unknown_clips=plan.sc_unknown_clips,
                                  seed=seed), work / "speech_commands", bank)
    syn += noise_waves(plan.noise_clips, seed, bank)
    syn_no_unknown = [i for i in syn if bank.labels[i] != UNKNOWN]
    val = part["val"]
    # systems that saw no real clip are also scored on every speaker but the validation ones
    tests = {FOLD0: part["test"], WIDE: part["train"] + part["test"]}
    truth = {name: [bank.labels[i] for i in idx] for name, idx in tests.items()}
    truth_val = [bank.labels[i] for i in val]
    zero = ZeroShot(bank, labels)
    fitted, _ = zero.system.fit_open_set(zero.scores(val), truth_val)
    zv = zero.probs(val)
    zt = {name: zero.probs(idx) for name, idx in tests.items()}
    rows = []
    for name in tests:
        rows.append({"task": "speech_commands", "test": name, "system": "zero-shot",
                     "real": "none", "synthetic": "none", "n_train": 0, "open_set_fit": fitted,
                     **sc_figures(labels, (truth_val, zv), (truth[name], zt[name]), max_fa)})
        log(f"  zero-shot on {name}: command acc {rows[-1]['command_accuracy']:.3f}, 12-class "
            f"{rows[-1]['accuracy']:.3f}")

    def run(name_real: str, name_syn: str, idx: list[int]) -> None:
        model = bank.train_probe(labels, idx, seed)
        pv = bank.probs(model, val)
        weight = 1.0
        if name_real == "all":
            target = np.array([labels.index(t) for t in truth_val])
            weight, _ = choose_weight(pv, zv, target)
        for test_name in (tests if name_real == "none" else (FOLD0,)):
            pt = bank.probs(model, tests[test_name])
            base = {"task": "speech_commands", "test": test_name, "real": name_real,
                    "synthetic": name_syn, "n_train": len(idx)}
            for system, (v, t) in (("frozen", (pv, pt)),
                                   ("combined", (combine_log_linear(pv, zv, weight),
                                                 combine_log_linear(pt, zt[test_name], weight)))):
                row = {**base, "system": system, **sc_figures(
                    labels, (truth_val, v), (truth[test_name], t), max_fa)}
                if system == "combined":
                    row["weight"] = weight
                rows.append(row)
                log(f"  {system:8s} real {name_real:>4s} synthetic {name_syn:12s} on "
                    f"{test_name}: command acc {row['command_accuracy']:.3f}, 12-class "
                    f"{row['accuracy']:.3f}, unknown FA " + ", ".join(
                        f"@r{round(r * 100)} {_fmt(row[f'unknown_fa_at_r{round(r * 100)}'])}"
                        for r in RECALLS))

    run("none", "with unknown", syn)
    run("none", "no unknown", syn_no_unknown)
    for n in plan.sc_points:
        name = "all" if n is None else str(n)
        train = part["train"]
        if n is not None:
            keep = {id(c) for c in shots([clip_of[i] for i in train], n, seed)}
            train = [i for i in train if id(clip_of[i]) in keep]
        run(name, "none", train)
        run(name, "with unknown", train + syn)
    return rows


def digits(plan: Plan, bank: Bank, work: Path, seed: int, log) -> list[dict]:
    ds = load_dataset(FSDD)
    waves, clips, skipped = load_waves(ds.clips, 16_000)
    if skipped:
        raise RuntimeError(f"unreadable clips in {FSDD}: {skipped[:3]}")
    real = bank.add(waves, [c.label for c in clips], [c.speaker for c in clips])
    where = {c.path: i for i, c in zip(real, clips)}
    labels = sorted(ds.labels)
    synthetic = {}
    for name in plan.digit_variants:
        accents, perturb = DIGIT_VARIANTS[name]
        log(f"digits: synthesising {plan.digit_per_word} clips x 10 digits ({name})")
        synthetic[name] = synth_waves(SynthConfig(words=DIGITS, per_word=plan.digit_per_word,
                                                  accents=accents, perturb=perturb, seed=seed),
                                      work / f"digits_{name}", bank)
    zero = ZeroShot(bank, labels)
    rows = []
    for speaker in ds.speakers:
        split = split_dataset(ds, [speaker], seed=seed)
        train, val, test = ([where[c.path] for c in s] for s in (split.train, split.validation,
                                                                  split.test))
        truth_val = np.array([labels.index(bank.labels[i]) for i in val])
        truth_test = np.array([bank.labels[i] for i in test])
        zt, zv = zero.probs(test), zero.probs(val)

        def acc(probs: np.ndarray, truth: np.ndarray = truth_test) -> float:
            return float(np.mean(np.array(labels)[probs.argmax(1)] == truth))

        rows.append({"task": "digits", "speaker": speaker, "system": "zero-shot", "real": "none",
                     "synthetic": "none", "n_train": 0, "accuracy": acc(zt)})
        sets = [("none", name, synthetic[name]) for name in plan.digit_variants[-1:]]
        sets += [("all", "none", train)]
        sets += [("all", name, train + synthetic[name]) for name in plan.digit_variants]
        for real_name, syn_name, idx in sets:
            model = bank.train_probe(labels, idx, seed)
            pt = bank.probs(model, test)
            weight = 1.0
            if real_name == "all":
                weight, _ = choose_weight(bank.probs(model, val), zv, truth_val)
            base = {"task": "digits", "speaker": speaker, "real": real_name,
                    "synthetic": syn_name, "n_train": len(idx)}
            rows.append({**base, "system": "frozen", "accuracy": acc(pt)})
            rows.append({**base, "system": "combined", "weight": weight,
                         "accuracy": acc(combine_log_linear(pt, zt, weight))})
            log(f"  {speaker:9s} real {real_name:4s} synthetic {syn_name:15s}: frozen "
                f"{rows[-2]['accuracy']:.3f}, combined {rows[-1]['accuracy']:.3f}")
    return rows


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(rows: list[dict], meta: dict) -> str:
    out = [f"# Synthetic voices ({meta['run']} run)", "",
           (f"`{meta['command']}`; wall time {meta['wall_minutes']:.1f} min "
            f"(synthesis {meta['seconds']['synthesis'] / 60:.1f}, encoder states "
            f"{meta['seconds']['features'] / 60:.1f}, zero-shot decoder "
            f"{meta['seconds']['zero-shot'] / 60:.1f}, probes "
            f"{meta['seconds']['training'] / 60:.1f})."),
           "", "## Ten Speech Commands words, real speakers never heard", "",
           ("command acc: the best of the ten command columns on the command clips (closed set). "
            "12-class, recall and false accepts: after rejection at the threshold calibrated on the "
            "8 validation speakers (group 2) for at most "
            f"{meta['max_false_accept']:.0%} false accepts. Unknown FA @ recall r: at the "
            "threshold where the test command recall is r (read off the test clips; – where no "
            "threshold reaches r). Systems that saw no real clip are also scored on the 72 "
            "speakers outside the validation group."), "",
           ("| test speakers | system | real clips per command | synthetic | train clips "
            "| command acc | 12-class "
            "| recall | unknown FA | silence FA | highest recall | "
            + " | ".join(f"unknown FA @ r={r:.2f}" for r in RECALLS) + " |"),
           "|---" * (11 + len(RECALLS)) + "|"]
    for r in sorted((r for r in rows if r["task"] == "speech_commands"),
                    key=lambda r: r["test"] != FOLD0):
        out.append(f"| {r['test']} | {r['system']} | {r['real']} | {r['synthetic']} | {r['n_train']} | "
                   f"{r['command_accuracy']:.3f} | {r['accuracy']:.3f} | "
                   f"{r['command_recall']:.3f} | {r['unknown_false_accept']:.3f} | "
                   f"{r['silence_false_accept']:.3f} | {r['max_recall']:.3f} | "
                   + " | ".join(_fmt(r[f"unknown_fa_at_r{round(x * 100)}"]) for x in RECALLS) + " |")
    digit_rows = [r for r in rows if r["task"] == "digits"]
    if digit_rows:
        speakers = sorted({r["speaker"] for r in digit_rows})
        out += ["", "## Ten digits: leave one speaker out (500 real clips per held-out speaker)", "",
                "| system | real clips | synthetic | " + " | ".join(speakers) + " | mean | min |",
                "|---" * (len(speakers) + 5) + "|"]
        keys = list(dict.fromkeys((r["system"], r["real"], r["synthetic"]) for r in digit_rows))
        for key in keys:
            accs = [next(r["accuracy"] for r in digit_rows if r["speaker"] == s
                         and (r["system"], r["real"], r["synthetic"]) == key) for s in speakers]
            real = "three other speakers" if key[1] == "all" else key[1]
            out.append(f"| {key[0]} | {real} | {key[2]} | "
                       + " | ".join(f"{a:.3f}" for a in accs)
                       + f" | **{np.mean(accs):.4f}** | {min(accs):.3f} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    scr = [r for r in rows if r["task"] == "speech_commands" and r["test"] == FOLD0]
    points = [p for p in ("none", "1", "3", "10", "all") if any(r["real"] == p for r in scr)]
    ax = axes[0]
    zero = next(r for r in scr if r["system"] == "zero-shot")
    ax.axhline(zero["command_accuracy"], color="tab:gray", linestyle=":", label="zero-shot")
    for system, colour in (("frozen", "tab:blue"), ("combined", "tab:red")):
        for syn, style in (("none", "-"), ("with unknown", "--")):
            pts = [(points.index(r["real"]), r["command_accuracy"]) for r in scr
                   if r["system"] == system and r["synthetic"] == syn]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=colour,
                        label=f"{system}, {'real only' if syn == 'none' else '+ synthetic'}")
    ax.set_xticks(range(len(points)), ["0 (synthetic only)" if p == "none" else p for p in points])
    ax.set_xlabel("real clips per command")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("10 commands, 16 held-out speakers: command accuracy", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    styles = {("zero-shot", "none"): ("tab:gray", ":"),
              ("frozen", "with unknown"): ("tab:blue", "--"), ("frozen", "no unknown"): ("tab:blue", "-"),
              ("combined", "with unknown"): ("tab:red", "--"),
              ("combined", "no unknown"): ("tab:red", "-")}
    for r in (r for r in rows if r["task"] == "speech_commands" and r["test"] == WIDE):
        pts = [(float(k), v) for k, v in r["fa_curve"].items() if v is not None]
        if pts:
            colour, style = styles[(r["system"], r["synthetic"])]
            name = "zero-shot" if r["system"] == "zero-shot" else f"{r['system']}, {r['synthetic']}"
            ax.plot(*zip(*pts), style, color=colour, label=name)
    ax.set_xlabel("command recall (threshold read off the test clips)")
    ax.set_ylabel("unknown-word false accepts")
    ax.set_title("no real clips, 72 speakers: false accepts at equal recall", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax = axes[2]
    dig = [r for r in rows if r["task"] == "digits" and r["system"] == "combined"]
    if dig:
        speakers = sorted({r["speaker"] for r in dig})
        keys = list(dict.fromkeys((r["real"], r["synthetic"]) for r in dig))
        width = 0.8 / len(keys)
        for k, key in enumerate(keys):
            vals = [next(r["accuracy"] for r in dig if r["speaker"] == s
                         and (r["real"], r["synthetic"]) == key) for s in speakers]
            label = ("synthetic only" if key[0] == "none" else
                     "real" + ("" if key[1] == "none" else f" + synthetic ({key[1]})"))
            ax.bar(np.arange(len(speakers)) + width * k, vals, width=width, label=label)
        ax.set_xticks(np.arange(len(speakers)) + 0.4 - width / 2, speakers)
        ax.set_ylim(0.9, 1.0)
        ax.set_title("digits, combined system, held-out speaker", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_suffix(args: argparse.Namespace) -> str:
    """``_quick``, then every option that changes a figure away from its default: a run with
    other options, or without the digits, never writes over another's results."""
    return (("_quick" if args.quick else "") + (f"_seed{args.seed}" if args.seed else "")
            + ("" if args.max_false_accept == sc.DEFAULT_MAX_FALSE_ACCEPT
               else f"_fa{args.max_false_accept:g}")
            + ("_no_digits" if args.skip_digits else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few clips per word")
    # synth's and train's ranges: a negative seed would be a traceback after the data load
    add_measurement_options(parser, HERE / "results")
    parser.add_argument("--work", type=Path, default=Path("runs/synthetic"),
                        help="where the synthetic datasets are written")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--redraw", action="store_true",
                        help="rewrite the table and plot from the results JSON, run nothing")
    args = parser.parse_args(argv)
    suffix = results_suffix(args)
    if args.redraw:
        if not (args.out / f"results{suffix}.json").is_file():
            parser.error(f"{args.out / f'results{suffix}.json'}: no results to redraw (a run "
                         "with these options writes them)")
        saved = json.loads((args.out / f"results{suffix}.json").read_text())
        (args.out / f"results{suffix}.md").write_text(markdown(saved["rows"], saved["meta"]))
        plot(saved["rows"], args.out / f"synthetic{suffix}.png")
        return
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {text}", flush=True)

    bank = Bank(log)
    work = args.work / ("quick" if args.quick else "full")
    rows = speech_commands(plan, bank, work, args.seed, args.max_false_accept, log)
    if not args.skip_digits:
        rows += digits(plan, bank, work, args.seed, log)
    meta = {"run": "quick" if args.quick else "full",
            "command": " ".join(["python recipes/synthetic/run.py",
                                 *(sys.argv[1:] if argv is None else argv)]),
            "plan": asdict(plan), "seed": args.seed, "max_false_accept": args.max_false_accept,
            "encoder": sc.ENCODER, "window": sc.WINDOW, "threads": args.threads,
            "seconds": bank.seconds, "wall_minutes": (time.perf_counter() - started) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                               indent=1, default=str))
    (args.out / f"results{suffix}.md").write_text(markdown(rows, meta))
    plot(rows, args.out / f"synthetic{suffix}.png")
    print(markdown(rows, meta))


if __name__ == "__main__":
    run_script(main)
