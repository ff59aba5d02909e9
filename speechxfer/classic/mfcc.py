"""MFCC front end shared by the classic recognisers (librosa does the signal processing).

The textbook recipe: pre-emphasis, 25 ms Hamming frames every 10 ms, 13 cepstra plus deltas and
delta-deltas (39 dims), then per-utterance cepstral mean/variance normalisation (CMVN), which
removes channel and speaker level/tilt differences — the main mismatch on unseen speakers.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

PREEMPHASIS = 0.97  # first-order high-pass coefficient
FRAME_MS = 25.0  # analysis window length, milliseconds
HOP_MS = 10.0  # frame shift, milliseconds
N_MFCC = 13  # cepstral coefficients per frame (c0 included)
N_MELS = 40  # mel filters
MEL_FMAX_HZ = 4000.0  # top of the filterbank: keeps features identical for 8 kHz and wideband audio
DELTA_WIDTH = 9  # frames in the delta regression window
TRIM_TOP_DB = 30.0  # silence = frames this many dB below the clip's loudest frame
MIN_TRIMMED_MS = 100.0  # a trim leaving less than this is ignored (the clip is mostly "silence")
CMVN_FLOOR = 1e-5  # variance floor so constant coefficients do not blow up
FEATURE_DIM = 3 * N_MFCC


def mfcc_features(
    wave: torch.Tensor | np.ndarray, sample_rate: int, trim_silence: bool = True
) -> np.ndarray:
    """Return CMVN-normalised MFCC+delta+delta-delta features, shape [frames, 39], float32.

    ``trim_silence`` drops leading/trailing silence first so recognisers compare words, not pauses.
    """
    y = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("waveform contains NaN or infinite samples")
    if trim_silence:
        trimmed, _ = librosa.effects.trim(y, top_db=TRIM_TOP_DB)
        if trimmed.size >= MIN_TRIMMED_MS * sample_rate / 1000:
            y = trimmed
    win = round(FRAME_MS * sample_rate / 1000)
    hop = round(HOP_MS * sample_rate / 1000)
    cepstra = librosa.feature.mfcc(
        y=librosa.effects.preemphasis(y, coef=PREEMPHASIS),
        sr=sample_rate,
        n_mfcc=N_MFCC,
        n_fft=int(2 ** np.ceil(np.log2(win))),
        win_length=win,
        hop_length=hop,
        window="hamming",
        n_mels=N_MELS,
        fmax=min(MEL_FMAX_HZ, sample_rate / 2),
    )
    # mode="nearest" keeps deltas defined for clips shorter than the regression window
    feats = np.concatenate(
        [
            cepstra,
            librosa.feature.delta(cepstra, width=DELTA_WIDTH, order=1, mode="nearest"),
            librosa.feature.delta(cepstra, width=DELTA_WIDTH, order=2, mode="nearest"),
        ]
    ).T
    feats = (feats - feats.mean(axis=0)) / np.sqrt(feats.var(axis=0) + CMVN_FLOOR)
    return feats.astype(np.float32)
