"""The open-set decision: accept the best command, or say ``_unknown_`` / ``_silence_``.

A clip is given its best command when that command's probability reaches a threshold and no
``_unknown_`` / ``_silence_`` column is more probable still, and is rejected otherwise. The
second condition matters because a calibrated threshold can be low (on few validation clips,
the most probable class already rejects them all): a bar of 0.15 must not turn a clip that is
85% "some other word" into a command. The threshold is calibrated on validation clips from the
training speakers for a target false-accept rate on the non-command clips (unknown words and
silence together), and the lowest such threshold is taken: it keeps the most real commands the
target allows. Systems that score only the commands (no rejection columns) are thresholded the
same way; a clip they reject is ``_unknown_``.
"""

from __future__ import annotations

import math

import numpy as np

from .evaluate import score_predictions
from .vocab import SILENCE, UNKNOWN, is_command

# At most 3% of unknown words and silence taken for a command on validation speakers: the
# rate a voice app can live with, and a margin for new speakers, whose rate runs higher.
DEFAULT_MAX_FALSE_ACCEPT = 0.03


def _check(labels: list[str], probs: np.ndarray, truth: list[str] | None = None) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(labels)} labels")
    if truth is not None and len(truth) != probs.shape[0]:
        raise ValueError(f"{len(truth)} truth labels for {probs.shape[0]} rows of probabilities")
    if not any(is_command(lab) for lab in labels):
        raise ValueError(f"labels {labels} hold no command to accept")
    return probs


def best_command(labels: list[str], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index (into ``labels``) and probability of the most probable command of each row."""
    probs = _check(labels, probs)
    columns = np.array([i for i, lab in enumerate(labels) if is_command(lab)])
    best = columns[probs[:, columns].argmax(1)]
    return best, probs[np.arange(len(probs)), best]


def _reject_columns(labels: list[str]) -> np.ndarray:
    return np.array([i for i, lab in enumerate(labels) if lab in (UNKNOWN, SILENCE)], dtype=int)


def acceptance(labels: list[str], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best command (index into ``labels``) and the score a threshold is compared
    with: that command's probability, or 0 where ``_unknown_`` or ``_silence_`` is more
    probable (such a clip is rejected by any threshold above 0)."""
    best, p = best_command(labels, probs)
    reject = _reject_columns(labels)
    if len(reject):
        p = np.where(np.asarray(probs, dtype=np.float64)[:, reject].max(1) > p, 0.0, p)
    return best, p


def decide(labels: list[str], probs: np.ndarray, threshold: float) -> list[str]:
    """The label of each row: its best command if ``acceptance`` >= ``threshold``, else rejected.

    A rejected clip is ``_silence_`` when silence outscores unknown, otherwise ``_unknown_``.
    """
    best, p = acceptance(labels, probs)
    probs = np.asarray(probs, dtype=np.float64)
    reject = _reject_columns(labels)
    out = []
    for row, (i, q) in enumerate(zip(best, p)):
        if q >= threshold:
            out.append(labels[i])
        elif len(reject):
            out.append(labels[reject[probs[row, reject].argmax()]])
        else:
            out.append(UNKNOWN)
    return out


# The lowest rejection threshold a trained system is given (``jobs.calibrate_rejection``): a
# command is accepted only when it is more probable than every alternative together. Validation
# speakers give a few dozen unknown and silence clips, which a good model often rejects all of at
# any threshold; calibration alone would then accept a command at any probability above the
# rejection classes'.
MIN_THRESHOLD = 0.5


def calibrate_threshold(
    labels: list[str], truth: list[str], probs: np.ndarray,
    max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT,
) -> float:
    """Lowest threshold at which at most ``max_false_accept`` of the non-command clips
    (``_unknown_`` and ``_silence_`` in ``truth``) are accepted as a command (by ``decide``)."""
    if not 0.0 <= max_false_accept <= 1.0:
        raise ValueError(f"max_false_accept must be in [0, 1], got {max_false_accept}")
    probs = _check(labels, probs, truth)
    _, p = acceptance(labels, probs)
    scores = np.sort(p[[not is_command(t) for t in truth]])[::-1]
    if not len(scores):
        raise ValueError("no _unknown_ or _silence_ clips to calibrate the rejection threshold on")
    allowed = math.floor(max_false_accept * len(scores) + 1e-9)
    if allowed >= len(scores):
        return 0.0
    # Accepting needs p >= threshold, so the next float above the (allowed+1)-th highest score
    # accepts exactly the clips scoring strictly above it: at most `allowed`.
    return float(np.nextafter(scores[allowed], np.inf))


def _rate(hits: list[bool]) -> float | None:
    return float(np.mean(hits)) if hits else None


def open_set_metrics(
    labels: list[str], truth: list[str], probs: np.ndarray, threshold: float
) -> dict:
    """``evaluate.score_predictions`` after rejection, plus the open-set figures.

    ``open_set``: ``command_recall`` (command clips accepted with the right label),
    ``unknown_false_accept`` and ``silence_false_accept`` (fraction of those clips returned as a
    command); ``None`` where the truth has no such clips.
    """
    probs = _check(labels, probs, truth)
    predicted = decide(labels, probs, threshold)
    report = score_predictions(labels, truth, predicted)
    report["threshold"] = float(threshold)
    report["open_set"] = open_set_rates(truth, predicted)
    return report


def open_set_rates(truth: list[str], predicted: list[str]) -> dict:
    """The ``open_set`` figures of labels already decided (by any rule)."""
    pairs = list(zip(truth, predicted))
    return {
        "command_recall": _rate([p == t for t, p in pairs if is_command(t)]),
        "unknown_false_accept": _rate([is_command(p) for t, p in pairs if t == UNKNOWN]),
        "silence_false_accept": _rate([is_command(p) for t, p in pairs if t == SILENCE]),
    }
