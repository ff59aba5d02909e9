"""RBF-SVM recogniser on fixed-length MFCC statistics: the cheapest strong classic baseline.

A clip of any length becomes one vector: the mean and standard deviation of each of
``n_segments`` equal time slices, which keeps coarse word order (/w ah n/ vs /n ah w/). Whole-clip
statistics are left out on purpose: after per-utterance CMVN they are always 0 and 1.
StandardScaler then sklearn's SVC (one-vs-one).

Probabilities are a softmax over SVC's one-vs-rest ``decision_function`` (votes plus a
confidence tie-break), not Platt-calibrated: ``SVC(probability=True)`` is deprecated since
scikit-learn 1.9 and its internal cross-validation disagrees with ``predict`` on small data.

Persistence stores the scaler statistics and libsvm's fitted arrays, and load sets them back on
fresh StandardScaler/SVC objects (the round-trip test pins identical outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from speechxfer.classic.base import ClassicRecognizer
from speechxfer.heads import check_real

GAMMAS = ("scale", "auto")  # sklearn's named gamma rules; otherwise a positive number
SVC_ARRAYS = ("support_vectors_", "support_", "_n_support", "dual_coef_", "_dual_coef_",
              "intercept_", "_intercept_", "_probA", "_probB", "class_weight_", "classes_",
              "shape_fit_")


def pooled_statistics(feats: np.ndarray, n_segments: int) -> np.ndarray:
    """One vector per clip: mean and std of each of ``n_segments`` equal time slices."""
    # stretch clips shorter than n_segments frames so that no slice is empty
    feats = np.repeat(feats, -(-n_segments // len(feats)), axis=0)
    segments = np.array_split(feats, n_segments)
    return np.concatenate([s.mean(axis=0) for s in segments] + [s.std(axis=0) for s in segments])


@dataclass
class SVMRecognizer(ClassicRecognizer):
    """Pooled-MFCC RBF SVM; ``C`` and ``gamma`` are the usual SVC knobs."""

    kind: ClassVar[str] = "svm"
    OPTION_RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        **ClassicRecognizer.OPTION_RANGES, "n_segments": (1, 100), "C": (1e-6, 1e6)}
    n_segments: int = 5
    C: float = 10.0
    gamma: float | str = "scale"
    _scaler: StandardScaler = field(default_factory=StandardScaler, init=False, repr=False)
    _svc: SVC | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma not in GAMMAS:
            check_real("option gamma", self.gamma, 0.0, 1e6, low_open=True)

    def _new_svc(self) -> SVC:
        return SVC(C=self.C, kernel="rbf", gamma=self.gamma, random_state=self.seed)

    def _vectors(self, feats: list[np.ndarray]) -> np.ndarray:
        return np.stack([pooled_statistics(f, self.n_segments) for f in feats])

    def _fit(self, feats: list[np.ndarray], targets: np.ndarray) -> None:
        self._scaler = StandardScaler().fit(self._vectors(feats))
        self._svc = self._new_svc().fit(self._scaler.transform(self._vectors(feats)), targets)

    def _log_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        scores = self._svc.decision_function(self._scaler.transform(self._vectors(feats)))
        # two classes give one signed distance (positive: the second class), not a column each
        return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"svc.{name}": np.asarray(getattr(self._svc, name)) for name in SVC_ARRAYS}
        arrays["svc._gamma"] = np.array([self._svc._gamma], np.float64)
        arrays["scaler.mean_"] = self._scaler.mean_
        arrays["scaler.scale_"] = self._scaler.scale_
        arrays["scaler.var_"] = self._scaler.var_
        return arrays

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._scaler = StandardScaler()
        for name in ("mean_", "scale_", "var_"):
            setattr(self._scaler, name, arrays[f"scaler.{name}"])
        self._scaler.n_features_in_ = len(self._scaler.mean_)
        self._svc = svc = self._new_svc()
        for name in SVC_ARRAYS:
            setattr(svc, name, arrays[f"svc.{name}"])
        svc._gamma = float(arrays["svc._gamma"][0])
        svc.shape_fit_ = tuple(int(n) for n in svc.shape_fit_)
        svc._sparse = False
        svc.fit_status_ = 0
        svc.n_features_in_ = svc.support_vectors_.shape[1]
        svc._effective_probability = False
