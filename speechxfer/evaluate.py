"""Metrics and reports: JSON for machines, Markdown for people, a confusion-matrix PNG.

Every figure stored or printed is a number that was measured: one that cannot be computed on
the clips at hand (no clip of a known class, no pair to verify) is left out, never ``nan``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_curve


def cohort_normalisation(n_speakers: int, source: str) -> str:
    """What a speaker report's ``normalisation`` says of scores S-normed against a background
    cohort: every backend says it alike, so two reports compare at a glance."""
    return f"S-norm against the {n_speakers} speakers of {source}"


def score(labels: list[str], truth: list[str], probs: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Truth labels the model does not know count as errors (they can never be predicted).
    """
    return score_predictions(labels, truth, [labels[i] for i in probs.argmax(1)])


def score_predictions(labels: list[str], truth: list[str], predicted: list[str]) -> dict:
    """``score`` for decisions already made (e.g. after open-set rejection).

    Classes are the model's labels plus any other label in the truth or the predictions, so a
    rejection class the model has no column for (``_unknown_`` of a decoder) is still scored.
    Macro-F1 averages the classes that occur (in the truth or the predictions): a label the
    data lacks and the model never chose was not got wrong.
    """
    classes = labels + sorted((set(truth) | set(predicted)) - set(labels))
    occurring = [c for c in classes if c in set(truth) | set(predicted)]
    p, r, f, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0
    )
    cm = confusion_matrix(truth, predicted, labels=classes)
    return {
        "n": len(truth),
        "accuracy": float(np.mean([a == b for a, b in zip(truth, predicted)])) if truth else 0.0,
        "macro_f1": float(f1_score(truth, predicted, labels=occurring, average="macro",
                                   zero_division=0)) if occurring else 0.0,
        "labels": classes,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
    }


def equal_error_rate(embeddings: np.ndarray, labels: list[str]) -> float:
    """Verification EER over every same/different-label pair, scored by cosine similarity.

    The threshold where false acceptances equal false rejections (``eer_from_scores``).
    A ValueError when the labels give no same-label pair or no different-label pair.
    """
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    sims = emb @ emb.T
    spk = np.array(labels)
    upper = np.triu_indices(len(spk), k=1)
    same = (spk[:, None] == spk[None, :])[upper]
    if same.all() or not same.any():
        raise ValueError("EER needs both same-speaker and different-speaker pairs")
    return eer_from_scores(sims[upper], same)[0]


def eer_of_pairs(embeddings: np.ndarray, labels: list[str]) -> float | None:
    """``equal_error_rate``, or None where the labels give no same-label pair or no
    different-label pair (one speaker only, or each clip its own)."""
    if len(labels) < 2 or len(set(labels)) < 2 or len(set(labels)) == len(labels):
        return None
    return equal_error_rate(embeddings, labels)


def eer_from_scores(scores: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the score threshold at it, interpolated on sklearn's ROC between
    the two points that straddle false accepts = false rejects."""
    fpr, tpr, thresholds = roc_curve(target.astype(bool), scores)
    fnr = 1 - tpr
    i = int(np.nonzero(fnr <= fpr)[0][0])
    if i == 0:
        return float(fpr[0]), float(scores.max())
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    low = thresholds[i - 1] if np.isfinite(thresholds[i - 1]) else scores.max()
    return (float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1])),
            float(low + w * (thresholds[i] - low)))


def markdown(report: dict, title: str = "Evaluation", json_name: str = "report.json") -> str:
    """A readable summary: headline figures (the open-set ones too, as the terminal prints
    them), per-class table, confusion matrix. ``json_name``: the file the skipped clips are in."""
    lines = [f"# {title}", "", f"- clips: {report['n']}",
             f"- accuracy: {report['accuracy']:.4f}", f"- macro-F1: {report['macro_f1']:.4f}"]
    if report.get("open_set"):
        figures = ", ".join(f"{k.replace('_', ' ')} {v:.4f}"
                            for k, v in report["open_set"].items() if v is not None)
        threshold = report.get("threshold")
        lines.append(f"- open set: {figures}" + ("" if threshold is None else
                                                 f" (rejection threshold {threshold:.4f})"))
    if report.get("skipped"):
        lines.append(f"- skipped clips: {len(report['skipped'])} (listed in {json_name})")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, m in report["per_class"].items():
        lines.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
                     f"{m['support']} |")
    labels = report["labels"]
    lines += ["", "Confusion matrix (rows: truth, columns: predicted)", "",
              "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for lab, row in zip(labels, report["confusion"]):
        lines.append(f"| **{lab}** | " + " | ".join(str(v) for v in row) + " |")
    if report.get("tasks"):
        lines += ["", "Other tasks (identification on known classes, verification EER on unseen)",
                  ""]
        for task, m in report["tasks"].items():
            figures = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in m.items()
                                if k not in ("kind", "note") and v is not None)
            note = f" ({m['note']})" if m.get("note") else ""
            lines.append(f"- {task} ({m['kind']}): {figures}{note}")
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict, path: Path, title: str = "Confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion"])
    labels = report["labels"]
    side = max(4.0, 1 + 0.5 * len(labels))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    # wrapped to the figure's width (a long data path or speaker list would be cut at its edges)
    ax.set_title(textwrap.fill(title, int(6 * side)) + f"\naccuracy {report['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, directory: Path, name: str = "report", title: str = "Evaluation"):
    """Write NAME.json, NAME.md and NAME_confusion.png into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(report, indent=2))
    (directory / f"{name}.md").write_text(markdown(report, title, f"{name}.json"))
    plot_confusion(report, directory / f"{name}_confusion.png", title)
