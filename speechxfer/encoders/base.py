"""The one interface every encoder (Whisper, wav2vec2/HuBERT, ...) presents to the heads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """Hidden states of every layer plus the mask of frames that cover real audio.

    ``hidden_states[0]`` is the input to the first block (after the front end and positions),
    ``hidden_states[i]`` the output of block ``i``; the last one has the final layer norm applied.
    """

    hidden_states: list[torch.Tensor]  # num_layers + 1 tensors of [batch, frames, hidden]
    mask: torch.Tensor  # [batch, frames] bool, True where the frame covers the clip


class Encoder(nn.Module):
    """Waveforms in, per-layer hidden states out. Subclasses set the class attributes."""

    name: str
    sample_rate: int
    hidden_size: int
    num_layers: int  # blocks (transformer or conv); forward returns num_layers + 1 states
    window: str  # "clip" or a fixed "Ns" such as "2s" (Whisper); other encoders see the clip

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order; strategies freeze or re-initialise the top ones."""
        raise NotImplementedError

    def reset_block(self, index: int) -> None:
        """Re-initialise block ``index`` as a freshly built model would."""
        raise NotImplementedError

    def run_blocks(self, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Hidden states ``start + 1 .. num_layers`` computed from hidden state ``start``.

        Lets training cache the output of frozen lower blocks and run only the top ones; the
        last state returned must equal ``forward``'s last (final norm included).
        """
        raise NotImplementedError

    def quantized(self) -> Encoder:
        """An int8 copy for CPU inference (dynamic quantisation of every Linear layer).

        The transformer's matrix products dominate CPU time and int8 with AVX-512 VNNI runs them
        faster (benchmarks/latency.py measures both). Inference only: not trainable.
        """
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated but still works
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(self, {nn.Linear}, dtype=torch.qint8)

    def traced(self, n_samples: int) -> FixedLengthEncoder:
        """A frozen TorchScript copy for inputs of exactly ``n_samples`` samples.

        Tracing bakes the input's frame count into the graph, which lets TorchScript fuse and
        pre-pack the layers (benchmarks/latency.py measures the gain): for apps that always feed
        fixed-length windows. It returns an ``EncoderOutput`` with every hidden state, as
        ``forward`` does, so any head runs on it: ``classifier.heads_forward(traced(waves))``.
        """
        wave = torch.zeros(1, n_samples)
        wave[0, : n_samples // 2] = 0.1  # any non-silent input; only shapes are recorded
        lengths = torch.tensor([n_samples])
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the baked-in frame count
            graph = torch.jit.trace(_AllStates(self).eval(), (wave, lengths), check_trace=False)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(graph))
        return FixedLengthEncoder(graph, n_samples)

    def top_parameters(self) -> list[nn.Parameter]:
        """Parameters after the last block (e.g. the final layer norm), trained with the top."""
        return []

    def recorded(self) -> dict:
        """What decides this encoder's behaviour beyond its name and weights, for a saved
        model's config.json (``build_encoder(..., recorded=...)`` rebuilds it from that).

        Empty when the name alone fixes it (registered encoders); an encoder read from a
        user's checkpoint folder records what that folder's JSON said, so the folder changing
        or vanishing after training cannot change the saved model.
        """
        return {}


class _AllStates(nn.Module):
    """``EncoderOutput`` as a tuple of tensors: what ``torch.jit.trace`` can record."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        out = self.encoder(waves, lengths)
        return tuple(out.hidden_states), out.mask


class FixedLengthEncoder:
    """A traced encoder that refuses inputs of any other length than it was traced for."""

    def __init__(self, graph: torch.jit.ScriptModule, n_samples: int):
        self.graph, self.n_samples = graph, n_samples

    def __call__(self, waves: torch.Tensor) -> EncoderOutput:
        """[B, n_samples] waves (every clip exactly that long) -> every layer's hidden states."""
        if waves.shape[-1] != self.n_samples:
            raise ValueError(f"traced for {self.n_samples} samples, got {waves.shape[-1]}")
        lengths = torch.full((waves.shape[0],), self.n_samples)
        with torch.no_grad():  # not inference_mode: a head may run on the states afterwards
            states, mask = self.graph(waves, lengths)
        return EncoderOutput(hidden_states=list(states), mask=mask)
