"""Multi-task data and metrics: concatenated multi-command clips, multi-label F1, speaker scores.

Concatenation set (``make_concatenations``): each clip joins one to three command clips of the
same speaker with 0.1-0.3 s gaps and low white noise (so the gaps are not digital silence), and
``manifest.csv`` beside the WAVs reads::

    path,speaker,commands
    concat_00000.wav,george,1|7
    concat_00001.wav,,3|?5
    concat_00002.wav,theo,

- ``commands`` (a ``multi`` task): the commands present, joined by ``|``; every other class is
  absent. A ``?c`` token marks class ``c``'s entry unknown (hidden on purpose, masked out of the
  loss); an empty cell hides the whole label.
- ``speaker``: the speaker, or empty where hidden on purpose.
``data.load_dataset`` reads it as any manifest: every column but path/speaker/split is a task.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .audio import SAMPLE_RATE, Clip, load
from .evaluate import eer_of_pairs
from .heads import MISSING, SEP, UNKNOWN_MARK, encode_multilabel
from .model import PRIMARY_TASK, CommandClassifier

MULTI_TASK = "commands"


def make_concatenations(
    clips: list[Clip],
    n: int,
    seed: int,
    out_dir: str | Path,
    max_parts: int = 3,
    noise: float = 0.003,
    hide_label: float = 0.0,
    hide_entry: float = 0.0,
    hide_speaker: float = 0.0,
) -> list[Clip]:
    """Write ``n`` concatenated clips + manifest.csv; return them as Clips (hidden labels absent).

    ``hide_label``/``hide_entry``/``hide_speaker`` are the chances of hiding a clip's whole
    multi-label, one class entry of it, or its speaker, to exercise the masked losses.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    by_speaker: dict[str, list[Clip]] = {}
    for c in clips:
        by_speaker.setdefault(c.speaker or "", []).append(c)
    speakers = sorted(by_speaker)
    classes = sorted({c.label for c in clips if c.label is not None})
    rows, made = [], []
    for i in range(n):
        speaker = rng.choice(speakers)
        parts = rng.sample(by_speaker[speaker], min(rng.randint(1, max_parts),
                                                    len(by_speaker[speaker])))
        pieces = []
        for part in parts:
            pieces += [load(part.path, SAMPLE_RATE).numpy(),
                       np.zeros(int(SAMPLE_RATE * rng.uniform(0.1, 0.3)), np.float32)]
        wave = np.concatenate(pieces[:-1])
        wave += np.random.default_rng(seed * 100_003 + i).normal(0, noise, wave.shape)
        wave = (wave / max(1.0, float(np.abs(wave).max()))).astype(np.float32)
        path = out_dir / f"concat_{i:05d}.wav"
        sf.write(path, wave, SAMPLE_RATE)
        present = sorted({p.label for p in parts})
        value = ""
        if rng.random() >= hide_label:
            tokens = list(present)
            if rng.random() < hide_entry:
                hidden = rng.choice(classes)
                tokens = [t for t in tokens if t != hidden] + [UNKNOWN_MARK + hidden]
            value = SEP.join(tokens)
        spk = "" if rng.random() < hide_speaker else speaker
        rows.append({"path": path.name, "speaker": spk, MULTI_TASK: value})
        labels = {k: v for k, v in ((MULTI_TASK, value), ("speaker", spk)) if v}
        made.append(Clip(path, labels, spk or None))
    with (out_dir / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "speaker", MULTI_TASK])
        writer.writeheader()
        writer.writerows(rows)
    return made


def multilabel_micro_f1(probs: np.ndarray, values: list[str | None], classes: list[str],
                        threshold: float = 0.5) -> float:
    """Micro-F1 over the known entries of multi-label values (unknown entries skipped)."""
    truth = np.array([encode_multilabel(v, classes) for v in values]).reshape(len(values), -1)
    known = truth != MISSING
    pred = probs >= threshold
    tp = float((pred & (truth == 1) & known).sum())
    fp = float((pred & (truth == 0) & known).sum())
    fn = float((~pred & (truth == 1) & known).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1.0)


def identification_accuracy(probs: np.ndarray, classes: list[str],
                            truth: list[str | None]) -> float | None:
    """Closed-set accuracy over the clips whose true class the model knows; None if there are
    none (a class the head never saw cannot be identified, only verified)."""
    index = {c: i for i, c in enumerate(classes)}
    rows = [(i, index[t]) for i, t in enumerate(truth) if t in index]
    if not rows:
        return None
    return float(np.mean([probs[i].argmax() == j for i, j in rows]))


def answerable(value: str, kind: str, classes: list[str]) -> bool:
    """Whether a head of ``kind`` over ``classes`` could answer a clip labelled ``value``: a
    single or embedding class it knows; a multi-label naming one of its classes present, or
    none present outside them (a clip of new speakers only names classes it cannot predict)."""
    if kind != "multi":
        return value in classes
    present = {t for t in value.split(SEP) if t and not t.startswith(UNKNOWN_MARK)}
    return not present or bool(present & set(classes))


def task_metrics(model: CommandClassifier, waves: list[torch.Tensor], clips: list[Clip]) -> dict[str, dict]:
    """Every head's headline metric on the clips labelled for it; never a ``nan``.

    Each is over the ``n_known`` clips the head can answer: single and embedding, identification
    ``accuracy`` over the clips whose class the head was trained on; multi, ``micro_f1`` over
    the known entries of every clip, once one names a class of the head (a clip of new speakers
    only is answered right by naming none present, wrong by naming one). For a single or
    embedding task other than the command, the ``n_unseen`` clips of classes the head never saw
    (test speakers absent from training) are left out of that figure, since no answer of the
    head could be right. With no known clip the figure is None and ``note`` says why (a 0.0
    would read as a broken head). Single and embedding heads score the unseen clips by verification instead:
    ``eer`` over the same- and different-class pairs among them, by cosine of an embedding
    head's vectors or of a single head's centred log-probabilities (its logits up to a
    constant). An embedding head also reports ``eer_known``, the same over the known classes'
    clips. An EER that cannot be computed (unseen clips of one speaker only) is left out.
    """
    vectors = model.predict_all(waves, embeddings=True)
    with torch.no_grad():
        probs = {t: model.heads[t].probabilities(torch.from_numpy(v)).numpy()
                 if model.kinds[t] == "embedding" else v for t, v in vectors.items()}
    out: dict[str, dict] = {}
    for task, kind in model.kinds.items():
        idx = [i for i, c in enumerate(clips) if c.labels.get(task)]
        if not idx:
            continue
        truth = [clips[i].labels[task] for i in idx]
        classes = model.tasks[task]
        known = [k for k, t in enumerate(truth) if answerable(t, kind, classes)]
        unseen = [k for k, t in enumerate(truth) if not answerable(t, kind, classes)]
        report: dict = {"kind": kind, "n": len(idx), "n_known": len(known)}
        if known and kind == "multi":  # over every clip: "none present" answers new voices
            report["micro_f1"] = multilabel_micro_f1(probs[task][idx], truth, classes)
        elif known:
            report["accuracy"] = identification_accuracy(probs[task][idx], classes, truth)
        elif task != PRIMARY_TASK:
            figure, name = ("micro_f1", "micro-F1") if kind == "multi" else ("accuracy",) * 2
            report[figure] = None
            report["note"] = (f"no {name}: none of these clips' {task} is among the "
                              f"{len(classes)} the head trained on: {', '.join(classes[:5])}"
                              f"{', ...' if len(classes) > 5 else ''}")
        if kind == "multi":
            if unseen:
                report["n_unseen"] = len(unseen)
            out[task] = report
            continue
        if kind == "embedding":
            eer = eer_of_pairs(vectors[task][[idx[k] for k in known]], [truth[k] for k in known])
            if eer is not None:
                report["eer_known"] = eer
        if task != PRIMARY_TASK and unseen:
            report["n_unseen"] = len(unseen)
            rows = [idx[k] for k in unseen]
            if kind == "embedding":
                emb = vectors[task][rows]
            else:
                logp = np.log(np.clip(probs[task][rows], 1e-30, None))
                emb = logp - logp.mean(axis=1, keepdims=True)
            eer = eer_of_pairs(emb, [truth[k] for k in unseen])
            if eer is not None:
                report["eer"] = eer
        out[task] = report
    return out
