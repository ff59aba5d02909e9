"""Whole-word GMM-HMM recogniser: one left-to-right hmmlearn GMMHMM per command word.

Each word model starts from a uniform segmentation (frame i of an utterance of T frames goes to
state floor(i * S / T)), with a diagonal GaussianMixture per state, then Baum-Welch refines it.
Zero transitions stay zero under EM, so the strictly left-to-right topology survives training.
A clip scores by its forward log-likelihood per frame, so long and short words compete fairly.

Few examples: states are capped by the shortest training clip, mixtures by the frames a state
gets, and a conjugate prior on the variances acts as a floor, so even one clip per word trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from hmmlearn.hmm import GMMHMM
from sklearn.mixture import GaussianMixture

from speechxfer.classic.base import ClassicRecognizer

VARIANCE_FLOOR = 0.01  # CMVN features have unit variance overall; no state gets much narrower
FLOOR_PSEUDO_FRAMES = 1.0  # weight of the variance prior, in frames
MIN_FRAMES_PER_MIX = 10  # a mixture component needs at least this many initial frames
FIELDS = ("startprob", "transmat", "means", "covars", "weights")


def _not_a_dip(record: logging.LogRecord) -> bool:
    """Drop hmmlearn's "Model is not converging" warning: with the variance prior EM raises
    the posterior, not the likelihood hmmlearn watches, so small dips in it are expected, and
    the warning, printed mid-training to a user who can do nothing about it, reads as a
    failure. How well the words are modelled is what the held-out accuracy reports."""
    return not record.getMessage().startswith("Model is not converging")


logging.getLogger("hmmlearn.base").addFilter(_not_a_dip)


def _stretch(seq: np.ndarray, n_frames: int) -> np.ndarray:
    """Repeat frames so a too-short clip can still traverse every state (else likelihood 0)."""
    if len(seq) >= n_frames:
        return seq
    return np.repeat(seq, -(-n_frames // len(seq)), axis=0)


class _PresetGMMHMM(GMMHMM):
    """GMMHMM trained from parameters set beforehand: skips hmmlearn's k-means initialisation,
    which otherwise runs (and is thrown away) even with ``init_params=""``."""

    def _init(self, X: np.ndarray, lengths: list[int] | None = None) -> None:
        self._check_and_set_n_features(X)
        self._init_covar_priors()
        self._fix_priors_shape()


def _new_hmm(n_states: int, n_mix: int, n_iter: int, seed: int) -> GMMHMM:
    """A diagonal GMMHMM whose EM updates transitions and emissions but keeps the start state."""
    return _PresetGMMHMM(
        n_components=n_states,
        n_mix=n_mix,
        covariance_type="diag",
        n_iter=n_iter,
        random_state=seed,
        init_params="",
        params="tmcw",
        # diag prior: covar = (sum_sq + 2*weight) / (count + 2*(prior + 1)); this pair adds
        # FLOOR_PSEUDO_FRAMES frames of variance VARIANCE_FLOOR
        covars_prior=-1.5 + FLOOR_PSEUDO_FRAMES / 2,
        covars_weight=VARIANCE_FLOOR * FLOOR_PSEUDO_FRAMES / 2,
    )


@dataclass
class HMMRecognizer(ClassicRecognizer):
    """Isolated-word GMM-HMM: the classic speaker-independent small-vocabulary recogniser."""

    kind: ClassVar[str] = "gmm-hmm"
    OPTION_RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        **ClassicRecognizer.OPTION_RANGES, "n_states": (1, 64), "n_mix": (1, 64),
        "n_iter": (0, 10_000), "self_loop": (0.0, 1.0)}
    n_states: int = 5
    n_mix: int = 3
    n_iter: int = 10
    self_loop: float = 0.6  # initial stay probability; EM re-estimates it
    _models: list[GMMHMM] = field(default_factory=list, init=False, repr=False)

    def _fit(self, feats: list[np.ndarray], targets: np.ndarray) -> None:
        self._models = [
            self._fit_word([f for f, t in zip(feats, targets) if t == c])
            for c in range(len(self.labels))
        ]

    def _fit_word(self, seqs: list[np.ndarray]) -> GMMHMM:
        n_states = max(1, min(self.n_states, min(len(s) for s in seqs)))
        segments = [np.array_split(s, n_states) for s in seqs]
        per_state = [np.concatenate([seg[i] for seg in segments]) for i in range(n_states)]
        fewest = min(len(frames) for frames in per_state)
        n_mix = max(1, min(self.n_mix, fewest // MIN_FRAMES_PER_MIX))
        gmms = [
            GaussianMixture(n_mix, covariance_type="diag", reg_covar=VARIANCE_FLOOR,
                            random_state=self.seed).fit(frames)
            for frames in per_state
        ]
        model = _new_hmm(n_states, n_mix, self.n_iter, self.seed)
        model.startprob_ = np.eye(n_states)[0]
        model.transmat_ = self.self_loop * np.eye(n_states) + (1 - self.self_loop) * np.eye(
            n_states, k=1
        )
        model.transmat_[-1, -1] = 1.0
        model.means_ = np.stack([g.means_ for g in gmms])
        model.covars_ = np.stack([g.covariances_ for g in gmms])
        model.weights_ = np.stack([g.weights_ for g in gmms])
        model.fit(np.concatenate(seqs), [len(s) for s in seqs])
        return model

    def _log_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        scores = np.empty((len(feats), len(self._models)))
        for i, f in enumerate(feats):
            for c, model in enumerate(self._models):
                seq = _stretch(f, model.n_components)
                scores[i, c] = model.score(seq) / len(seq)
        return scores

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            f"{c}.{name}": getattr(m, f"{name}_")
            for c, m in enumerate(self._models)
            for name in FIELDS
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._models = []
        for c in range(len(self.labels)):
            n_states, n_mix, n_features = arrays[f"{c}.means"].shape
            model = _new_hmm(n_states, n_mix, self.n_iter, self.seed)
            model.n_features = n_features
            for name in FIELDS:
                setattr(model, f"{name}_", arrays[f"{c}.{name}"])
            self._models.append(model)
