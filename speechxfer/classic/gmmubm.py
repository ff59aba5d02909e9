"""The classic speaker-verification baseline: MFCC -> GMM-UBM with MAP-adapted means.

A universal background model (a diagonal GMM, scikit-learn's ``GaussianMixture``) is fitted on
the frames of background speakers; a speaker model is the UBM with its means MAP-adapted to
the enrolment frames (Reynolds et al., 2000: relevance factor 16, weights and variances kept);
a trial's score is the average per-frame log-likelihood ratio of speaker model over UBM. With a
cohort of background speakers the LLR is S-normed the way the embedding backends' cosines are
(``set_cohort``), so the two are compared under the same normalisation.
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
from speechxfer.evaluate import cohort_normalisation

N_COMPONENTS = 64
RELEVANCE = 16.0  # MAP relevance factor: how many frames a component needs to move halfway
MAX_ITER = 100
COHORT_CLIPS = 5  # per cohort speaker for the enrolment side's statistics: bounded cost


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
    normalisation = "none (raw LLR)"

    def __init__(self, ubm: GaussianMixture, n_clips: int, n_speakers: int,
                 sample_rate: int = SAMPLE_RATE):
        self.ubm, self.sample_rate = ubm, sample_rate
        self.cohort_means: list[np.ndarray] = []  # MAP means of each cohort speaker
        self.cohort_clips: list[np.ndarray] = []  # MFCC frames of cohort clips
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

    def set_cohort(self, waves: list[torch.Tensor], speakers: list[str], seed: int = 0,
                   name: str = "background") -> None:
        """Symmetric S-norm against these speakers from now on: a trial's LLR is z-normalised
        by the enrolment model's LLRs on cohort clips (``COHORT_CLIPS`` per speaker, seeded)
        and by the clip's LLRs under each cohort speaker's model (MAP on all its clips)."""
        by_speaker: dict[str, list[np.ndarray]] = {}
        for frames, spk in zip(self.features(waves), speakers):
            by_speaker.setdefault(spk, []).append(frames)
        if len(by_speaker) < 2:
            raise ValueError(f"{name}: S-norm needs a cohort of at least 2 speakers")
        rng = np.random.default_rng(seed)
        groups = [by_speaker[s] for s in sorted(by_speaker)]
        self.cohort_means = [self.adapt(np.concatenate(g)) for g in groups]
        self.cohort_clips = [g[i] for g in groups
                             for i in sorted(rng.permutation(len(g))[:COHORT_CLIPS])]
        self.normalisation = cohort_normalisation(len(groups), name)

    def _llr(self, means: list[np.ndarray], feats: list[np.ndarray]) -> np.ndarray:
        """Mean per-frame LLR of each model (its MAP means) over the UBM: [models, clips]."""
        w, var = self.ubm.weights_, self.ubm.covariances_
        bounds = np.cumsum([0] + [len(f) for f in feats])
        every = np.concatenate(feats)
        base = frame_log_likelihood(every, w, self.ubm.means_, var)
        out = np.zeros((len(means), len(feats)))
        for m, mu in enumerate(means):
            llr = frame_log_likelihood(every, w, mu, var) - base
            out[m] = np.add.reduceat(llr, bounds[:-1]) / np.diff(bounds)
        return out

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
        """Mean per-frame log-likelihood ratio, speaker model over UBM, S-normed when a cohort
        is set: [models, clips]."""
        means = [self.adapt(np.concatenate([feats[i] for i in idx])) for _, idx in models]
        raw = self._llr(means, feats)
        if not self.cohort_means:
            return raw
        z = self._llr(means, self.cohort_clips)  # [models, cohort clips]
        t = self._llr(self.cohort_means, feats)  # [cohort speakers, clips]
        mz, sz = z.mean(1, keepdims=True), z.std(1, keepdims=True).clip(min=1e-6)
        mt, st = t.mean(0, keepdims=True), t.std(0, keepdims=True).clip(min=1e-6)
        return 0.5 * ((raw - mz) / sz + (raw - mt) / st)

