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
from sklearn.metrics import roc_curve

from .audio import SAMPLE_RATE, Clip, load
from .heads import MISSING, SEP, UNKNOWN_MARK, encode_multilabel
from .model import CommandClassifier

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


def identification_accuracy(probs: np.ndarray, classes: list[str], truth: list[str | None]) -> float:
    """Closed-set accuracy over the clips whose true class the model knows."""
    index = {c: i for i, c in enumerate(classes)}
    rows = [(i, index[t]) for i, t in enumerate(truth) if t in index]
    if not rows:
        return float("nan")
    return float(np.mean([probs[i].argmax() == j for i, j in rows]))


def equal_error_rate(embeddings: np.ndarray, speakers: list[str]) -> float:
    """Verification EER over every same/different pair, scored by cosine similarity.

    The threshold where false acceptances equal false rejections; read off sklearn's ROC
    by linear interpolation between the two points that straddle it.
    """
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    sims = emb @ emb.T
    spk = np.array(speakers)
    upper = np.triu_indices(len(spk), k=1)
    same = (spk[:, None] == spk[None, :])[upper]
    if same.all() or not same.any():
        raise ValueError("EER needs both same-speaker and different-speaker pairs")
    fpr, tpr, _ = roc_curve(same, sims[upper])
    fnr = 1 - tpr
    i = int(np.nonzero(fnr <= fpr)[0][0])
    if i == 0:
        return float(fpr[0])
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def task_metrics(model: CommandClassifier, waves: list[torch.Tensor], clips: list[Clip]) -> dict[str, dict]:
    """Every head's headline metric on the clips labelled for it.

    single: accuracy; multi: micro-F1 over known entries; embedding: identification accuracy
    among the speakers the model knows, plus verification EER over all labelled clips.
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
        if kind == "multi":
            out[task] = {"kind": kind, "n": len(idx),
                         "micro_f1": multilabel_micro_f1(probs[task][idx], truth, model.tasks[task])}
            continue
        report = {"kind": kind, "n": len(idx),
                  "accuracy": identification_accuracy(probs[task][idx], model.tasks[task], truth)}
        if kind == "embedding" and len(set(truth)) > 1:
            report["eer"] = equal_error_rate(vectors[task][idx], truth)
        out[task] = report
    return out
