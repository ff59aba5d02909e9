"""The classic speaker-verification baseline: MFCC -> GMM-UBM with MAP-adapted means.

A universal background model (a diagonal GMM, scikit-learn's ``GaussianMixture``) is fitted on
the frames of background speakers; a speaker model is the UBM with its means MAP-adapted to
the enrolment frames (Reynolds et al., 2000: relevance factor 16, weights and variances kept);
a trial's score is the average per-frame log-likelihood ratio of speaker model over UBM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture

from speechxfer.audio import SAMPLE_RATE, AudioError, load
from speechxfer.classic.mfcc import mfcc_features
from speechxfer.data import load_dataset

N_COMPONENTS = 64
RELEVANCE = 16.0  # MAP relevance factor: how many frames a component needs to move halfway
MAX_ITER = 100


def frame_log_likelihood(x: np.ndarray, weights: np.ndarray, means: np.ndarray,
                         variances: np.ndarray) -> np.ndarray:
    """log p(frame) under a diagonal GMM, for every frame of ``x`` [frames, dims]."""
    prec = 1.0 / variances
    quad = (x ** 2) @ prec.T - 2.0 * x @ (means * prec).T + (means ** 2 * prec).sum(1)
    log_det = np.log(2 * np.pi * variances).sum(1)
    return logsumexp(np.log(weights) - 0.5 * (quad + log_det), axis=1)


class GMMUBMBackend:
    """A fitted UBM that enrols speakers by MAP adaptation and scores trials by LLR
    (``voiceprint.evaluate_speakers``' backend surface: features, scores)."""

    threshold = None  # LLRs have no stored accept threshold

    def __init__(self, ubm: GaussianMixture, n_clips: int, n_speakers: int,
                 sample_rate: int = SAMPLE_RATE):
        self.ubm, self.sample_rate = ubm, sample_rate
        self.description = (f"MFCC GMM-UBM ({ubm.n_components} diagonal components, MAP means, "
                            f"relevance {RELEVANCE:g}) on {n_clips} background clips of "
                            f"{n_speakers} speakers")

    @classmethod
    def fit(cls, waves: list[torch.Tensor], n_speakers: int, seed: int = 0,
            n_components: int = N_COMPONENTS) -> GMMUBMBackend:
        frames = np.concatenate([mfcc_features(w, SAMPLE_RATE) for w in waves]).astype(np.float64)
        ubm = GaussianMixture(n_components, covariance_type="diag", max_iter=MAX_ITER,
                              reg_covar=1e-3, random_state=seed).fit(frames)
        return cls(ubm, len(waves), n_speakers)

    @classmethod
    def fit_folder(cls, folder: str | Path, seed: int = 0) -> GMMUBMBackend:
        """A UBM on every readable clip of a dataset folder (any layout speechxfer reads)."""
        ds = load_dataset(folder)
        waves, speakers = [], set()
        for c in ds.clips:
            try:
                waves.append(load(c.path, SAMPLE_RATE))
            except AudioError:
                continue
            speakers.add(c.speaker)
        if not waves:
            raise ValueError(f"{folder}: no readable clip to fit a background model on")
        return cls.fit(waves, len(speakers), seed)

    def features(self, waves: list[torch.Tensor]) -> list[np.ndarray]:
        return [mfcc_features(w, self.sample_rate).astype(np.float64) for w in waves]

    def adapt(self, frames: np.ndarray) -> np.ndarray:
        """MAP-adapted means for the frames of one speaker's enrolment."""
        post = self.ubm.predict_proba(frames)  # [frames, components]
        n = post.sum(0)
        first = post.T @ frames / np.maximum(n, 1e-10)[:, None]
        alpha = (n / (n + RELEVANCE))[:, None]
        return alpha * first + (1 - alpha) * self.ubm.means_

    def scores(self, models: list[tuple[str, list[int]]], feats: list[np.ndarray]) -> np.ndarray:
        """Mean per-frame log-likelihood ratio, speaker model over UBM: [models, clips]."""
        w, var = self.ubm.weights_, self.ubm.covariances_
        bounds = np.cumsum([0] + [len(f) for f in feats])
        every = np.concatenate(feats)
        base = frame_log_likelihood(every, w, self.ubm.means_, var)
        out = np.zeros((len(models), len(feats)))
        for m, (_, idx) in enumerate(models):
            means = self.adapt(np.concatenate([feats[i] for i in idx]))
            llr = frame_log_likelihood(every, w, means, var) - base
            out[m] = np.add.reduceat(llr, bounds[:-1]) / np.diff(bounds)
        return out
