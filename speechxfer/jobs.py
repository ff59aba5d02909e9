"""The jobs the CLI and recipes run: train-evaluate-save, and evaluate a saved model.

Every ``train --strategy`` choice is one entry of ``JOBS`` (strategy -> its job); ``train_job``
loads and splits the data once and hands the job a ``Run``; every job builds its summary with
``job_summary`` and ends in ``finish_job``, so every model folder holds the same files. Each
job returns a JSON-ready dict, so the CLI only parses arguments and the recipes call the same
code the README's commands do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .audio import SILENCE_PEAK
from .classic import CLASSIC_KINDS, build_classic
from .data import (
    Dataset,
    DatasetError,
    Split,
    load_dataset,
    load_waves,
    per_class,
    readable,
    split_dataset,
)
from .decoder.combined import CombinedRecognizer, choose_weight, combine_log_linear
from .decoder.generative import GenerativeRecognizer
from .decoder.scoring import (
    MAX_OTHER_TOKENS,
    MAX_UNKNOWN_SPELLINGS,
    UNKNOWN_SCORE,
    ZeroShotRecognizer,
    label_spellings,
    other_spellings,
)
from .encoders import build_encoder
from .encoders.registry import WHISPER_DEFAULT_WINDOW, has_decoder
from .ensemble import MEMBER_FOLDER
from .evaluate import score, write_report
from .heads import multilabel_classes
from .log import LOGGER, progress
from .model import PRIMARY_TASK, CommandClassifier
from .multitask import task_metrics
from .openset import (
    DEFAULT_MAX_FALSE_ACCEPT,
    MIN_THRESHOLD,
    calibrate_threshold,
    open_set_metrics,
    open_set_rates,
)
from .recognizer import Recognizer, is_model_folder, load
from .store import CHECKPOINT, StoreError, atomic_folder, training_folder
from .train import (
    KEEP,
    STRATEGIES,
    TrainConfig,
    cached_proba,
    default_epochs,
    fit,
    fit_generative,
    is_main_process,
    pick_device,
    seed_everything,
)
from .vocab import (
    RESERVED,
    SILENCE,
    UNKNOWN,
    apply_commands,
    is_command,
    load_with_silence,
    map_for_model,
    nfc,
    other_words,
    written_otherwise,
)
from .vocab import negatives as vocab_negatives
from .vocab import shots as keep_shots

if TYPE_CHECKING:  # speechbrain loads only when a run augments
    from .augment import Augmenter

DEFAULT_ENCODER = "whisper-tiny.en"
# the frozen head times the decoder's zero-shot prior: the best speaker-independent accuracy at
# every data size (recipes/zero_shot_vs_finetune; its cost per clip: benchmarks/latency.py)
DEFAULT_STRATEGY = "combined"
DEFAULT_AUGMENT_COPIES = 4  # K augmented copies of each training clip with --augment


def bundled(name: str) -> Path:
    """``data/<name>`` of the source tree, or under the working directory.

    The data ship with the source repository, not with the installed package (a wheel holds
    no datasets), so an installed copy run elsewhere must be pointed at data.
    """
    places = [Path(__file__).resolve().parents[1], Path.cwd()]
    for root in places:
        if (root / "data" / name).exists():
            return root / "data" / name
    looked = ", ".join(str(root / "data" / name) for root in places)
    raise DatasetError(
        f"no dataset given and the bundled data/{name} is not here (looked in {looked}): "
        "the data ship with the source repository, not the installed package; run from a "
        "checkout, or pass --data DIR (FSDD-style {label}_{speaker}_{take}.wav files, a folder "
        "per label, or a .csv/.jsonl manifest)"
    )


def default_data() -> Path:
    """The no-``--data`` training set, ``data/digits.csv``: the bundled digits of every
    speaker, FSDD's four (a tenth of each one's takes validates) and the 38 Speech Commands
    speakers' spoken digits (their 87 clips all train).

    Why the Speech Commands voices: a shipped model is for voices nobody recorded, and 38 more
    speakers, microphones and accents lift it on speakers held out of them (README "Speakers
    outside FSDD"); only FSDD's takes validate.
    """
    return bundled("digits.csv")


def skipped_records(pairs) -> list[dict[str, str]]:
    """(path, problem) pairs of unusable files as the JSON rows summaries and reports list;
    each path absolute (not resolved: a looping link is one of them), as a summary is read
    from other working directories than the one it was written in."""
    return [{"path": os.path.abspath(path), "problem": problem} for path, problem in pairs]


def read_clips(clips, sample_rate: int, what: str, every_label: bool = False):
    """Load audio, printing each skipped clip; fail clearly if nothing is usable, or, with
    ``every_label`` (training clips), if a label has no usable clip left: a model would be
    saved without that class, or with one it never saw."""
    waves, kept, skipped = load_waves(clips, sample_rate)
    for path, problem in skipped:
        LOGGER.warning("skipped %s: %s", path, problem)
    if clips and not kept:
        raise DatasetError(f"no usable clips left in the {what} set ({len(skipped)} skipped; "
                           f"the first, {skipped[0][0]}: {skipped[0][1]})")
    lost = sorted({c.label for c in clips} - {c.label for c in kept} - {None})
    if every_label and lost:
        lost_paths = {str(c.path) for c in clips if c.label in lost}
        path, problem = next(s for s in skipped if s[0] in lost_paths)
        raise DatasetError(f"no usable clips left of label(s) {lost} in the {what} set (the "
                           f"first, {path}: {problem})")
    return waves, kept, skipped


def open_set(labels: list[str]) -> bool:
    """True for a vocabulary with ``_unknown_`` or ``_silence_``: the open-set task."""
    return any(lab in RESERVED for lab in labels)


SCORED_AT_ONCE = 256  # clips per predict_proba call of evaluate_system: one bar step


def evaluate_system(system: Recognizer, waves: list[torch.Tensor], truth: list[str]) -> dict:
    """Score any system as ``predict`` decides (after rejection when it has a threshold) and
    time its inference per clip. Open-set systems and truths add ``open_set``: command recall,
    unknown-word and silence false accepts (``openset.open_set_metrics``)."""
    start = time.perf_counter()
    # in slices, so a terminal shows how far a large test set is (a clip's scores do not
    # depend on the clips scored with it)
    slices = [waves[i:i + SCORED_AT_ONCE] for i in range(0, len(waves), SCORED_AT_ONCE)]
    probs = (np.concatenate([system.predict_proba(s) for s in progress(slices, "scoring")])
             if slices else system.predict_proba(waves))
    if system.threshold is not None:
        report = open_set_metrics(system.labels, truth, probs, system.threshold)
    else:
        report = score(system.labels, truth, probs)
        if open_set(system.labels) or open_set(truth):
            report["open_set"] = open_set_rates(truth, system.decide(probs))
    report["seconds_per_clip"] = (time.perf_counter() - start) / max(len(waves), 1)
    return report


def calibrate_rejection(system: Recognizer, waves: list[torch.Tensor], truth: list[str],
                        max_false_accept: float, probs: np.ndarray | None = None) -> dict | None:
    """Set ``system.threshold`` for at most ``max_false_accept`` of the unknown-word and
    silence clips among ``waves`` (validation clips of the training speakers) taken for a
    command, and at least ``MIN_THRESHOLD``; ``probs``, if given, are the system's
    probabilities for them.

    Returns what was set, or None (and no threshold: the most probable label wins) for a
    closed-set system or when the clips hold no unknown word or silence to calibrate on.
    """
    if not open_set(system.labels):
        return None
    rejectable = sum(not is_command(t) for t in truth)
    if not rejectable:
        LOGGER.warning("no %s clips among the %d validation clips to calibrate the rejection "
                       "threshold on: predict returns the most probable label", "/".join(RESERVED),
                       len(truth))
        return None
    probs = system.predict_proba(waves) if probs is None else probs
    calibrated = calibrate_threshold(system.labels, truth, probs, max_false_accept)
    system.threshold = max(calibrated, MIN_THRESHOLD)
    system.max_false_accept = max_false_accept
    return {"threshold": system.threshold, "calibrated": calibrated,
            "max_false_accept": max_false_accept, "n": len(truth), "n_rejectable": rejectable}


def load_training_data(data: str | Path, commands: list[str] | None = None) -> Dataset:
    """Every label folder a class; with ``commands``, those words, ``_unknown_`` for every other
    word and ``_silence_`` for the clips of ``_silence_/`` (``vocab.apply_commands``)."""
    if not commands:
        return load_dataset(data)
    return apply_commands(load_with_silence(data), list(commands))


def augment_options(augment: bool, noise: str | Path | None, copies: int | None,
                    seed: int) -> dict | None:
    """The augmentation a run asked for, as JSON for the summary and the checkpoint identity;
    None without ``augment`` (then ``noise`` and ``copies`` are refused, not ignored)."""
    if not augment:
        if noise is not None or copies is not None:
            raise ValueError("--noise and --augment-copies need --augment")
        return None
    copies = DEFAULT_AUGMENT_COPIES if copies is None else copies
    if copies < 1:
        raise ValueError(f"--augment-copies must be at least 1, got {copies}")
    if noise is None:
        return {"copies": copies, "seed": seed, "noise": None}
    folder = Path(noise).resolve()
    if not folder.is_dir():
        raise ValueError(f"{noise}: noise folder not found")
    from .augment import noise_files

    # the noise files themselves (a broken link fails now, before any clip is read): a
    # .DS_Store that Finder rewrites must not change the run's identity
    files = sorted((p.name, p.stat().st_size) for p in noise_files(folder))
    return {"copies": copies, "seed": seed, "noise": str(folder),
            "noise_files": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}


def make_augmenter(options: dict | None, waves: list[torch.Tensor], clips: list,
                   sample_rate: int) -> Augmenter | None:
    """The ``augment.Augmenter`` for ``options``: noise from the training clips labelled
    ``_silence_`` (never a test or validation clip), the ``--noise`` folder and synthetic
    noise; None without options."""
    if options is None:
        return None
    from .augment import AugmentConfig, Augmenter, load_noise_folder

    noises = [w for w, c in zip(waves, clips)
              if c.label == SILENCE and float(w.abs().max()) >= SILENCE_PEAK]
    if options["noise"] is not None:
        noises += load_noise_folder(options["noise"], sample_rate)
    config = AugmentConfig(copies=options["copies"], seed=options["seed"], sample_rate=sample_rate)
    return Augmenter(config, noises)


def augmented(augmenter: Augmenter | None, waves: list[torch.Tensor],
              clips: list) -> tuple[list, list]:
    """``waves`` and ``clips`` followed by the augmenter's K copies of them (the same labels)."""
    if augmenter is None:
        return waves, clips
    waves, reps = augmenter.with_copies(waves)
    return waves, clips * reps


def clips_digest(clips) -> str:
    """A short hash of the clips' paths and labels, order-free: the exact set a run trained on."""
    rows = sorted([os.path.abspath(c.path), sorted(c.labels.items())] for c in clips)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


@dataclass
class Run:
    """One training run as every strategy's job receives it: the loaded data and speaker
    split, the options the caller gave, and where the run works and saves."""

    ds: Dataset
    split: Split
    out: Path
    work: Path  # the run's work folder (checkpoints; out changes only in the final save)
    strategy: str
    encoder: str = DEFAULT_ENCODER
    window: str | None = None
    k: int = 2
    per_class_n: int | None = None
    epochs: int | None = None
    seed: int = 0
    tasks: tuple[str, ...] = (PRIMARY_TASK,)
    pooling: str = "mean"
    layer: int | None = None
    device: str = "auto"
    lr_encoder: float = 1e-4
    lr_head: float = 2e-3
    batch_size: int = 32
    head_options: dict[str, dict] | None = None
    task_weights: dict[str, float] | None = None
    evaluate: bool = True
    commands: list[str] | None = None
    shots: int | None = None
    max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT
    augment: dict | None = None  # ``augment_options``: what the run augments with, or None
    keep: str = "best"  # which epoch's weights to keep (``TrainConfig.keep``)
    speaker_speeds: tuple[int, ...] = ()  # ``augment.speed_speakers``: new voices at these speeds
    negatives: tuple[str, ...] = ()  # datasets whose every clip trains as _unknown_
    negative_clips: tuple = ()  # their clips (also in ``split.train``)
    spell_others: bool = False  # a decoder also spells the training data's other words

    def decoder_aliases(self, labels: list[str]) -> dict[str, list[str]] | None:
        """With ``spell_others`` and ``_unknown_`` among ``labels``: the other words of the
        training speakers' clips (``vocab.other_words``) as its spellings
        (``scoring.other_spellings``), else None; a word left unspelt, or none, is warned about."""
        if not self.spell_others:
            return None
        words = other_words(self.split.train + self.split.validation) if UNKNOWN in labels else []
        spelt, unspelt = other_spellings(words, [w for w in labels if is_command(w)],
                                         self.encoder)
        if unspelt:
            LOGGER.warning("--spell-others: %d other word(s) not spelt (a blank, a hesitation, a "
                           "command's spelling, over %d tokens or past %d spellings): %s",
                           len(unspelt), MAX_OTHER_TOKENS, MAX_UNKNOWN_SPELLINGS, unspelt[:10])
        if not spelt:
            LOGGER.warning("--spell-others: the training speakers said no other word to spell; "
                           "_unknown_ is scored by its level alone")
        return {UNKNOWN: spelt} if spelt else None

    @property
    def decoder_window(self) -> str:
        return self.window or WHISPER_DEFAULT_WINDOW

    def pools(self) -> tuple[list, list]:
        """Training and validation clips: with ``per_class_n``, that many per label per speaker
        of the data's own (a drawn clip that does not read is replaced: ``data.per_class``) and
        no validation split (too few clips to carve one from); the negatives stay whole."""
        if self.per_class_n:
            extra = {id(c) for c in self.negative_clips}
            own = [c for c in self.split.train + self.split.validation if id(c) not in extra]
            drawn = per_class(own, self.per_class_n, self.seed, check=readable)
            return drawn + list(self.negative_clips), []
        return self.split.train, self.split.validation

    def fit_pools(self, calibrate: bool) -> tuple[list, list]:
        """The clips to fit on and the validation clips held out of fitting: with ``calibrate``
        (an open-set run, whose validation clips calibrate rejection) the ``pools``' validation
        clips stay out; otherwise they are fitted on too and none is held out."""
        # a clip whose command label is empty has no class to fit or calibrate
        train, val = ([c for c in pool if c.label is not None] for pool in self.pools())
        held = val if calibrate else []
        return (train if held else train + val), held


# the options of a run that change its model and the summary's other keys do not hold: recorded
# by ``job_summary`` so that ``finished_run`` can tell a run trained with others
MODEL_OPTIONS = ("seed", "epochs", "k", "pooling", "layer", "keep", "lr_encoder", "lr_head",
                 "batch_size", "head_options", "task_weights", "max_false_accept")


def model_options(strategy: str, **given) -> dict:
    """``MODEL_OPTIONS`` as a run of ``strategy`` has them, as JSON reads them back: ``given``
    over ``Run``'s defaults (a None given is the default), the epochs the strategy trains when
    none are given (a later change of its default then reads as other options), an empty
    ``head_options`` or ``task_weights`` as None."""
    options = {f.name: f.default for f in fields(Run) if f.name in MODEL_OPTIONS}
    options.update((key, value) for key, value in given.items() if value is not None)
    if options["epochs"] is None and strategy in JOBS and JOBS[strategy].in_epochs:
        options["epochs"] = default_epochs(strategy)
    for key in ("head_options", "task_weights"):
        options[key] = options[key] or None
    return json.loads(json.dumps(options))


def job_summary(run: Run, strategy: dict, started: float, train: list,
                n_train: int | None = None, n_validation: int = 0, skipped: list = (),
                **extra) -> dict:
    """The train_summary.json of every strategy: the same keys whatever trained (``extra``
    adds or overrides the strategy's own figures)."""
    decoder_based = run.strategy in DECODER_STRATEGIES
    classic = run.strategy in CLASSIC_KINDS
    return {
        # absolute: export, recipes' reruns and benchmarks read it again from other folders
        "data": str(Path(run.ds.location).resolve()), "layout": run.ds.layout,
        "encoder": None if classic else run.encoder,
        "window": None if classic else (run.decoder_window if decoder_based else run.window),
        "strategy": strategy, "per_class": run.per_class_n, "commands": run.commands,
        "shots": run.shots, "augment": run.augment, "tasks": list(run.tasks),
        "speaker_speeds": list(run.speaker_speeds) or None,
        "negatives": list(run.negatives) or None,
        "spell_others": run.spell_others or None,
        "train_speakers": sorted({c.speaker for c in train if c.speaker}),
        "test_speakers": sorted({c.speaker for c in run.split.test if c.speaker}),
        "n_train": len(train) if n_train is None else n_train, "n_validation": n_validation,
        "n_test": len(run.split.test), "n_train_examples": len(train) if n_train is None else n_train,
        "best_epoch": None, "resumed_from_epoch": None, "history": [],
        "train_seconds": time.perf_counter() - started, "skipped": skipped_records(skipped),
        "parameters": None, "open_set_fit": None, "rejection": None,
        "held_out_by_speaker": None,
        **model_options(run.strategy, **{key: getattr(run, key) for key in MODEL_OPTIONS}),
        **extra,
    }


@dataclass
class TrainedNeural:
    """What ``train_neural`` leaves: the trained classifier (its ``info`` set as the saved
    folder's), its summary, and the validation clips it read (those kept) with their waves."""

    model: CommandClassifier
    summary: dict
    val_waves: list[torch.Tensor]
    val: list
    # probabilities of the validation clips of these speakers from a head trained as ``model``
    # (on the same cached features) without any clip of theirs: ``held_out_speaker_probs``;
    # None unless asked for (``train_neural``'s ``refits``: the features stay in memory)
    held_out_probs: Callable[[set[str]], np.ndarray] | None = None


def train_neural(run: Run, refits: bool = False) -> TrainedNeural:
    """A CommandClassifier (one head per task) trained under a transfer strategy (``train.fit``),
    its rejection threshold calibrated on the validation clips; not evaluated, not saved.
    ``refits`` keeps its cached features for ``TrainedNeural.held_out_probs``."""
    started = time.perf_counter()
    train, val = run.pools()
    enc = build_encoder(run.encoder, window=run.window, pretrained=run.strategy != "scratch")
    kinds = {t: (run.head_options or {}).get(t, {}).get("kind", "single") for t in run.tasks}
    task_labels = {t: (multilabel_classes([c.labels[t] for c in train if t in c.labels])
                       if kinds[t] == "multi"
                       else sorted({c.labels[t] for c in train if t in c.labels}))
                   for t in run.tasks}
    empty = [t for t, labs in task_labels.items() if not labs]
    if empty:
        raise DatasetError(f"{run.ds.location}: no training labels for task(s) {empty}")
    speed_tasks = [t for t in run.tasks if kinds[t] == "embedding"] if run.speaker_speeds else []
    if speed_tasks:
        from .augment import speed_label, speed_speakers

        for t in speed_tasks:
            task_labels[t] = sorted(task_labels[t] + [
                speed_label(lab, p) for lab in task_labels[t] for p in run.speaker_speeds])
    # a softmax over one class says that class for every clip, whatever the voice
    lone = {t: labs for t, labs in task_labels.items()
            if t != PRIMARY_TASK and kinds[t] != "multi" and len(labs) < 2}
    if lone:
        raise DatasetError(f"{run.ds.location}: task(s) {sorted(lone)} have one training label "
                           f"only ({lone}); a {'/'.join(sorted({kinds[t] for t in lone}))} head "
                           "needs two or more (e.g. clips of two speakers)")
    def build() -> CommandClassifier:
        return CommandClassifier(enc, task_labels, layer=run.layer, pooling=run.pooling,
                                 head_options=run.head_options)

    model = build()
    train_w, train, skipped = read_clips(train, enc.sample_rate, "training", every_label=True)
    val_w, val, skipped_val = read_clips(val, enc.sample_rate, "validation")
    augmenter = make_augmenter(run.augment, train_w, train, enc.sample_rate)
    fit_w, fit_clips = train_w, train
    if speed_tasks:
        fit_w, fit_clips = speed_speakers(train_w, train, run.speaker_speeds, speed_tasks,
                                          enc.sample_rate)
    config = TrainConfig(strategy=run.strategy, k=run.k,
                         epochs=run.epochs or default_epochs(run.strategy), seed=run.seed,
                         device=run.device, lr_encoder=run.lr_encoder, lr_head=run.lr_head,
                         batch_size=run.batch_size, task_weights=dict(run.task_weights or {}),
                         keep=run.keep)
    identity = {  # what makes a checkpoint this run's: anything else starts afresh
        "data": str(run.ds.root.resolve()), "train": clips_digest(train),
        "validation": clips_digest(val),
        "test_speakers": sorted({str(c.speaker) for c in run.split.test}),
        "per_class": run.per_class_n, "encoder": run.encoder, "window": enc.window,
        "head": {"tasks": list(run.tasks), "kinds": kinds, "pooling": run.pooling,
                 "layer": run.layer, "options": run.head_options or {}},
        "strategy": config.to_dict(), "commands": run.commands, "shots": run.shots,
        "augment": run.augment,
        **({"speaker_speeds": list(run.speaker_speeds)} if run.speaker_speeds else {}),
    }
    result = fit(model, fit_w, [c.labels for c in fit_clips], val_w, [c.labels for c in val],
                 config, run.work / CHECKPOINT, identity=identity, augmenter=augmenter)
    rejection = calibrate_rejection(model, val_w, [c.label for c in val], run.max_false_accept)
    summary = job_summary(
        run, config.to_dict(), started, train, n_validation=len(val),
        skipped=skipped + skipped_val, window=enc.window, rejection=rejection,
        n_train_examples=result.train_examples, best_epoch=result.best_epoch,
        resumed_from_epoch=result.resumed_from, history=result.history,
        parameters=sum(p.numel() for p in model.parameters()))
    model.info = system_info(summary)
    if not refits:
        return TrainedNeural(model, summary, val_w, val)
    caches = result.train_cache, result.val_cache
    if (caches[0] is not None and caches[0].n_frozen == enc.num_layers
            and all(head.pool is None for head in model.heads.values())):
        caches = caches[0].mean_pooled(), caches[1].mean_pooled()  # the same fits, faster

    def held_out_probs(left_out: set[str]) -> np.ndarray:
        keep = [i for i, c in enumerate(fit_clips) if c.speaker not in left_out]
        keep_val = [i for i, c in enumerate(val) if c.speaker not in left_out]
        rows = [i for i, c in enumerate(val) if c.speaker in left_out]
        cache, val_cache = caches
        if cache is not None:  # the clean clips, then each augmented copy of them all
            copies = len(cache.items) // len(fit_w)
            cache = cache.subset([r * len(fit_w) + i for r in range(copies) for i in keep])
        fold = build()
        fit(fold, [fit_w[i] for i in keep], [fit_clips[i].labels for i in keep],
            [val_w[i] for i in keep_val], [val[i].labels for i in keep_val], config,
            train_cache=cache, augmenter=augmenter,
            val_cache=None if val_cache is None else val_cache.subset(keep_val))
        if val_cache is None:
            return fold.predict_proba([val_w[i] for i in rows])
        return cached_proba(fold, val_cache.subset(rows))

    return TrainedNeural(model, summary, val_w, val, held_out_probs)


def neural_job(run: Run) -> dict:
    """``train_neural``, then evaluated on the held-out speakers and saved (``finish_job``)."""
    trained = train_neural(run)
    return finish_job(trained.model, trained.summary, run.split if run.evaluate else None,
                      run.out)


def classic_job(run: Run) -> dict:
    """Fit a classic recogniser (MFCC + GMM-HMM / DTW / SVM), evaluate, save like any model.

    For an open-set vocabulary the validation clips (training speakers', not trained on)
    calibrate the rejection threshold; otherwise they are trained on too. Augmented copies
    (``run.augment``) are extra training clips.
    """
    started = time.perf_counter()
    train, held = run.fit_pools(open_set(run.ds.labels))
    system = build_classic(run.strategy, seed=run.seed)
    train_w, train, skipped = read_clips(train, system.sample_rate, "training", every_label=True)
    augmenter = make_augmenter(run.augment, train_w, train, system.sample_rate)
    fit_w, fit_clips = augmented(augmenter, train_w, train)
    system.fit(fit_w, [c.label for c in fit_clips])
    held_w, held, skipped_held = read_clips(held, system.sample_rate, "validation")
    rejection = calibrate_rejection(system, held_w, [c.label for c in held], run.max_false_accept)
    summary = job_summary(run, {"strategy": run.strategy}, started, train,
                          n_validation=len(held), skipped=skipped + skipped_held,
                          n_train_examples=len(fit_clips), rejection=rejection)
    return finish_job(system, summary, run.split, run.out)


def calibrate_open_set(system: ZeroShotRecognizer, clips: list,
                       max_false_accept: float) -> tuple[dict | None, list]:
    """On validation clips of the training speakers, fit a decoder system's ``_unknown_`` /
    ``_silence_`` scores and temperature (``fit_open_set``), then its rejection threshold
    (``calibrate_rejection``). Returns that fit (None for a closed-set system or without such
    clips) and the validation clips that could not be read, for the run's summary."""
    clips = [c for c in clips if c.label in system.labels]
    if not open_set(system.labels) or not any(not is_command(c.label) for c in clips):
        return None, []
    waves, kept, skipped = read_clips(clips, system.sample_rate, "validation")
    truth = [c.label for c in kept]
    fitted, scores = system.fit_open_set(system.scores(waves), truth)
    rejection = calibrate_rejection(system, waves, truth, max_false_accept,
                                    system.proba_from_scores(scores))
    return {"scores": fitted, "rejection": rejection}, skipped


def default_level(system: ZeroShotRecognizer) -> None:
    """For a system no clip fitted (``fit_open_set``): a spelt ``_unknown_`` gets the default
    level ``UNKNOWN_SCORE``, as one without spellings has, not the ``LEVEL_FLOOR`` a fit starts
    from, under which only a spelling, never an unheard word, would be "none of these"."""
    if UNKNOWN in system.aliases:
        system.options = replace(system.options, unknown_score=UNKNOWN_SCORE)


def decoder_labels(clips: list) -> list[str]:
    """The labels a decoder system scores: those of its training clips (``check_trainable``
    has made sure there are at least two)."""
    return sorted({c.label for c in clips if c.label is not None})


def zero_shot_job(run: Run) -> dict:
    """No training: the training clips' label names are scored by the decoder
    (``decoder.scoring``), evaluated on the test split and saved. With ``_unknown_`` /
    ``_silence_`` among them, their scores and the rejection threshold are fitted on the
    validation clips (``calibrate_open_set``)."""
    started = time.perf_counter()
    train = run.split.train + run.split.validation
    labels = decoder_labels(train)
    system = ZeroShotRecognizer(labels, aliases=run.decoder_aliases(labels), encoder=run.encoder,
                                window=run.decoder_window, device=pick_device(run.device))
    fitted, skipped = calibrate_open_set(system, run.split.validation, run.max_false_accept)
    if fitted is None:
        default_level(system)
    summary = job_summary(run, {"strategy": run.strategy}, started, train, n_train=0,
                          n_validation=len(run.split.validation) - len(skipped) if fitted else 0,
                          skipped=skipped, parameters=0, open_set_fit=fitted and fitted["scores"],
                          rejection=fitted and fitted["rejection"])
    return finish_job(system, summary, run.split, run.out)


GENERATIVE_STEPS, GENERATIVE_BATCH = 40, 8  # a fixed fine-tuning budget, no early stopping


def generative_job(run: Run) -> dict:
    """The decoder's last block fine-tuned on the training clips' label scores
    (``train.fit_generative``, checkpointed in the run's work folder), evaluated, saved.

    With ``_unknown_`` / ``_silence_`` labels the validation clips are kept out of training to
    fit their scores and the rejection threshold (``calibrate_open_set``).
    """
    started = time.perf_counter()
    train, held = run.fit_pools(open_set([c.label for c in run.split.train]))
    system = GenerativeRecognizer(decoder_labels(train), encoder=run.encoder,
                                  window=run.decoder_window)
    waves, kept, skipped = read_clips(train, system.sample_rate, "training", every_label=True)
    fit_w, fit_clips = augmented(make_augmenter(run.augment, waves, kept, system.sample_rate),
                                 waves, kept)
    identity = {"data": str(run.ds.root.resolve()), "train": clips_digest(kept),
                "augment": run.augment, "encoder": run.encoder, "window": run.decoder_window}
    fit_info = fit_generative(system, fit_w, [c.label for c in fit_clips], GENERATIVE_STEPS,
                              GENERATIVE_BATCH, seed=run.seed, device=run.device,
                              checkpoint_dir=run.work / CHECKPOINT, identity=identity)
    fitted, skipped_held = calibrate_open_set(system, held, run.max_false_accept)
    summary = job_summary(run, {"strategy": run.strategy, **fit_info}, started, kept,
                          n_validation=len(held) - len(skipped_held),
                          skipped=skipped + skipped_held,
                          n_train_examples=len(fit_clips),
                          parameters=fit_info["tuned_parameters"],
                          open_set_fit=fitted and fitted["scores"],
                          rejection=fitted and fitted["rejection"])
    return finish_job(system, summary, run.split, run.out)


CROSS_FIT_FOLDS = 5  # at most this many groups of speakers held out to choose the prior's weight


def speaker_groups(speakers: list[str], folds: int = CROSS_FIT_FOLDS) -> list[set[str]]:
    """The distinct speakers dealt in sorted order into at most ``folds`` groups (one each
    when there are that few)."""
    ordered = sorted(set(speakers))
    n = min(folds, len(ordered))
    return [set(ordered[g::n]) for g in range(n)]


def held_out_speaker_probs(trained: TrainedNeural,
                           folds: int = CROSS_FIT_FOLDS) -> np.ndarray | None:
    """The head's probabilities of its validation clips as on voices it never heard: each
    group of speakers (``speaker_groups``) is predicted by a head trained like the shipped one
    without any clip of theirs (``TrainedNeural.held_out_probs``). None with fewer than two named
    speakers among the clips, when none of them was trained on (validation speakers held out
    whole: the head's own probabilities are already those of unheard voices), or when a group
    holds every training speaker.

    Why: the head fits the validation takes of its own training speakers almost perfectly, so
    a prior weight chosen on them undervalues the prior for the new speakers it is for.
    """
    speakers = [c.speaker for c in trained.val]
    heard = set(trained.summary["train_speakers"])
    if (trained.held_out_probs is None or None in speakers or len(set(speakers)) < 2
            or not heard & set(speakers)):
        return None
    groups = speaker_groups(speakers, folds)
    if any(not heard - group for group in groups):  # a fold would have nobody to train on
        return None
    probs = np.zeros((len(speakers), len(trained.model.labels)), np.float32)
    for k, group in enumerate(groups, 1):
        LOGGER.info("prior weight, fold %d/%d: a head without %s", k, len(groups),
                    ", ".join(sorted(group)) if len(group) <= 3 else f"{len(group)} speakers")
        probs[[i for i, s in enumerate(speakers) if s in group]] = trained.held_out_probs(group)
    return probs


def held_out_accuracy(probs: np.ndarray, labels: list[str], clips: list) -> dict:
    """Accuracy (most probable label) of the validation clips as scored with their speakers
    held out (``held_out_speaker_probs``), over all and per speaker: the speaker-independent
    figure of a run that trains on every speaker and so has no test speaker left (the bundled
    digits' default). The prior's weight was chosen on these same clips: one number fitted."""
    right = [labels[i] == c.label for i, c in zip(probs.argmax(1), clips)]
    per_speaker: dict[str, list[bool]] = defaultdict(list)
    for ok, c in zip(right, clips):
        per_speaker[c.speaker].append(ok)
    return {"accuracy": float(np.mean(right)), "n": len(right),
            "per_speaker": {s: float(np.mean(v)) for s, v in sorted(per_speaker.items())}}


def combined_job(run: Run) -> dict:
    """A frozen-encoder head (``train_neural``, with every task the run asks for, kept in
    memory: every torchrun rank has it, rank 0 alone saves), the zero-shot prior, its weight
    chosen on the validation clips of the training speakers (``WEIGHT_GRID``; weight 1 when
    there are none, as with ``per_class_n``), then evaluate and save. ``out`` changes only in
    the final save.

    The weight is chosen on the head's probabilities of those clips from heads that never
    heard their speakers (``held_out_speaker_probs``: at most ``CROSS_FIT_FOLDS`` more head
    fits on the cached features), or on the shipped head's own with a single speaker; the
    combined system's accuracy on those clips is the summary's ``held_out_by_speaker``.

    With ``_unknown_`` / ``_silence_`` the same validation clips first fit the prior's scores
    for them (``ZeroShotRecognizer.fit_open_set``), then, after the weight, the combined
    system's rejection threshold (``calibrate_rejection``).
    """
    started = time.perf_counter()
    # the head's validation clips are the run's (``Run.pools``: none with ``per_class_n``),
    # already read: the weight and the threshold are chosen on the same waves
    trained = train_neural(replace(run, strategy="frozen", evaluate=False), refits=True)
    head, head_summary = trained.model, trained.summary
    waves, kept = trained.val_waves, trained.val
    zero = ZeroShotRecognizer(head.labels, aliases=run.decoder_aliases(head.labels),
                              encoder=run.encoder, window=head.encoder.window,
                              device=pick_device(run.device))
    if not (kept and open_set([c.label for c in kept])):  # nothing will fit its open set
        default_level(zero)
    system = CombinedRecognizer(head, zero)
    choice = {"weight": 1.0, "nll": None}
    fitted = rejection = cross_fit = None
    if kept:
        truth = [c.label for c in kept]
        target = np.array([head.labels.index(t) for t in truth])
        if system.shares_encoder():
            head_probs, scores = system.shared_pass(waves)
        else:
            head_probs, scores = head.predict_proba(waves), zero.scores(waves)
        if open_set(zero.labels) and open_set(truth):
            fitted, scores = zero.fit_open_set(scores, truth)
        zero_probs = system.prior_from_scores(scores)
        held_out = held_out_speaker_probs(trained)
        weight, nll = choose_weight(head_probs if held_out is None else held_out, zero_probs,
                                    target)
        system.weight, choice = weight, {
            "weight": weight, "nll": nll, "n": len(kept),
            "head_probabilities": "trained head" if held_out is None else "held out by speaker",
            "folds": None if held_out is None else len(speaker_groups([c.speaker for c in kept]))}
        if held_out is not None:
            cross_fit = held_out_accuracy(combine_log_linear(held_out, zero_probs, weight),
                                          head.labels, kept)
        rejection = calibrate_rejection(system, waves, truth, run.max_false_accept,
                                        combine_log_linear(head_probs, zero_probs, weight))
    summary = {**head_summary, "strategy": {"strategy": run.strategy, "head": "frozen",
                                            "prior_weight": choice},
               "open_set_fit": fitted, "rejection": rejection, "held_out_by_speaker": cross_fit,
               "train_seconds": time.perf_counter() - started}
    return finish_job(system, summary, run.split, run.out)


@dataclass(frozen=True)
class Strategy:
    """A ``train --strategy`` choice: its job, and what it can do with the run's options."""

    job: Callable[[Run], dict]
    trains_head: bool  # extra tasks (--task speaker) need a classifier head to hang them on
    trains: bool = True  # something to train, so something to augment
    spells_others: bool = False  # its decoder can spell other words as _unknown_ (--spell-others)
    in_epochs: bool = False  # trains a head in epochs (--epochs, --keep)


DECODER_STRATEGIES = ("zero-shot", "generative", "combined")
JOBS: dict[str, Strategy] = {
    **{name: Strategy(neural_job, trains_head=True, in_epochs=True) for name in STRATEGIES},
    "zero-shot": Strategy(zero_shot_job, trains_head=False, trains=False, spells_others=True),
    "generative": Strategy(generative_job, trains_head=False),
    "combined": Strategy(combined_job, trains_head=True, spells_others=True, in_epochs=True),
    **{name: Strategy(classic_job, trains_head=False) for name in CLASSIC_KINDS},
}


def strategy_of(name: str, tasks: tuple[str, ...] = (PRIMARY_TASK,),
                augment: bool = False, spell_others: bool = False) -> Strategy:
    """The table's entry for ``name``; a ValueError when it is unknown or cannot do what the
    run asks (extra tasks without a head, augmentation with nothing to train, other words
    with no decoder scoring to spell them in)."""
    if name not in JOBS:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(JOBS)}")
    strategy = JOBS[name]
    extra = [t for t in tasks if t != PRIMARY_TASK]
    if extra and not strategy.trains_head:
        heads = ", ".join(n for n, s in JOBS.items() if s.trains_head)
        raise ValueError(f"--task {extra[0]}: the {name} strategy trains no classifier head to "
                         f"learn it with; use one that does ({heads})")
    if augment and not strategy.trains:
        raise ValueError(f"--augment: the {name} strategy trains nothing to augment")
    if spell_others and not strategy.spells_others:
        spelling = ", ".join(n for n, s in JOBS.items() if s.spells_others)
        raise ValueError(f"--spell-others: the {name} strategy spells no other words; use one "
                         f"that does ({spelling})")
    return strategy


K_STRATEGIES = ("top-k", "reinit-k")  # the strategies that read --k


def check_options(name: str, *, k: int, epochs: int | None, keep: str, layer: int | None,
                  pooling: str, head_options: dict | None, window: str | None,
                  encoder: str = DEFAULT_ENCODER) -> None:
    """A ValueError for an option the ``name`` strategy would ignore: the CLI's check, so a
    model is never trained without what was asked and saved as if it had been (``train_job``
    itself takes one set of options for every strategy, as a recipe comparing them passes).
    The defaults (k 2, keep best, mean pooling, the default encoder) pass."""
    strategy = JOBS[name]
    epochs_for, head_for = "strategies training a head in epochs", "strategies with a head"
    ignored = [(flag, used_by) for flag, given, used, used_by in (
        (f"--k {k}", k != TrainConfig.k, name in K_STRATEGIES, " and ".join(K_STRATEGIES)),
        (f"--epochs {epochs}", epochs is not None, strategy.in_epochs, epochs_for),
        (f"--keep {keep}", keep != TrainConfig.keep, strategy.in_epochs, epochs_for),
        (f"--layer {layer}", layer is not None, strategy.trains_head, head_for),
        (f"--pooling {pooling}", pooling != "mean", strategy.trains_head, head_for),
        ("--head-option (or --task NAME:KIND)", bool(head_options), strategy.trains_head,
         head_for),
        (f"--window {window}", window is not None, name not in CLASSIC_KINDS,
         "strategies with an encoder"),
        (f"--encoder {encoder}", encoder != DEFAULT_ENCODER, name not in CLASSIC_KINDS,
         "strategies with an encoder"),
    ) if given and not used]
    if name in DECODER_STRATEGIES and not has_decoder(encoder):
        heads = ", ".join(n for n, s in JOBS.items() if s.trains_head and n not in DECODER_STRATEGIES)
        raise ValueError(f"--encoder {encoder}: the {name} strategy scores words with Whisper's "
                         f"decoder, and this encoder has none; give --strategy with a head on "
                         f"the encoder alone ({heads})")
    if ignored:
        flags = [flag for flag, _ in ignored]
        uses = "; ".join(dict.fromkeys(f"{flag.split()[0]} is for {who}" for flag, who in ignored))
        raise ValueError(f"{', '.join(flags)}: the {name} strategy does not use "
                         f"{'it' if len(flags) == 1 else 'them'} ({uses})")


@contextmanager
def rank_folder() -> Iterator[Path]:
    """The private, temporary work folder of a torchrun rank above 0: rank 0 alone holds the
    run's lock, checkpoints and model folder."""
    with tempfile.TemporaryDirectory(prefix="speechxfer-rank-") as work:
        yield Path(work)


def without_unlabelled(split: Split, tasks: tuple[str, ...]) -> Split:
    """``split`` less the clips with no label to use (a manifest row with empty cells), listed
    in its ``skipped``: a training or validation clip with no label of any of ``tasks`` trains
    nothing (and would be counted as trained), a test clip with no command label has no truth
    to score (and would crash the run after training, losing the model)."""
    def usable(c, needed) -> bool:
        return any(t in c.labels for t in needed)

    dropped = [(str(c.path), f"no {'/'.join(needed)} label: {what}")
               for part, needed, what in (
                   (split.train + split.validation, tasks, "nothing to train on"),
                   (split.test, (PRIMARY_TASK,), "nothing to score it against"))
               for c in part if not usable(c, needed)]
    if not dropped:
        return split
    return replace(split, train=[c for c in split.train if usable(c, tasks)],
                   validation=[c for c in split.validation if usable(c, tasks)],
                   test=[c for c in split.test if usable(c, (PRIMARY_TASK,))],
                   skipped=split.skipped + dropped)


def check_trainable(ds: Dataset, split: Split, pool: list, commands: list[str] | None) -> None:
    """Refuse a split that trains nothing, one label, or not every label it is scored on: a
    label only validation or test clips hold is never learnt, only scored wrong. Labels that
    differ only in case ("Yes" beside "yes") are warned about: one word split into two classes."""
    if not pool:
        raise DatasetError(f"{ds.location}: every clip is a validation or test clip (test "
                           f"speakers {sorted({str(c.speaker) for c in split.test})[:5]}); "
                           "nothing to train on")
    trained = {c.label for c in pool if c.label is not None}
    untrained = sorted(({c.label for c in split.test + split.validation} | set(commands or ()))
                       - trained - {None, *RESERVED})
    if untrained:
        raise DatasetError(f"{ds.location}: label(s) {untrained} have no training clips (only "
                           "validation or test ones)")
    if len(trained) < 2:
        raise DatasetError(f"{ds.location}: the training clips hold {len(trained)} label(s) "
                           f"{sorted(trained)}; a classifier needs at least 2 labels")
    twins = sorted(lab for lab in trained
                   if written_otherwise(lab, [o for o in trained if o != lab]))
    if twins:
        LOGGER.warning("%s: labels %s differ only in case: they train as separate classes "
                       "(rename the folders or manifest cells to make them one word)",
                       ds.location, twins[:10])


def warn_keeps_all(pool: list, per_class_n: int | None, shots: int | None) -> None:
    """A warning when ``--per-class`` / ``--shots`` asks for more clips than any label has:
    every clip trains, and the run is not the few-shot one its summary's number suggests."""
    if per_class_n:
        groups = Counter((c.label, c.speaker) for c in pool if c.label is not None)
        most, what = max(groups.values(), default=0), "of a label from one speaker"
    elif shots:
        groups = Counter(c.label for c in pool if c.label is not None and c.label not in RESERVED)
        most, what = max(groups.values(), default=0), "of a command"
    else:
        return
    asked = per_class_n or shots
    if most < asked:
        flag = "--per-class" if per_class_n else "--shots"
        LOGGER.warning("%s %d: the training clips hold at most %d %s; every clip is kept",
                       flag, asked, most, what)


def negative_clips(paths, ds: Dataset, split: Split, pool: list,
                   commands: list[str] | None) -> list:
    """The ``_unknown_`` clips of every ``--negatives`` dataset (``vocab.negatives``), checked
    against the voices no training clip has (a validation speaker whose other takes train is
    heard anyway) and against the run's own files."""
    held = sorted({c.speaker for c in split.test + split.validation if c.speaker}
                  - {c.speaker for c in pool})
    own = [c.path for c in ds.clips]
    return [c for path in paths for c in vocab_negatives(path, commands, held, own)]


def train_job(
    data: str | Path | None = None,
    encoder: str = DEFAULT_ENCODER,
    window: str | None = None,
    strategy: str = DEFAULT_STRATEGY,
    k: int = 2,
    per_class_n: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    out: str | Path = "runs/default",
    test_speakers: list[str] | None = None,
    tasks: tuple[str, ...] = (PRIMARY_TASK,),
    pooling: str = "mean",
    layer: int | None = None,
    device: str = "auto",
    lr_encoder: float = 1e-4,
    lr_head: float = 2e-3,
    batch_size: int = 32,
    head_options: dict[str, dict] | None = None,
    task_weights: dict[str, float] | None = None,
    evaluate: bool = True,
    commands: list[str] | None = None,
    shots: int | None = None,
    max_false_accept: float | None = None,
    augment: bool = False,
    noise: str | Path | None = None,
    augment_copies: int | None = None,
    keep: str = "best",
    speaker_speeds: tuple[int, ...] = (),
    negatives: list[str | Path] = (),
    spell_others: bool = False,
) -> dict:
    """Split by speaker, train under ``strategy`` (its job in ``JOBS``), evaluate on the
    held-out speakers, save the model folder; returns the train summary.

    ``commands`` makes the listed words the classes, every other word ``_unknown_`` and the
    clips of ``_silence_/`` ``_silence_`` (``load_training_data``). Then, for every strategy,
    a rejection threshold is calibrated on the validation clips of the training speakers for
    at most ``max_false_accept`` (default DEFAULT_MAX_FALSE_ACCEPT) of their unknown words and
    silence taken for a command, and saved with the model: ``predict`` returns ``_unknown_`` /
    ``_silence_`` below it. Given for data without such clips, it is refused, not ignored.

    ``shots`` keeps that many clips per command in total in the training pool, from as many
    speakers as possible (``vocab.shots``); unknown and silence clips, and validation, stay.

    ``augment`` adds ``augment_copies`` (default DEFAULT_AUGMENT_COPIES) seeded augmented
    copies of each training clip (``train.fit``: cached beside the clean one for frozen and
    top-k, a fresh draw per epoch for the others; extra training clips for classic and
    generative), with noise from the training ``_silence_`` clips, ``noise`` and synthetic.

    ``tasks`` beyond ``command`` need a strategy that trains a head (the neural ones and
    combined); ``head_options`` gives a task its head kind and options (e.g. ``{"speaker":
    {"kind": "embedding", "layer": 2}}``); ``task_weights`` scales each task's loss.

    ``keep="last"`` trains every epoch and keeps the last instead of the epoch of best command
    accuracy on validation (``"best"``): for a speaker model, whose voices that accuracy does
    not measure (the validation EER of each embedding task is in the history).

    ``speaker_speeds`` (percentages, e.g. ``(90, 110)``) adds a copy of every training clip
    at each speed whose embedding-task labels are new speakers (``augment.speed_speakers``):
    more voices for a speaker embedding head.

    ``negatives`` (with ``commands``): every clip of these datasets trains as ``_unknown_``
    (``vocab.negatives``), more "none of these" than the data's own other words; training only.

    ``spell_others`` (zero-shot and combined, with ``commands``): the decoder also spells the
    other words the training speakers said, and one scoring above every command is taken as
    ``_unknown_`` (``ZeroShotRecognizer`` aliases of ``_unknown_``).

    ``evaluate=False`` skips scoring the held-out speakers (a caller that scores them itself).

    With ``per_class_n`` the training pool keeps that many clips per label per speaker and no
    validation split is carved from so few clips: training runs the set number of epochs.

    The same ``seed`` gives the same weights (everything is seeded before any model is built);
    ``out`` is locked for the run, a crashed run resumes from the checkpoint in the sibling
    ``<out>.partial`` when started again with the same data and options, and ``out`` is
    replaced whole at the end (``store.atomic_folder``).
    """
    out = Path(out)
    commands = [nfc(w) for w in commands] if commands else commands  # as the data's labels
    if per_class_n and shots:
        raise ValueError("--per-class and --shots both choose the training clips; give one")
    if keep not in KEEP:
        raise ValueError(f"--keep must be one of {KEEP}, got {keep!r}")
    if speaker_speeds:
        from .augment import check_speeds

        speaker_speeds = check_speeds(speaker_speeds)
        if not any((head_options or {}).get(t, {}).get("kind") == "embedding" for t in tasks):
            raise ValueError("--speaker-speeds makes new speakers for an embedding task; the run "
                             "has none (--task speaker:embedding)")
    if negatives and not commands:
        raise ValueError("--negatives trains more _unknown_ clips; it needs --commands")
    if spell_others and not commands:
        raise ValueError("--spell-others spells the words that are not among --commands; it "
                         "needs --commands")
    job = strategy_of(strategy, tuple(tasks), augment, spell_others).job
    if epochs is not None and epochs < 1:  # not the strategy's default in disguise
        raise ValueError(f"--epochs must be 1 or more, got {epochs}")
    augment_spec = augment_options(augment, noise, augment_copies, seed)
    # refuses a file or a busy --out now; torchrun's other ranks write nothing of the run's
    lock = training_folder(out, is_model_folder) if is_main_process() else rank_folder()
    with lock as work:
        seed_everything(seed)
        ds = load_training_data(data or default_data(), commands)
        if max_false_accept is not None and not open_set(ds.labels):
            raise ValueError(f"--max-false-accept {max_false_accept}: {ds.location} has no _unknown_"
                             " or _silence_ clips to reject (--commands makes them)")
        split = without_unlabelled(split_dataset(ds, test_speakers or None, seed=seed),
                                   tuple(tasks))
        pool = split.train + (split.validation if per_class_n else [])  # ``Run.pools``
        check_trainable(ds, split, pool, commands)
        if strategy in DECODER_STRATEGIES:  # now, not when the prior is built after the head
            try:
                label_spellings(decoder_labels(pool))
            except ValueError as err:
                raise DatasetError(f"{ds.location}: {err}") from None
        warn_keeps_all(pool if per_class_n else split.train, per_class_n, shots)
        if shots:
            split = replace(split, train=keep_shots(split.train, shots, seed))
        extra = negative_clips(negatives, ds, split, pool, commands)
        split = replace(split, train=split.train + extra)
        return job(Run(
            ds=ds, split=split, out=out, work=work, strategy=strategy, encoder=encoder,
            window=window, k=k, per_class_n=per_class_n, epochs=epochs, seed=seed,
            tasks=tuple(tasks), pooling=pooling, layer=layer, device=device,
            lr_encoder=lr_encoder, lr_head=lr_head, batch_size=batch_size,
            head_options=head_options, task_weights=task_weights, evaluate=evaluate,
            commands=commands, shots=shots,
            max_false_accept=(DEFAULT_MAX_FALSE_ACCEPT if max_false_accept is None
                              else max_false_accept),
            augment=augment_spec, keep=keep, speaker_speeds=tuple(speaker_speeds),
            negatives=tuple(str(Path(p).resolve()) for p in negatives),
            negative_clips=tuple(extra), spell_others=spell_others))


def system_task_metrics(system: Recognizer, waves: list[torch.Tensor], clips: list,
                        report: dict) -> dict[str, dict]:
    """Every head's metrics (``multitask.task_metrics``), the command task's accuracy being
    ``report``'s: the system's own decision (after rejection, with a combined model's prior),
    not its head's bare argmax, so the two figures of one clip set never disagree."""
    tasks = task_metrics(system.task_model(), waves, clips)
    if PRIMARY_TASK in tasks:
        tasks[PRIMARY_TASK].update(n=report["n"], accuracy=report["accuracy"])
    return tasks


def system_info(summary: dict) -> dict:
    """What a saved system's config.json carries of its run: strategy, test metrics, data."""
    return {"strategy": summary["strategy"], "metrics": summary.get("test", {}),
            "data": {k: summary[k] for k in ("data", "train_speakers", "test_speakers",
                                             "n_train", "per_class")}}


def finish_job(system: Recognizer, summary: dict, split: Split | None, out: Path) -> dict:
    """Evaluate on the held-out speakers, write the reports, save the system and its summary.

    Every strategy ends here, so every model folder has the same files (``split=None``: save
    without scoring). The folder is written whole (``atomic_folder``): a kill leaves the old
    one or the new one, never reports of one run beside the weights of another.
    """
    report = None
    if split is not None and split.skipped:  # files the dataset reader could not use
        for path, problem in split.skipped:
            LOGGER.warning("skipped %s: %s", path, problem)
        summary["skipped"] = skipped_records(split.skipped) + summary["skipped"]
    if split is not None and split.test:
        test_w, test, skipped = load_waves(split.test, system.sample_rate)
        for path, problem in skipped:
            LOGGER.warning("skipped %s: %s", path, problem)
        summary["skipped"] = summary["skipped"] + skipped_records(skipped)
        if test:
            report = evaluate_system(system, test_w, [c.label for c in test])
            report["skipped"] = skipped_records(skipped)
            summary["test"] = {k: report[k] for k in ("n", "accuracy", "macro_f1",
                                                      "seconds_per_clip", "threshold", "open_set")
                               if k in report}
            if system.task_model() is not None:  # in test_report.* too, as eval's report
                report["tasks"] = system_task_metrics(system, test_w, test, report)
                summary["test"]["tasks"] = report["tasks"]
        else:  # the system is trained: saved unscored rather than lost
            LOGGER.warning("no usable clips left in the test set (%d skipped): the model is "
                           "saved without a test report", len(skipped))
    system.info = system_info(summary)
    if not is_main_process():  # a torchrun rank above 0: rank 0 saves the same system
        return summary
    with atomic_folder(out, is_model_folder) as folder:
        if report is not None:
            write_report(report, folder, "test_report",
                         f"Held-out speakers {summary['test_speakers']}")
        system.save(folder)
        (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def eval_job(model_dir: str | Path, data: str | Path, report_dir: str | Path | None = None,
             device: str = "cpu") -> dict:
    """Score every clip under ``data`` (any layout, any sample rate) with a saved model.

    For a model with ``_unknown_`` / ``_silence_`` the data is mapped as in training: words the
    model does not know become ``_unknown_``, the clips of ``_silence_/`` ``_silence_``
    (``vocab.map_for_model``); the report then scores what ``predict`` returns (after
    rejection) and adds the ``open_set`` figures.
    """
    if report_dir:  # before the clips are scored, not after: a bad folder loses no work
        try:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{report_dir}: cannot write the report there "
                             f"({err.strerror or err})") from None
    system = load(model_dir, pick_device(device))
    if open_set(system.labels):
        ds = load_with_silence(data) if SILENCE in system.labels else load_dataset(data)
        ds = map_for_model(ds, system.labels)
        _warn_unmatched_commands(ds, system.labels, data)
    else:
        ds = load_dataset(data)
    _warn_trained_speakers(ds, trained_speakers(system, model_dir), data)
    unknown = sorted(set(ds.labels) - set(system.labels))
    if unknown:
        raise DatasetError(
            f"{data}: labels {unknown} are not among the model's labels {system.labels} "
            f"(model: {model_dir})"
        )
    unlabeled = [(str(c.path), "no label to score against") for c in ds.clips if c.label is None]
    for path, problem in ds.skipped + unlabeled:
        LOGGER.warning("skipped %s: %s", path, problem)
    if len(unlabeled) == len(ds.clips):
        raise DatasetError(f"{data}: no clip has a label to score against")
    waves, kept, skipped = read_clips([c for c in ds.clips if c.label is not None],
                                      system.sample_rate, "evaluation")
    report = evaluate_system(system, waves, [c.label for c in kept])
    report["skipped"] = skipped_records(ds.skipped + unlabeled + skipped)
    if system.task_model() is not None:
        report["tasks"] = system_task_metrics(system, waves, kept, report)
    if report_dir:
        write_report(report, Path(report_dir), "eval_report", f"Evaluation on {data}")
    return report


def finished_run(folder: Path, wanted: dict) -> dict | None:
    """The train_summary.json of a ``train`` run finished in ``folder`` whose summary holds
    ``wanted``'s values (a recipe's rerun keeps it), None when none finished there. A run
    trained otherwise is a ValueError naming each difference, since scoring it as this fold
    could test voices it trained on or options it never had. ``data`` is compared as a
    resolved path, ``test_speakers`` as a set, ``strategy`` by its name.

    Every one of ``MODEL_OPTIONS`` is compared, ``wanted``'s value or else the default
    (``model_options``): a recipe that names only the options it sets still refuses a run
    trained with others. A summary saved before it recorded them is a ValueError too: what
    it was trained with cannot be told, and is never taken as matching."""
    summary = folder / "train_summary.json"
    if not ((folder / "config.json").is_file() and summary.is_file()):
        return None
    found = json.loads(summary.read_text("utf-8"))
    if missing := [key for key in MODEL_OPTIONS if key not in found]:
        raise ValueError(f"{folder}: saved before train_summary.json recorded the options it was "
                         f"trained with ({', '.join(missing)}), so they cannot be compared with "
                         "this run's; remove it or give another --work")
    strategy = wanted.get("strategy", found.get("strategy"))
    strategy = strategy.get("strategy") if isinstance(strategy, dict) else strategy
    wanted = {**wanted, **model_options(strategy, **{key: wanted.get(key)
                                                       for key in MODEL_OPTIONS})}
    differ = []
    for key, value in wanted.items():
        got = found.get(key)
        if key == "data":
            got, value = str(Path(got or "").resolve()), str(Path(value).resolve())
        elif key == "test_speakers":
            got, value = sorted(got or []), sorted(value)
        elif key == "strategy" and isinstance(got, dict):
            got = got.get("strategy")
        if got != value:
            differ.append(f"{key} {got!r}, not {value!r}")
    if differ:
        raise ValueError(f"{folder}: trained with other options ({'; '.join(differ)}); remove "
                         "it or give another --work")
    return found


def write_results(write: Callable[[str], None], files: Callable[[str], list[Path]],
                  suffix: str, *, finished: bool) -> None:
    """A recipe's results so far: ``write(suffix + "_partial")`` while the run goes on, so a run
    cut short keeps what it measured beside, not over, the last finished run's results;
    ``write(suffix)`` once it has finished, then the stale partial ``files`` go."""
    if not finished:
        write(f"{suffix}_partial")
        return
    write(suffix)
    for path in files(f"{suffix}_partial"):
        path.unlink(missing_ok=True)


def trained_speakers(system: Recognizer, model_dir: str | Path) -> set[str]:
    """The speakers a saved model trained on: config.json's ``data``, or for the systems that
    keep no run there (the classic ones) the train_summary.json beside it; empty if neither.
    An ensemble's are those of its members (member0/, member1/, ...)."""
    members = getattr(system, "members", None)
    if isinstance(members, list):
        return set().union(*(trained_speakers(m, Path(model_dir) / MEMBER_FOLDER.format(i))
                             for i, m in enumerate(members)))
    info = getattr(system, "info", None)
    run = info.get("data") if isinstance(info, dict) else None
    trained = run.get("train_speakers") if isinstance(run, dict) else None
    if trained is None:
        try:
            summary = json.loads((Path(model_dir) / "train_summary.json").read_text("utf-8"))
            trained = summary.get("train_speakers")
        except (OSError, ValueError, AttributeError):
            return set()
    return {s for s in trained if isinstance(s, str)} if isinstance(trained, list) else set()


def _warn_trained_speakers(ds: Dataset, heard: set[str], data: str | Path) -> None:
    """Say when the data holds voices the model trained on: eval scores every clip, and the
    training data itself (a folder with its own test list, a run without ``--test-speaker``)
    would read as accuracy on new voices."""
    clips = [c for c in ds.clips if c.speaker is not None and c.speaker in heard]
    if clips:
        names = sorted({c.speaker for c in clips})
        LOGGER.warning("%s: %d of %d clips are by %d speaker(s) the model trained on (%s): its "
                       "figures overstate how it does on new voices", data, len(clips),
                       len(ds.clips), len(names), ", ".join(names[:5]))


def _warn_unmatched_commands(ds: Dataset, labels: list[str], data: str | Path) -> None:
    """Say when the data's words reach none of an open-set model's commands, or differ from one
    only in case: each is scored as ``_unknown_``, and a report of rejections (accuracy 1.0 on
    another model's words) would otherwise pass for a good one."""
    commands = [lab for lab in labels if is_command(lab)]
    mapped = sorted({c.word for c in ds.clips if c.label == UNKNOWN and is_command(c.word)})
    near = [w for w in mapped if written_otherwise(w, commands)]
    if near:
        LOGGER.warning("%s: labels %s differ from the model's commands only in case (or in "
                       "Unicode form: a model saved with a macOS folder's name); they are "
                       "scored as %s", data, near[:10], UNKNOWN)
    elif mapped and not any(c.label in commands for c in ds.clips):
        LOGGER.warning("%s: no clip is one of the model's commands %s; every word (%s) is "
                       "scored as %s", data, commands[:12], ", ".join(mapped[:10]), UNKNOWN)


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))
