"""The jobs the CLI and recipes run: train-evaluate-save, and evaluate a saved model.

Each job is a plain function returning a JSON-ready dict, so the CLI only parses arguments
and the recipes call the same code the README's commands do.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .classic import CLASSIC_KINDS, build_classic
from .data import DatasetError, Split, load_dataset, load_waves, per_class, split_dataset
from .encoders import build_encoder
from .encoders.registry import WHISPER_DEFAULT_WINDOW
from .evaluate import score, write_report
from .heads import multilabel_classes
from .log import LOGGER
from .model import PRIMARY_TASK, CommandClassifier, Recognizer, is_model_folder, load_model
from .multitask import task_metrics
from .store import atomic_folder, training_folder
from .train import TrainConfig, default_epochs, fit, seed_everything

DEFAULT_ENCODER = "whisper-tiny.en"
# the frozen head times the decoder's zero-shot prior: the best measured speaker-independent
# accuracy at every data size (recipes/zero_shot_vs_finetune), at about 100 ms per clip on a CPU
DEFAULT_STRATEGY = "combined"
DEFAULT_TEST_SPEAKER = "theo"  # held out by the no-flag main job (bundled data)


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


def read_clips(clips, sample_rate: int, what: str):
    """Load audio, printing each skipped clip; fail clearly if nothing is usable."""
    waves, kept, skipped = load_waves(clips, sample_rate)
    for path, problem in skipped:
        LOGGER.warning("skipped %s: %s", path, problem)
    if clips and not kept:
        raise DatasetError(f"no usable clips left in the {what} set ({len(skipped)} skipped)")
    return waves, kept, skipped


def evaluate_system(system: Recognizer, waves: list[torch.Tensor], truth: list[str]) -> dict:
    """Score any system and time its inference per clip."""
    start = time.perf_counter()
    probs = system.predict_proba(waves)
    report = score(system.labels, truth, probs)
    report["seconds_per_clip"] = (time.perf_counter() - start) / max(len(waves), 1)
    return report


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
) -> dict:
    """Split by speaker, fine-tune, evaluate on the held-out speakers, save the model folder.

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
    with training_folder(out, is_model_folder) as work:  # refuses a file or a busy --out now
        seed_everything(seed)
        epochs = epochs or default_epochs(strategy)
        ds = load_dataset(data or default_data())
        if test_speakers is None and data is None:
            test_speakers = [DEFAULT_TEST_SPEAKER]
        split = split_dataset(ds, test_speakers or None, seed=seed)
        if strategy == "zero-shot":  # nothing to train: label names only, then evaluate and save
            from .zeroshot import zero_shot_job

            return zero_shot_job(ds, split, encoder, window or WHISPER_DEFAULT_WINDOW, out)
        if strategy == "generative":  # the decoder's last block, tuned on the label scores
            from .zeroshot import generative_job

            return generative_job(ds, split, encoder, window or WHISPER_DEFAULT_WINDOW, out,
                                  per_class_n, seed)
        if strategy == "combined":  # a frozen head times the zero-shot prior
            from .zeroshot import combined_job

            return combined_job(data or default_data(), split, encoder, window, out, per_class_n,
                                seed, test_speakers, epochs=epochs, tasks=tasks, pooling=pooling,
                                layer=layer, device=device, lr_head=lr_head, batch_size=batch_size)
        train, val = split.train, split.validation
        if per_class_n:
            train, val = per_class(train + val, per_class_n, seed), []
        if strategy in CLASSIC_KINDS:  # the MFCC pipeline: no encoder, no validation needed
            return classic_job(ds, split, train + val, strategy, out, per_class_n, seed)
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
            "strategy": config.to_dict(),
        }
        result = fit(model, train_w, [c.labels for c in train], val_w, [c.labels for c in val],
                     config, work / "checkpoint", identity=identity)
        train_seconds = time.perf_counter() - started
        summary = {
            "data": str(ds.root), "layout": ds.layout, "encoder": encoder, "window": enc.window,
            "strategy": config.to_dict(), "per_class": per_class_n,
            "train_speakers": sorted({c.speaker for c in train if c.speaker}),
            "test_speakers": sorted({c.speaker for c in split.test if c.speaker}),
            "n_train": len(train), "n_validation": len(val), "n_test": len(split.test),
            "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from,
            "history": result.history, "train_seconds": train_seconds,
            "skipped": [{"path": p, "problem": why} for p, why in skipped + skipped_val],
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        return finish_job(model, summary, split if evaluate else None, out)


def classic_job(ds, split, train: list, kind: str, out: Path, per_class_n: int | None,
                seed: int) -> dict:
    """Fit a classic recogniser (MFCC + GMM-HMM / DTW / SVM), evaluate, save like any model."""
    system = build_classic(kind, seed=seed)
    started = time.perf_counter()
    train_w, train, skipped = read_clips(train, system.sample_rate, "training")
    system.fit(train_w, [c.label for c in train])
    summary = {
        "data": str(ds.root), "layout": ds.layout, "strategy": {"strategy": kind},
        "per_class": per_class_n, "train_speakers": sorted({c.speaker for c in train if c.speaker}),
        "test_speakers": sorted({c.speaker for c in split.test if c.speaker}),
        "n_train": len(train), "n_validation": 0, "n_test": len(split.test),
        "train_seconds": time.perf_counter() - started,
        "skipped": [{"path": p, "problem": why} for p, why in skipped],
    }
    return finish_job(system, summary, split, out)


def finish_job(system: Recognizer, summary: dict, split: Split | None, out: Path) -> dict:
    """Evaluate on the held-out speakers, write the reports, save the system and its summary.

    Every strategy ends here, so every model folder has the same files (``split=None``: save
    without scoring). The folder is written whole (``atomic_folder``): a kill leaves the old
    one or the new one, never reports of one run beside the weights of another.
    """
    report = None
    if split is not None and split.test:
        test_w, test, skipped = read_clips(split.test, system.sample_rate, "test")
        report = evaluate_system(system, test_w, [c.label for c in test])
        report["skipped"] = [{"path": p, "problem": why} for p, why in skipped]
        summary["skipped"] = summary["skipped"] + report["skipped"]
        summary["test"] = {k: report[k] for k in ("n", "accuracy", "macro_f1", "seconds_per_clip")}
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
    """Score every clip under ``data`` (any layout, any sample rate) with a saved model."""
    system = load_model(model_dir)
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
    report["skipped"] = [{"path": p, "problem": why}
                         for p, why in ds.skipped + unlabeled + skipped]
    if isinstance(system, CommandClassifier) and len(system.tasks) > 1:
        report["tasks"] = task_metrics(system, waves, kept)
    if report_dir:
        write_report(report, Path(report_dir), "eval_report", f"Evaluation on {data}")
    return report


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))
