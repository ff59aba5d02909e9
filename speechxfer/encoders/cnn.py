"""Compact end-to-end encoders trained from scratch: the baselines transfer has to beat.

Both encoders share one conv stack, so comparing them isolates the front end: a fixed log-mel
(``DSCNNEncoder``) against a filterbank learned on the raw waveform (``RawWaveEncoder``).
The stack is DS-CNN in 1-D (TC-ResNet style): front-end channels are conv channels and every
conv runs along time. That keeps each block's output a [batch, frames, D] sequence which
``run_blocks`` can resume from exactly, and it is the cheaper layout on CPU.

Padding invariance: frames are cut without centring (a frame only sees its own samples), clip
normalisation uses real frames only, and padded frames are zeroed before every time conv, so
a clip's real frames see the same zeros past its end alone or in a padded batch. Only
BatchNorm in training mode (batch statistics) still depends on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from speechxfer.audio import SAMPLE_RATE
from speechxfer.encoders.base import Encoder, EncoderOutput

WINDOW_SAMPLES = 400  # 25 ms analysis window at 16 kHz
HOP_SAMPLES = 160  # 10 ms hop: 100 front-end frames/s
N_MELS = 40
N_FILTERS = 64  # learned band-pass filters of the raw-wave front end
MIN_CENTRE_HZ = 60.0  # lowest / highest centre frequency of the filterbank's initial filters
MAX_CENTRE_HZ = 7_800.0
LOG_OFFSET = 1e-6  # added to band powers before the log, so silence gives a finite floor
NORM_EPS = 1e-5  # variance floor of the per-clip normalisation (log-power units squared)
STEM_KERNEL_FRAMES = 5
STEM_STRIDE = 2  # 100 -> 50 frames/s: halves the cost of every block
HIDDEN_SIZE = 128  # D of every hidden state
NUM_BLOCKS = 8
# Depthwise kernel along time, 180 ms at 50 frames/s: depthwise taps are nearly free, and 8
# blocks then see ~1.3 s, a whole spoken command.
BLOCK_KERNEL_FRAMES = 9


def frame_counts(lengths: torch.Tensor) -> torch.Tensor:
    """Front-end frames lying wholly inside each clip (at least one, for very short clips)."""
    return (lengths.clamp(min=WINDOW_SAMPLES) - WINDOW_SAMPLES) // HOP_SAMPLES + 1


def stem_counts(frames: torch.Tensor) -> torch.Tensor:
    """Stem output frames whose receptive field starts inside the clip (conv length formula)."""
    pad = STEM_KERNEL_FRAMES // 2
    return (frames + 2 * pad - STEM_KERNEL_FRAMES) // STEM_STRIDE + 1


def _mask(counts: torch.Tensor, frames: int) -> torch.Tensor:
    return torch.arange(frames, device=counts.device)[None, :] < counts[:, None]


def normalise_clip(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-band mean removal and one scale per clip, from real frames only; padding set to 0.

    One scale per clip rather than per band: per-band variance would blow up near-silent
    bands (everything above 4 kHz in 8 kHz recordings) into pure noise.
    """
    m = mask[:, None, :].to(feats.dtype)
    n_frames = m.sum(-1, keepdim=True)
    centred = (feats - (feats * m).sum(-1, keepdim=True) / n_frames) * m
    var = centred.pow(2).sum((1, 2), keepdim=True) / (n_frames * feats.shape[1])
    return centred / (var + NORM_EPS).sqrt()


class LogMel(nn.Module):
    """Log mel power, 40 bands, 25 ms / 10 ms, uncentred so frames never see padding."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        self.out_channels = n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=WINDOW_SAMPLES,
            hop_length=HOP_SAMPLES,
            n_mels=n_mels,
            center=False,
        )

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(waves) + LOG_OFFSET)


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def gabor_filters(n_filters: int = N_FILTERS) -> torch.Tensor:
    """Mel-spaced complex Gabor filters, the learned filterbank's starting point.

    Shape [2 * n_filters, 1, WINDOW_SAMPLES]: real parts, then imaginary parts, each complex
    filter of unit energy. Each Gaussian envelope is sized so the half-power bandwidth matches
    the mel triangle at the same centre; a Hann taper keeps the wide (low-band) envelopes from
    ending in a hard edge at the window border.
    """
    mels = torch.linspace(
        float(_hz_to_mel(torch.tensor(MIN_CENTRE_HZ))),
        float(_hz_to_mel(torch.tensor(MAX_CENTRE_HZ))),
        n_filters + 2,
        dtype=torch.float64,
    )
    edges = _mel_to_hz(mels)
    centres = edges[1:-1, None]
    bandwidths = (edges[2:] - edges[:-2])[:, None] / 2  # a triangle's full width at half max
    sigma = math.sqrt(2 * math.log(2)) / (math.pi * bandwidths)  # seconds, Gaussian envelope
    t = (torch.arange(WINDOW_SAMPLES, dtype=torch.float64) - (WINDOW_SAMPLES - 1) / 2) / SAMPLE_RATE
    envelope = torch.exp(-0.5 * (t / sigma) ** 2)
    envelope = envelope * torch.hann_window(WINDOW_SAMPLES, periodic=False, dtype=torch.float64)
    real = envelope * torch.cos(2 * math.pi * centres * t)
    imag = envelope * torch.sin(2 * math.pi * centres * t)
    norm = (real.pow(2) + imag.pow(2)).sum(-1, keepdim=True).sqrt()
    return torch.cat([real / norm, imag / norm]).unsqueeze(1).float()


class LearnedFilterbank(nn.Module):
    """Strided conv filterbank on the raw wave; |real + i imag|^2 then log gives band power.

    Pairing filters into complex ones makes the band power independent of where the 10 ms
    hop falls in the waveform's phase, which a single real filter's |output| is not. Starting
    from mel-like Gabor filters (then learned freely) rather than noise matters on small data.
    """

    def __init__(self, n_filters: int = N_FILTERS):
        super().__init__()
        self.out_channels = n_filters
        self.conv = nn.Conv1d(1, 2 * n_filters, WINDOW_SAMPLES, stride=HOP_SAMPLES, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(gabor_filters(n_filters))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        real, imag = self.conv(waves.unsqueeze(1)).chunk(2, dim=1)
        return torch.log(real.pow(2) + imag.pow(2) + LOG_OFFSET)


class DSBlock(nn.Module):
    """Depthwise conv along time, BatchNorm, ReLU, pointwise conv, BatchNorm, residual, ReLU."""

    def __init__(self, channels: int, kernel_frames: int = BLOCK_KERNEL_FRAMES):
        super().__init__()
        self.depthwise = nn.Conv1d(
            channels, channels, kernel_frames, padding=kernel_frames // 2, groups=channels,
            bias=False,
        )
        self.norm1 = nn.BatchNorm1d(channels)
        self.pointwise = nn.Conv1d(channels, channels, 1, bias=False)
        self.norm2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` [B, D, frames] with padded frames zero; ``keep`` [B, 1, frames] 1.0 on real ones.

        Re-zeroing the output keeps BatchNorm's shift out of the padding the next block's
        time conv reads.
        """
        y = torch.relu(self.norm1(self.depthwise(x)))
        y = self.norm2(self.pointwise(y))
        return torch.relu(x + y) * keep


class ConvEncoder(Encoder):
    """Front end -> clip normalisation -> strided conv stem -> DS blocks (see module docstring)."""

    sample_rate = SAMPLE_RATE
    window = "clip"

    def __init__(
        self,
        front_end: nn.Module,
        hidden_size: int = HIDDEN_SIZE,
        num_blocks: int = NUM_BLOCKS,
        kernel_frames: int = BLOCK_KERNEL_FRAMES,
    ):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_blocks
        self.front_end = front_end
        self.stem = nn.Sequential(
            nn.Conv1d(
                front_end.out_channels, hidden_size, STEM_KERNEL_FRAMES, stride=STEM_STRIDE,
                padding=STEM_KERNEL_FRAMES // 2, bias=False,
            ),
            nn.BatchNorm1d(hidden_size),
            nn.ReLU(),
        )
        # nn.Module.__setattr__ registers this in _modules; the ``blocks`` property reads it back
        self.blocks = nn.ModuleList(DSBlock(hidden_size, kernel_frames) for _ in range(num_blocks))

    @property
    def blocks(self) -> nn.ModuleList:
        return self._modules["blocks"]

    def reset_block(self, index: int) -> None:
        """PyTorch's default init (BatchNorm running statistics included), as a fresh model."""
        for module in self.blocks[index].modules():
            if isinstance(module, (nn.Conv1d, nn.BatchNorm1d)):
                module.reset_parameters()

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
        lengths = lengths.to(waves.device)
        waves = waves * (torch.arange(waves.shape[1], device=waves.device) < lengths[:, None])
        waves = F.pad(waves, (0, max(0, WINDOW_SAMPLES - waves.shape[1])))
        feats = self.front_end(waves)
        frames = frame_counts(lengths)
        feats = normalise_clip(feats, _mask(frames, feats.shape[-1]))
        hidden = self.stem(feats)
        mask = _mask(stem_counts(frames), hidden.shape[-1])
        first = (hidden * mask[:, None, :]).transpose(1, 2)
        return EncoderOutput(hidden_states=[first, *self.run_blocks(first, mask, 0)], mask=mask)

    def run_blocks(self, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> list[torch.Tensor]:
        keep = mask[:, None, :].to(hidden.dtype)
        x = hidden.transpose(1, 2)
        states = []
        for block in self.blocks[start:]:
            x = block(x, keep)
            states.append(x.transpose(1, 2))
        return states


class DSCNNEncoder(ConvEncoder):
    """DS-CNN on 40 log-mel bands: the classic small-footprint keyword-spotting baseline."""

    name = "ds-cnn"

    def __init__(
        self,
        hidden_size: int = HIDDEN_SIZE,
        num_blocks: int = NUM_BLOCKS,
        kernel_frames: int = BLOCK_KERNEL_FRAMES,
    ):
        super().__init__(LogMel(), hidden_size, num_blocks, kernel_frames)


class RawWaveEncoder(ConvEncoder):
    """The same stack on a filterbank learned from the raw waveform: does learning it pay?"""

    name = "raw-cnn"

    def __init__(
        self,
        hidden_size: int = HIDDEN_SIZE,
        num_blocks: int = NUM_BLOCKS,
        kernel_frames: int = BLOCK_KERNEL_FRAMES,
    ):
        super().__init__(LearnedFilterbank(), hidden_size, num_blocks, kernel_frames)


CNN_ENCODERS: dict[str, Callable[[], Encoder]] = {
    DSCNNEncoder.name: DSCNNEncoder,
    RawWaveEncoder.name: RawWaveEncoder,
}


def build_cnn(name: str) -> Encoder:
    """A freshly initialised compact encoder; there are no pretrained weights for these."""
    if name not in CNN_ENCODERS:
        raise ValueError(f"unknown CNN encoder {name!r}; choose from {sorted(CNN_ENCODERS)}")
    return CNN_ENCODERS[name]()
