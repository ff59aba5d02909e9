"""The jobs the CLI and recipes run: train-evaluate-save, and evaluate a saved model.

Each job is a plain function returning a JSON-ready dict, so the CLI only parses arguments
and the recipes call the same code the README's commands do.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .audio import SILENCE_PEAK
from .classic import CLASSIC_KINDS, build_classic
from .data import Dataset, DatasetError, Split, load_dataset, load_waves, per_class, split_dataset
from .encoders import build_encoder
from .encoders.registry import WHISPER_DEFAULT_WINDOW
from .evaluate import score, write_report
from .heads import multilabel_classes
from .log import LOGGER
from .model import PRIMARY_TASK, CommandClassifier, Recognizer, is_model_folder, load_model
from .multitask import task_metrics
from .openset import DEFAULT_MAX_FALSE_ACCEPT, calibrate_threshold, open_set_metrics, open_set_rates
from .store import atomic_folder, training_folder
from .train import TrainConfig, default_epochs, fit, seed_everything
from .vocab import RESERVED, SILENCE, apply_commands, is_command, load_with_silence, map_for_model
from .vocab import shots as keep_shots

if TYPE_CHECKING:  # speechbrain loads only when a run augments
    from .augment import Augmenter

DEFAULT_ENCODER = "whisper-tiny.en"
# the frozen head times the decoder's zero-shot prior: the best measured speaker-independent
# accuracy at every data size (recipes/zero_shot_vs_finetune), at about 100 ms per clip on a CPU
DEFAULT_STRATEGY = "combined"
DEFAULT_TEST_SPEAKER = "theo"  # held out by the no-flag main job (bundled data)
DEFAULT_AUGMENT_COPIES = 4  # K augmented copies of each training clip with --augment
# The lowest rejection threshold calibration may set: a command is accepted only when it is more
# probable than every alternative together. Validation speakers give a few dozen unknown and
# silence clips, which a good model often rejects all of at any threshold; calibration alone
# would then accept a command at any probability above the rejection classes'.
MIN_THRESHOLD = 0.5


def default_data() -> Path:
    """The bundled FSDD subset: in the source tree, or under the working directory.

    The digits ship with the source repository, not with the installed package (a wheel holds
    no datasets), so an installed copy run elsewhere must be pointed at data.
    """
    places = [Path(__file__).resolve().parents[1], Path.cwd()]
    for root in places:
        if (root / "data" / "fsdd" / "recordings").is_dir():
            return root / "data" / "fsdd"
    looked = ", ".join(str(root / "data" / "fsdd") for root in places)
    raise DatasetError(
        f"no dataset given and the bundled digits (data/fsdd) are not here (looked in {looked}): "
        "they ship with the source repository, not the installed package; run from a checkout, "
        "or pass --data DIR (FSDD-style {label}_{speaker}_{take}.wav files, a folder per label, "
        "or a .csv/.jsonl manifest)"
    )


def skipped_records(pairs) -> list[dict[str, str]]:
    """(path, problem) pairs of unusable files as the JSON rows summaries and reports list."""
    return [{"path": str(path), "problem": problem} for path, problem in pairs]


def read_clips(clips, sample_rate: int, what: str):
    """Load audio, printing each skipped clip; fail clearly if nothing is usable."""
    waves, kept, skipped = load_waves(clips, sample_rate)
    for path, problem in skipped:
        LOGGER.warning("skipped %s: %s", path, problem)
    if clips and not kept:
        raise DatasetError(f"no usable clips left in the {what} set ({len(skipped)} skipped)")
    return waves, kept, skipped


def open_set(labels: list[str]) -> bool:
    """True for a vocabulary with ``_unknown_`` or ``_silence_``: the open-set task."""
    return any(lab in RESERVED for lab in labels)


def evaluate_system(system: Recognizer, waves: list[torch.Tensor], truth: list[str]) -> dict:
    """Score any system as ``predict`` decides (after rejection when it has a threshold) and
    time its inference per clip. Open-set systems and truths add ``open_set``: command recall,
    unknown-word and silence false accepts (``openset.open_set_metrics``)."""
    start = time.perf_counter()
    probs = system.predict_proba(waves)
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
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
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
    copies = augmenter.copies(waves)
    return waves + [w for copy in copies for w in copy], clips * (len(copies) + 1)


def clips_digest(clips) -> str:
    """A short hash of the clips' paths and labels, order-free: the exact set a run trained on."""
    rows = sorted([os.path.abspath(c.path), sorted(c.labels.items())] for c in clips)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


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
    max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT,
    augment: bool = False,
    noise: str | Path | None = None,
    augment_copies: int | None = None,
) -> dict:
    """Split by speaker, fine-tune, evaluate on the held-out speakers, save the model folder.

    ``commands`` makes the listed words the classes, every other word ``_unknown_`` and the
    clips of ``_silence_/`` ``_silence_`` (``load_training_data``). Then, for every strategy,
    a rejection threshold is calibrated on the validation clips of the training speakers for
    at most ``max_false_accept`` of their unknown words and silence taken for a command, and
    saved with the model: ``predict`` returns ``_unknown_`` / ``_silence_`` below it.

    ``shots`` keeps that many clips per command in total in the training pool, from as many
    speakers as possible (``vocab.shots``); unknown and silence clips, and validation, stay.

    ``augment`` adds ``augment_copies`` (default DEFAULT_AUGMENT_COPIES) seeded augmented
    copies of each training clip (``train.fit``: cached beside the clean one for frozen and
    top-k, a fresh draw per epoch for the others; extra training clips for classic and
    generative), with noise from the training ``_silence_`` clips, ``noise`` and synthetic.

    ``head_options`` gives a task its head kind and options (e.g. ``{"speaker": {"kind":
    "embedding", "layer": 2}}``); ``task_weights`` scales each task's loss.

    ``evaluate=False`` skips scoring the held-out speakers (a caller that scores them itself).

    With ``per_class_n`` the training pool keeps that many clips per label per speaker and no
    validation split is carved from so few clips: training runs the set number of epochs.

    The same ``seed`` gives the same weights (everything is seeded before any model is built);
    ``out`` is locked for the run, a crashed run resumes from the checkpoint in the sibling
    ``<out>.partial`` when started again with the same data and options, and ``out`` is
    replaced whole at the end (``store.atomic_folder``).
    """
    out = Path(out)
    if per_class_n and shots:
        raise ValueError("--per-class and --shots both choose the training clips; give one")
    if augment and strategy == "zero-shot":
        raise ValueError("--augment: the zero-shot strategy trains nothing to augment")
    augment_spec = augment_options(augment, noise, augment_copies, seed)
    with training_folder(out, is_model_folder) as work:  # refuses a file or a busy --out now
        seed_everything(seed)
        epochs = epochs or default_epochs(strategy)
        ds = load_training_data(data or default_data(), commands)
        if test_speakers is None and data is None:
            test_speakers = [DEFAULT_TEST_SPEAKER]
        split = split_dataset(ds, test_speakers or None, seed=seed)
        if shots:
            split = replace(split, train=keep_shots(split.train, shots, seed))
        if strategy == "zero-shot":  # nothing to train: label names only, then evaluate and save
            from .zeroshot import zero_shot_job

            return zero_shot_job(ds, split, encoder, window or WHISPER_DEFAULT_WINDOW, out,
                                 max_false_accept=max_false_accept)
        if strategy == "generative":  # the decoder's last block, tuned on the label scores
            from .zeroshot import generative_job

            return generative_job(ds, split, encoder, window or WHISPER_DEFAULT_WINDOW, out,
                                  per_class_n, seed, max_false_accept=max_false_accept,
                                  augment=augment_spec)
        if strategy == "combined":  # a frozen head times the zero-shot prior
            from .zeroshot import combined_job

            return combined_job(data or default_data(), split, encoder, window, out, per_class_n,
                                seed, test_speakers, epochs=epochs, tasks=tasks, pooling=pooling,
                                layer=layer, device=device, lr_head=lr_head, batch_size=batch_size,
                                commands=commands, shots=shots, max_false_accept=max_false_accept,
                                augment=augment, noise=noise, augment_copies=augment_copies)
        train, val = split.train, split.validation
        if per_class_n:
            train, val = per_class(train + val, per_class_n, seed), []
        if strategy in CLASSIC_KINDS:  # the MFCC pipeline: validation only calibrates rejection
            held = val if open_set(ds.labels) else []
            return classic_job(ds, split, train if held else train + val, strategy, out,
                               per_class_n, seed, held=held, max_false_accept=max_false_accept,
                               augment=augment_spec)
        started = time.perf_counter()
        enc = build_encoder(encoder, window=window, pretrained=strategy != "scratch")
        kinds = {t: (head_options or {}).get(t, {}).get("kind", "single") for t in tasks}
        task_labels = {t: (multilabel_classes([c.labels[t] for c in train if t in c.labels])
                           if kinds[t] == "multi"
                           else sorted({c.labels[t] for c in train if t in c.labels}))
                       for t in tasks}
        empty = [t for t, labs in task_labels.items() if not labs]
        if empty:
            raise DatasetError(f"{ds.root}: no training labels for task(s) {empty}")
        model = CommandClassifier(enc, task_labels, layer=layer, pooling=pooling,
                                  head_options=head_options)
        train_w, train, skipped = read_clips(train, enc.sample_rate, "training")
        val_w, val, skipped_val = read_clips(val, enc.sample_rate, "validation")
        augmenter = make_augmenter(augment_spec, train_w, train, enc.sample_rate)
        config = TrainConfig(strategy=strategy, k=k, epochs=epochs, seed=seed, device=device,
                             lr_encoder=lr_encoder, lr_head=lr_head, batch_size=batch_size,
                             task_weights=dict(task_weights or {}))
        identity = {  # what makes a checkpoint this run's: anything else starts afresh
            "data": str(ds.root.resolve()), "train": clips_digest(train),
            "validation": clips_digest(val),
            "test_speakers": sorted({str(c.speaker) for c in split.test}),
            "per_class": per_class_n, "encoder": encoder, "window": enc.window,
            "head": {"tasks": list(tasks), "kinds": kinds, "pooling": pooling, "layer": layer,
                     "options": head_options or {}},
            "strategy": config.to_dict(), "commands": commands, "shots": shots,
            "augment": augment_spec,
        }
        result = fit(model, train_w, [c.labels for c in train], val_w, [c.labels for c in val],
                     config, work / "checkpoint", identity=identity, augmenter=augmenter)
        rejection = calibrate_rejection(model, val_w, [c.label for c in val], max_false_accept)
        train_seconds = time.perf_counter() - started
        summary = {
            "data": str(ds.root), "layout": ds.layout, "encoder": encoder, "window": enc.window,
            "strategy": config.to_dict(), "per_class": per_class_n, "commands": commands,
            "shots": shots, "augment": augment_spec, "rejection": rejection,
            "train_speakers": sorted({c.speaker for c in train if c.speaker}),
            "test_speakers": sorted({c.speaker for c in split.test if c.speaker}),
            "n_train": len(train), "n_validation": len(val), "n_test": len(split.test),
            "n_train_examples": result.train_examples,
            "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from,
            "history": result.history, "train_seconds": train_seconds,
            "skipped": skipped_records(skipped + skipped_val),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        return finish_job(model, summary, split if evaluate else None, out)


def classic_job(ds, split, train: list, kind: str, out: Path, per_class_n: int | None,
                seed: int, held: list | None = None,
                max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT,
                augment: dict | None = None) -> dict:
    """Fit a classic recogniser (MFCC + GMM-HMM / DTW / SVM), evaluate, save like any model.

    ``held`` (validation clips of the training speakers, not trained on) calibrates the
    rejection threshold of an open-set vocabulary; ``augment`` (``augment_options``) adds the
    augmented copies as extra training clips.
    """
    system = build_classic(kind, seed=seed)
    started = time.perf_counter()
    train_w, train, skipped = read_clips(train, system.sample_rate, "training")
    augmenter = make_augmenter(augment, train_w, train, system.sample_rate)
    fit_w, fit_clips = augmented(augmenter, train_w, train)
    system.fit(fit_w, [c.label for c in fit_clips])
    held_w, held, skipped_held = read_clips(held or [], system.sample_rate, "validation")
    rejection = calibrate_rejection(system, held_w, [c.label for c in held], max_false_accept)
    summary = {
        "data": str(ds.root), "layout": ds.layout, "strategy": {"strategy": kind},
        "per_class": per_class_n, "augment": augment, "rejection": rejection,
        "train_speakers": sorted({c.speaker for c in train if c.speaker}),
        "test_speakers": sorted({c.speaker for c in split.test if c.speaker}),
        "n_train": len(train), "n_validation": len(held), "n_test": len(split.test),
        "train_seconds": time.perf_counter() - started,
        "skipped": skipped_records(skipped + skipped_held),
    }
    return finish_job(system, summary, split, out)


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
        test_w, test, skipped = read_clips(split.test, system.sample_rate, "test")
        report = evaluate_system(system, test_w, [c.label for c in test])
        report["skipped"] = skipped_records(skipped)
        summary["skipped"] = summary["skipped"] + report["skipped"]
        summary["test"] = {k: report[k] for k in ("n", "accuracy", "macro_f1", "seconds_per_clip",
                                                  "threshold", "open_set") if k in report}
        if isinstance(system, CommandClassifier) and len(system.tasks) > 1:
            summary["test"]["tasks"] = task_metrics(system, test_w, test)
    system.info = {"strategy": summary["strategy"], "metrics": summary.get("test", {}),
                   "data": {k: summary[k] for k in ("data", "train_speakers", "test_speakers",
                                                      "n_train", "per_class")}}
    with atomic_folder(out, is_model_folder) as folder:
        if report is not None:
            write_report(report, folder, "test_report",
                         f"Held-out speakers {summary['test_speakers']}")
        system.save(folder)
        (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def eval_job(model_dir: str | Path, data: str | Path, report_dir: str | Path | None = None) -> dict:
    """Score every clip under ``data`` (any layout, any sample rate) with a saved model.

    For a model with ``_unknown_`` / ``_silence_`` the data is mapped as in training: words the
    model does not know become ``_unknown_``, the clips of ``_silence_/`` ``_silence_``
    (``vocab.map_for_model``); the report then scores what ``predict`` returns (after
    rejection) and adds the ``open_set`` figures.
    """
    system = load_model(model_dir)
    if open_set(system.labels):
        ds = load_with_silence(data) if SILENCE in system.labels else load_dataset(data)
        ds = map_for_model(ds, system.labels)
    else:
        ds = load_dataset(data)
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
    if isinstance(system, CommandClassifier) and len(system.tasks) > 1:
        report["tasks"] = task_metrics(system, waves, kept)
    if report_dir:
        write_report(report, Path(report_dir), "eval_report", f"Evaluation on {data}")
    return report


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))
