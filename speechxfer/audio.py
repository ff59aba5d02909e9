"""Every audio I/O rule in one place: reading, down-mixing, resampling, crop/pad.

Policy (documented in the README):
- any format soundfile reads (WAV, FLAC, OGG, ...); multi-channel audio is averaged to mono;
- resampled with torchaudio to the rate the encoder was trained at;
- clips longer than ``MAX_SECONDS`` are rejected rather than silently truncated: a command
  recogniser fed a 40-s recording is almost always a mistake worth reporting;
- for batching, clips are right-padded with zeros and their true lengths travel alongside,
  so pooling only sees real audio; ``crop_or_pad`` centre-crops when a fixed length is asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000  # Hz, the rate Whisper, wav2vec2 and HuBERT were trained at
MAX_SECONDS = 30.0  # longest clip accepted: Whisper's whole context window
MIN_SECONDS = 0.05  # shorter clips hold no word
SILENCE_PEAK = 1e-4  # peak amplitude (full scale = 1) under which a clip counts as silent
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")


class AudioError(ValueError):
    """A clip that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Clip:
    """One recording with whatever labels are known for it (task name -> value)."""

    path: Path
    labels: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None

    @property
    def label(self) -> str | None:
        """The command label, the task every dataset has."""
        return self.labels.get("command")


def as_mono(samples: np.ndarray | torch.Tensor, source: str = "<samples>") -> torch.Tensor:
    """Samples as [time] or [time, channels] (or [channels, time]) -> mono float32 tensor."""
    wave = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if wave.numel() == 0:
        raise AudioError(source, "empty audio (no samples)")
    if wave.ndim == 2:
        # soundfile gives [time, channels]; treat the shorter axis as channels
        wave = wave.mean(dim=1) if wave.shape[1] <= wave.shape[0] else wave.mean(dim=0)
    if wave.ndim != 1:
        raise AudioError(source, f"expected 1-D or 2-D samples, got shape {tuple(wave.shape)}")
    return wave


def resample(wave: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """torchaudio's band-limited resampling; a no-op at the target rate."""
    if sample_rate == target_rate:
        return wave.contiguous()
    return AF.resample(wave, sample_rate, target_rate).contiguous()


def to_mono_resampled(
    samples: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE,
    source: str = "<samples>",
) -> torch.Tensor:
    """A checked clip: mono float32 at ``target_rate``, or AudioError saying what is wrong."""
    wave = as_mono(samples, source)
    if sample_rate <= 0:
        raise AudioError(source, f"invalid sample rate {sample_rate}")
    check_wave(wave, sample_rate, source)
    return resample(wave, sample_rate, target_rate)


def check_wave(wave: torch.Tensor, sample_rate: int, source: str) -> None:
    """Reject clips no recogniser can use, with a message that says why."""
    seconds = wave.numel() / sample_rate
    if not torch.isfinite(wave).all():
        raise AudioError(source, "audio contains NaN or infinite samples")
    if seconds < MIN_SECONDS:
        raise AudioError(source, f"too short ({seconds:.3f} s < {MIN_SECONDS} s)")
    if seconds > MAX_SECONDS:
        raise AudioError(
            source, f"too long ({seconds:.1f} s > {MAX_SECONDS:.0f} s window); split it first"
        )
    if float(wave.abs().max()) < SILENCE_PEAK:
        raise AudioError(source, "silent (peak amplitude below 1e-4)")


def load(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read a file as a mono float32 tensor at ``sample_rate``; raise AudioError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(path, f"not readable as audio ({err})") from None
    return to_mono_resampled(samples, rate, sample_rate, source=str(path))


def crop_or_pad(wave: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Centre-crop or right-pad with zeros to exactly ``n_samples``."""
    n = wave.shape[-1]
    if n > n_samples:
        start = (n - n_samples) // 2
        return wave[..., start : start + n_samples]
    return torch.nn.functional.pad(wave, (0, n_samples - n))


def batch_waves(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad clips into one [batch, time] tensor and return it with the true lengths."""
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w
    return batch, lengths
