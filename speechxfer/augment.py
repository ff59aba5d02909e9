"""Training-time augmentation built on ``speechbrain.augment``: noise, reverb, speed, shift, masks.

speechbrain does the mixing at an SNR (``AddNoise``), the pink/brown spectra
(``pink_noise_like``), the convolution with a room response (``reverberate``, the function
``AddReverb`` calls), speed perturbation (``SpeedPerturb``) and spectrogram masking
(``SpectrogramDrop``). Written here is only what it lacks: noise taken from in-memory waveforms
(its ``AddNoise`` otherwise reads a CSV of files), simulated room impulse responses (its
``AddReverb`` needs recorded ones), and a zero-filled time shift (its ``RandomShift`` rolls
circularly, which moves the end of a tightly cut word to its start).

Seeding: every choice comes from a numpy generator seeded by (seed, copy, clip), and
speechbrain's own draws (torch's global generator) run in a forked CPU generator seeded from
it, so one seed gives one output whatever else the process does, and the caller's torch random
state is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from speechbrain.augment.freq_domain import SpectrogramDrop
from speechbrain.augment.time_domain import AddNoise, SpeedPerturb, pink_noise_like
from speechbrain.processing.signal_processing import reverberate

from .audio import (
    AUDIO_SUFFIXES,
    SAMPLE_RATE,
    SILENCE_PEAK,
    AudioError,
    Clip,
    as_mono,
    audio_files,
    resample,
    unreadable,
)

# speechbrain's pink_noise_like shapes the amplitude spectrum by 1/f**alpha: alpha 0.5 gives a
# 1/f power spectrum (pink), alpha 1 gives 1/f**2 (brown).
NOISE_ALPHA = {"white": 0.0, "pink": 0.5, "brown": 1.0}
SYNTHETIC_NOISES = tuple(NOISE_ALPHA)
DECAY_60DB = math.log(1000.0)  # amplitude falls by 60 dB (x 1/1000) over one RT60


@dataclass(frozen=True)
class AugmentConfig:
    """What to apply and how hard; each ``*_prob`` is the chance per augmented copy."""

    copies: int = 4  # K augmented copies per clip (the frozen strategy caches each)
    seed: int = 0
    sample_rate: int = SAMPLE_RATE
    noise_prob: float = 0.8
    snr_db: tuple[float, float] = (5.0, 20.0)
    synthetic: tuple[str, ...] = SYNTHETIC_NOISES  # drawn alongside the given noise waveforms
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.2, 0.7)
    drr_db: tuple[float, float] = (0.0, 10.0)  # direct-to-reverberant energy ratio
    speed_prob: float = 0.5
    speeds: tuple[int, ...] = (90, 95, 105, 110)  # percent of the original speed
    shift_prob: float = 0.5
    max_shift_s: float = 0.1
    # SpecAugment on the encoder's log-mel features (``train.masked_features``): off by default
    specaugment: bool = False
    freq_masks: int = 2
    freq_mask_fraction: float = 0.1  # widest mask, as a fraction of the feature bins
    time_masks: int = 2
    time_mask_fraction: float = 0.1  # widest mask, as a fraction of the frames

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"copies must be at least 1, got {self.copies}")
        for name in ("noise_prob", "reverb_prob", "speed_prob", "shift_prob",
                     "freq_mask_fraction", "time_mask_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("snr_db", "rt60_s", "drr_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low end {low} is above high end {high}")
        if self.rt60_s[0] <= 0:
            raise ValueError(f"rt60_s must be positive, got {self.rt60_s}")
        bad = [s for s in self.synthetic if s not in NOISE_ALPHA]
        if bad:
            raise ValueError(f"unknown synthetic noise {bad}; choose from {SYNTHETIC_NOISES}")
        if any(s <= 0 for s in self.speeds):
            raise ValueError(f"speeds are percentages above 0, got {self.speeds}")
        if self.max_shift_s < 0 or min(self.freq_masks, self.time_masks) < 0:
            raise ValueError("max_shift_s and the mask counts cannot be negative")


@contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Run speechbrain's draws from torch's CPU generator seeded with ``seed``, then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def noise_files(folder: str | Path) -> list[Path]:
    """The audio files of a noise folder; an AudioError names a broken link (listed, not left
    out: a noise would vanish without a word) or a folder with none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(folder, "noise folder not found")
    files = audio_files(folder)
    if not files:
        raise AudioError(folder, f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in it")
    for path in files:
        if not path.is_file():  # a pipe named *.wav would block the read
            raise AudioError(path, "a broken symbolic link (its target is missing, or links "
                                   "loop)" if path.is_symlink() else "not a regular file")
    return files


def load_noise_folder(folder: str | Path, sample_rate: int = SAMPLE_RATE) -> list[torch.Tensor]:
    """Every audio file in ``folder`` (any length, any rate) as mono noise at ``sample_rate``."""
    noises = []
    for path in noise_files(folder):
        try:
            samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise unreadable(path, err) from None
        # down-mix over the channel axis here: as_mono's shorter-axis rule misreads a file
        # with fewer frames than channels
        wave = resample(as_mono(samples.mean(axis=1), str(path)), rate, sample_rate, str(path))
        if not torch.isfinite(wave).all() or float(wave.abs().max()) < SILENCE_PEAK:
            raise AudioError(path, "noise must be finite and not silent")
        noises.append(wave)
    return noises


def synthetic_noise(kind: str, n_samples: int) -> torch.Tensor:
    """White, pink or brown noise of ``n_samples`` (draws from torch's global generator)."""
    if kind not in NOISE_ALPHA:
        raise ValueError(f"unknown noise {kind!r}; choose from {SYNTHETIC_NOISES}")
    if kind == "white":
        return torch.randn(n_samples)
    alpha = NOISE_ALPHA[kind]
    return pink_noise_like(torch.zeros(1, n_samples), alpha, alpha)[0]


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Mix ``noise`` (same length as ``wave``) in at ``snr_db`` with speechbrain's AddNoise.

    AddNoise scales the speech by 1 - a and the noise to a times the speech RMS, where
    (1 - a) / a is the SNR as an amplitude ratio, so the level stays close to the input's.
    """
    if noise.shape != wave.shape:
        raise ValueError(f"noise of shape {tuple(noise.shape)} for a wave of {tuple(wave.shape)}")
    mixer = AddNoise(snr_low=snr_db, snr_high=snr_db, noise_funct=lambda _: noise[None].clone())
    return mixer(wave[None], torch.ones(1))[0]


def room_impulse_response(
    rt60_s: float, drr_db: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """A simulated room: a unit direct path, then noise decaying by 60 dB over ``rt60_s``.

    The tail holds 10**(-drr_db/10) of the direct path's energy and stays below it in amplitude,
    so speechbrain aligns the output on the direct path.
    """
    n = max(2, round(rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-DECAY_60DB * t / rt60_s)
    tail[0] = 0.0
    tail *= math.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    rir = np.clip(tail, -0.99, 0.99)
    rir[0] = 1.0
    return torch.from_numpy(rir.astype(np.float32))


def reverb(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve with ``rir`` (speechbrain's ``reverberate``), keeping the length and the level.

    ``reverberate`` convolves circularly; padding by the response length first keeps the tail
    from wrapping round onto the start of the clip.
    """
    padded = torch.nn.functional.pad(wave, (0, rir.numel()))
    return reverberate(padded[None], rir, rescale_amp="avg")[0, : wave.numel()]


@lru_cache(maxsize=32)
def _speed_module(percent: int, sample_rate: int) -> SpeedPerturb:
    return SpeedPerturb(sample_rate, speeds=[percent])


def speed(wave: torch.Tensor, percent: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Play at ``percent`` of the original speed (pitch moves too): length x 100 / percent."""
    with seeded_torch(0):  # SpeedPerturb draws which speed from the global generator
        return _speed_module(percent, sample_rate)(wave[None])[0]


def speed_label(label: str, percent: int) -> str:
    """The new speaker a voice played at ``percent`` of its speed stands for."""
    return f"{label}@{percent}"


def check_speeds(speeds: Sequence[int]) -> tuple[int, ...]:
    """Distinct speed percentages other than 100, within 50-200; else a ValueError."""
    out = tuple(speeds)
    if (len(set(out)) != len(out) or any(isinstance(p, bool) or not isinstance(p, int)
                                         or p == 100 or not 50 <= p <= 200 for p in out)):
        raise ValueError(f"speaker speeds must be distinct whole percentages in 50-200 other "
                         f"than 100, got {list(out)}")
    return out


def speed_speakers(waves: Sequence[torch.Tensor], clips: Sequence[Clip], speeds: Sequence[int],
                   tasks: Sequence[str], sample_rate: int = SAMPLE_RATE,
                   ) -> tuple[list[torch.Tensor], list[Clip]]:
    """``waves`` and ``clips`` followed by a copy of each at every speed in ``speeds``, the
    copies' labels of ``tasks`` (speaker tasks) renamed ``speed_label(label, percent)``.

    The x-vector recipe's speaker augmentation: played faster or slower, a voice's pitch and
    formants move, so it is trained as another speaker, and an embedding head learns to tell
    apart (1 + len(speeds)) times the voices. Other labels and ``Clip.speaker`` are kept.
    """
    speeds = check_speeds(speeds)
    out_w, out_c = list(waves), list(clips)
    for percent in speeds:
        for wave, clip in zip(waves, clips):
            labels = {t: speed_label(v, percent) if t in tasks and v else v
                      for t, v in clip.labels.items()}
            out_w.append(speed(wave, percent, sample_rate))
            out_c.append(Clip(clip.path, labels, clip.speaker))
    return out_w, out_c


def time_shift(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Delay (``samples`` > 0) or advance the clip, filling with zeros and keeping the length."""
    n = wave.numel()
    out = torch.zeros_like(wave)
    if samples >= 0:
        out[samples:] = wave[: max(n - samples, 0)]
    else:
        out[: max(n + samples, 0)] = wave[-samples:]
    return out


def _segment(noise: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` samples of ``noise`` from a random start, tiled when the noise is shorter."""
    if noise.numel() < n:
        noise = noise.repeat(math.ceil(n / noise.numel()) + 1)
    start = int(rng.integers(0, noise.numel() - n + 1))
    return noise[start : start + n]


class Augmenter:
    """K seeded augmented copies of a list of mono clips, and feature masking for training.

    ``noises`` are noise waveforms at the config's rate (the training split's ``_silence_``
    clips, a user's noise folder): never clips of the test speakers.
    """

    def __init__(self, config: AugmentConfig | None = None, noises: Sequence[torch.Tensor] = ()):
        self.config = config or AugmentConfig()
        self.noises = [torch.as_tensor(n, dtype=torch.float32).flatten() for n in noises]
        for i, n in enumerate(self.noises):
            if not n.numel() or float(n.abs().max()) < SILENCE_PEAK:
                raise ValueError(f"noise waveform {i} is empty or silent")
        self.noise_kinds = (["given"] if self.noises else []) + list(self.config.synthetic)
        self._mask_calls = 0

    def copies(self, waves: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """``K`` lists, each holding one augmented version of every clip, in order.

        Copy ``k`` of clip ``i`` depends only on (seed, k, i, the clip).
        """
        return [[self.augment(w, np.random.default_rng([self.config.seed, k, i]))
                 for i, w in enumerate(waves)] for k in range(self.config.copies)]

    def with_copies(self, waves: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
        """``waves`` followed by their ``copies`` (all of copy 1, then all of copy 2, ...), and
        how many times each clip now appears: the layout training caches and labels follow."""
        copies = self.copies(waves)
        return list(waves) + [w for copy in copies for w in copy], len(copies) + 1

    def augment(self, wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One random chain: speed, then shift, then room, then noise (noise is not in the room)."""
        cfg = self.config
        wave = torch.as_tensor(wave, dtype=torch.float32).detach().cpu().flatten()
        with seeded_torch(int(rng.integers(2**62))):
            if cfg.speeds and rng.random() < cfg.speed_prob:
                wave = speed(wave, int(rng.choice(cfg.speeds)), cfg.sample_rate)
            if cfg.max_shift_s and rng.random() < cfg.shift_prob:
                most = round(cfg.max_shift_s * cfg.sample_rate)
                wave = time_shift(wave, int(rng.integers(-most, most + 1)))
            if rng.random() < cfg.reverb_prob:
                rir = room_impulse_response(rng.uniform(*cfg.rt60_s), rng.uniform(*cfg.drr_db),
                                            rng, cfg.sample_rate)
                wave = reverb(wave, rir)
            if self.noise_kinds and rng.random() < cfg.noise_prob:
                wave = add_noise(wave, self._noise(wave.numel(), rng), rng.uniform(*cfg.snr_db))
        return wave

    def _noise(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        kind = self.noise_kinds[int(rng.integers(len(self.noise_kinds)))]
        if kind == "given":
            return _segment(self.noises[int(rng.integers(len(self.noises)))], n, rng)
        return synthetic_noise(kind, n)

    def mask_features(self, features: torch.Tensor) -> torch.Tensor:
        """SpecAugment: frequency and time masks (speechbrain ``SpectrogramDrop``) on features
        shaped [time, bins] or [batch, time, bins], filled with each example's mean.

        Masks are drawn on the CPU from (seed, call number), so a run gives the same masks on
        any device; the input is not modified.
        """
        cfg = self.config
        squeeze = features.dim() == 2
        x = features[None] if squeeze else features
        if x.dim() != 3:
            raise ValueError(f"features must be [time, bins] or [batch, time, bins], "
                             f"got {tuple(features.shape)}")
        keep = torch.ones(x.shape)
        rng = np.random.default_rng([cfg.seed, 2**31, self._mask_calls])
        self._mask_calls += 1
        with seeded_torch(int(rng.integers(2**62))):
            for dim, count, fraction in ((2, cfg.freq_masks, cfg.freq_mask_fraction),
                                         (1, cfg.time_masks, cfg.time_mask_fraction)):
                widest = round(fraction * x.shape[dim])
                if count and widest >= 1:
                    keep = SpectrogramDrop(drop_length_low=1, drop_length_high=widest + 1,
                                           drop_count_low=count, drop_count_high=count,
                                           replace="zeros", dim=dim)(keep)
        mean = x.mean(dim=(1, 2), keepdim=True)
        out = torch.where(keep.to(x.device).bool(), x, mean)
        return out[0] if squeeze else out
