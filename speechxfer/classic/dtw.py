"""DTW nearest-template recogniser: a clip gets the label of its closest stored utterance.

Distance = librosa DTW accumulated Euclidean cost divided by the warping-path length, so long
and short templates compare fairly. Matching costs O(templates x frames^2) per clip, so at most
``max_templates`` utterances per word are kept, drawn at random with ``seed`` (the draw is
stored with the model, so predictions never depend on the seed after fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import librosa
import numpy as np
from librosa.util.exceptions import ParameterError

from speechxfer.classic.base import ClassicRecognizer

BAND_RADIUS = 0.25  # Sakoe-Chiba band, fraction of the length: forbids pathological warps


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Path-length-normalised DTW cost between two feature matrices [frames, dims]."""
    try:
        cost, path = librosa.sequence.dtw(
            X=a.T, Y=b.T, metric="euclidean", global_constraints=True, band_rad=BAND_RADIUS
        )
    except ParameterError:  # lengths too unequal for the band to join the corners
        cost, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    return float(cost[-1, -1] / len(path))


@dataclass
class DTWRecognizer(ClassicRecognizer):
    """Template matching; probabilities = softmax of minus the per-word nearest distance."""

    kind: ClassVar[str] = "dtw"
    OPTION_RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        **ClassicRecognizer.OPTION_RANGES, "max_templates": (1, 10_000)}
    max_templates: int = 20  # per word; bounds prediction cost
    _templates: list[np.ndarray] = field(default_factory=list, init=False, repr=False)
    _template_labels: np.ndarray = field(
        default_factory=lambda: np.zeros(0, np.int64), init=False, repr=False
    )

    def _fit(self, feats: list[np.ndarray], targets: np.ndarray) -> None:
        rng = np.random.default_rng(self.seed)
        keep = np.concatenate([
            np.sort(rng.permutation(np.flatnonzero(targets == c))[: self.max_templates])
            for c in range(len(self.labels))
        ])
        self._templates = [feats[i] for i in keep]
        self._template_labels = targets[keep]

    def _log_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        scores = np.full((len(feats), len(self.labels)), np.inf)
        for i, f in enumerate(feats):
            for template, c in zip(self._templates, self._template_labels):
                scores[i, c] = min(scores[i, c], dtw_distance(f, template))
        return -scores

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "frames": np.concatenate(self._templates),
            "lengths": np.array([len(t) for t in self._templates], np.int64),
            "template_labels": self._template_labels.astype(np.int64),
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._templates = np.split(arrays["frames"], np.cumsum(arrays["lengths"])[:-1])
        self._template_labels = arrays["template_labels"]
