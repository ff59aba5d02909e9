"""A small, readable torch port of Whisper (encoder + decoder), loadable from CTranslate2 files.

The layer layout and names follow openai/whisper's ``model.py`` so the maths can be checked
side by side; ``speechxfer.encoders.ct2`` maps CTranslate2 variables onto these names.

Frame bookkeeping (``window`` modes of :class:`WhisperEncoder`)
---------------------------------------------------------------
Mel frame ``t`` is an STFT frame centred on sample ``t * HOP_SAMPLES``; encoder frame ``j``
(after the stride-2 conv) is centred on mel frame ``2 j``, i.e. sample ``j * SAMPLES_PER_FRAME``.
An encoder frame is *real* (mask True) when its centre lies inside the clip:
``j < ceil(length / SAMPLES_PER_FRAME)``. That rule is the same in both modes.

- ``"30s"``: exactly Whisper: each clip is zero-padded to 30 s, its log-mel normalised over
  all 3000 frames, and attention runs over all 1500 frames (no key mask, as in training).
- ``"clip"``: only the batch's padded length is processed. The log-mel of every frame that
  matters is computed from the zero-padded clip, so it equals the ``"30s"`` features there;
  the max-8 normalisation uses only frames whose window touches the clip (which gives the
  same maximum as Whisper's), and padded frames are excluded from attention. A clip alone and
  the same clip in a padded batch therefore give the same hidden states on its real frames.
- ``"Ns"`` (e.g. ``"2s"``): as ``"30s"`` but padded only to N seconds (or to the batch's
  longest clip if that is longer). Whisper learnt to read speech followed by silence, and a
  couple of seconds of it recovers nearly all the accuracy of the 30-s window at a fraction of
  its cost (figures: the README's "Whisper window" table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

from speechxfer.audio import SAMPLE_RATE
from speechxfer.encoders.base import Encoder, EncoderOutput

N_FFT = 400  # samples per STFT window (25 ms)
HOP_SAMPLES = 160  # samples between mel frames (10 ms)
N_MELS = 80  # mel bins of every Whisper model before large-v3
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's fixed 30-s input window, in samples
CHUNK_MEL_FRAMES = CHUNK_SAMPLES // HOP_SAMPLES  # 3000 mel frames per 30 s
CONV_STRIDE = 2  # conv2 halves the frame rate: 100 Hz mel -> 50 Hz encoder frames
SAMPLES_PER_FRAME = HOP_SAMPLES * CONV_STRIDE  # 320 samples = 20 ms per encoder frame
LOG_FLOOR = 1e-10  # power floor before log10
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below each clip's loudest bin
TEXT_CONTEXT = 448  # decoder positions


def window_seconds(window: str) -> float | None:
    """None for ``"clip"``; N for a fixed ``"Ns"`` window, which clips are zero-padded to."""
    if window == "clip":
        return None
    try:
        seconds = float(window.removesuffix("s")) if window.endswith("s") else -1.0
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= CHUNK_SAMPLES / SAMPLE_RATE:
        raise ValueError(f"window must be 'clip' or 'Ns' with 1 <= N <= 30 (e.g. '30s'), got {window!r}")
    return seconds


@dataclass(frozen=True)
class WhisperDims:
    """Architecture hyper-parameters (Whisper uses the same width/depth on both sides)."""

    n_vocab: int
    d_model: int
    n_heads: int
    n_layers: int
    n_mels: int = N_MELS
    n_audio_ctx: int = CHUNK_MEL_FRAMES // CONV_STRIDE
    n_text_ctx: int = TEXT_CONTEXT


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """Whisper's fixed encoder position table (sin half then cos half)."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def mel_frames(lengths: torch.Tensor) -> torch.Tensor:
    """Mel frames whose STFT window touches the clip: ``t * hop - n_fft/2 < length``."""
    return torch.div(lengths + N_FFT // 2 + HOP_SAMPLES - 1, HOP_SAMPLES, rounding_mode="floor")


def encoder_frames(lengths: torch.Tensor) -> torch.Tensor:
    """Encoder frames whose centre lies in the clip: ``ceil(length / 320)``."""
    return torch.div(lengths + SAMPLES_PER_FRAME - 1, SAMPLES_PER_FRAME, rounding_mode="floor")


class LogMel(nn.Module):
    """Whisper's log-mel front end; filters are Slaney mels as librosa builds them."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        fbanks = AF.melscale_fbanks(
            N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney",
            mel_scale="slaney",
        )
        # not persistent: derived constants, not weights
        self.register_buffer("filters", fbanks.T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(
        self, waves: torch.Tensor, n_frames: int, norm_frames: torch.Tensor
    ) -> torch.Tensor:
        """[B, T] zero-padded waves -> [B, n_mels, n_frames] normalised log-mel.

        ``norm_frames[b]``: how many leading frames of clip ``b`` set its max-8 floor.
        """
        spec = torch.stft(waves, N_FFT, HOP_SAMPLES, window=self.window, return_complex=True)
        power = spec[..., :n_frames].abs() ** 2
        log_spec = torch.clamp(self.filters @ power, min=LOG_FLOOR).log10()
        counted = torch.arange(n_frames, device=waves.device)[None, :] < norm_frames[:, None]
        peak = log_spec.masked_fill(~counted[:, None, :], -torch.inf).amax(dim=(1, 2))
        log_spec = torch.maximum(log_spec, (peak - DYNAMIC_RANGE)[:, None, None])
        return (log_spec + 4.0) / 4.0


class MultiHeadAttention(nn.Module):
    """Whisper attention: the key projection has no bias."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, causal: bool = False,
    ) -> torch.Tensor:
        """``mask``: bool, broadcastable to [B, heads, queries, keys], True where allowed."""
        context = x if context is None else context
        q, k, v = self.query(x), self.key(context), self.value(context)
        b, n_q, d = q.shape
        heads = (t.view(b, -1, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        q, k, v = heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, n_q, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: self-attention, optional cross-attention, 4x GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, cross_attention: bool = False):
        super().__init__()
        self.attn_ln = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.cross_attn_ln = nn.LayerNorm(d_model) if cross_attention else None
        self.cross_attn = MultiHeadAttention(d_model, n_heads) if cross_attention else None
        self.mlp_ln = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
        context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), mask=mask, causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), context, mask=context_mask)
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(Encoder):
    """Whisper's audio encoder with the log-mel front end built in (see module docstring)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, dims: WhisperDims, window: str = "clip", name: str = "whisper"):
        super().__init__()
        window_seconds(window)  # validates
        self.name, self.window, self.dims = name, window, dims
        self.hidden_size, self.num_layers = dims.d_model, dims.n_layers
        self.log_mel = LogMel(dims.n_mels)
        self.conv1 = nn.Conv1d(dims.n_mels, dims.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(
            dims.d_model, dims.d_model, kernel_size=3, stride=CONV_STRIDE, padding=1
        )
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, dims.d_model))
        # nn.Module.__setattr__ registers this in _modules; the ``blocks`` property reads it back
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.d_model, dims.n_heads) for _ in range(dims.n_layers)
        )
        self.ln_post = nn.LayerNorm(dims.d_model)

    @property
    def blocks(self) -> nn.ModuleList:
        return self._modules["blocks"]

    def reset_block(self, index: int) -> None:
        """PyTorch's default init for every Linear/LayerNorm of the block, as a fresh model."""
        for module in self.blocks[index].modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def features(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Normalised log-mel [B, n_mels, frames] and the number of encoder frames to keep."""
        waves = waves * (torch.arange(waves.shape[1], device=waves.device) < lengths[:, None])
        seconds = window_seconds(self.window)
        if seconds is not None:
            target = int(seconds * SAMPLE_RATE)
            if waves.shape[1] > target and target == CHUNK_SAMPLES:
                raise ValueError(f"clips longer than {CHUNK_SAMPLES} samples (30 s) do not fit")
            # a shorter window grows to the batch's longest clip, in whole encoder frames
            target = max(target, -(-waves.shape[1] // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME)
            waves = F.pad(waves, (0, target - waves.shape[1]))
            n_mel = target // HOP_SAMPLES
            norm_frames = torch.full_like(lengths, n_mel)
            return self.log_mel(waves, n_mel, norm_frames), n_mel // CONV_STRIDE
        n_out = int(encoder_frames(lengths).max())
        # encoder frame j reads mel frames up to 2j + 2 through the two convs: compute them all
        # from zero-padded audio (not conv zero padding) so batch padding cannot leak in
        n_mel = CONV_STRIDE * n_out + 1
        waves = F.pad(waves, (0, (n_mel - 1) * HOP_SAMPLES + N_FFT // 2 - waves.shape[1]))
        return self.log_mel(waves, n_mel, mel_frames(lengths)), n_out

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
        mel, n_out = self.features(waves, lengths)
        return self.encode_mel(mel, lengths, n_out)

    def encode_mel(
        self, mel: torch.Tensor, lengths: torch.Tensor, n_out: int | None = None
    ) -> EncoderOutput:
        """Run the network on ready log-mel features (e.g. to compare with CTranslate2)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)[:, :n_out]
        if x.shape[1] > self.dims.n_audio_ctx:
            raise ValueError(f"{x.shape[1]} frames exceed the {self.dims.n_audio_ctx} positions")
        x = x + self.positional_embedding[: x.shape[1]]
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < encoder_frames(lengths)[:, None]
        return EncoderOutput(hidden_states=[x, *self.run_blocks(x, mask, 0)], mask=mask)

    def run_blocks(
        self, hidden: torch.Tensor, mask: torch.Tensor, start: int
    ) -> list[torch.Tensor]:
        """Hidden states ``start + 1 .. num_layers`` from hidden state ``start`` (see base)."""
        # in a fixed window every block attends over the whole (padded) window, as in training;
        # clip mode hides padded frames; a batch without padding takes SDPA's unmasked fast path
        padded = self.window == "clip" and not bool(mask.all())
        key_mask = mask[:, None, None, :] if padded else None
        out, x = [], hidden
        for block in list(self.blocks)[start:]:
            x = block(x, mask=key_mask)
            out.append(x)
        if out:  # start == num_layers: the input already is the final (normed) state
            out[-1] = self.ln_post(x)
        return out

    def top_parameters(self) -> list[nn.Parameter]:
        return list(self.ln_post.parameters())


class TextDecoder(nn.Module):
    """Whisper's text decoder; the output projection is tied to the token embedding."""

    def __init__(self, dims: WhisperDims):
        super().__init__()
        self.token_embedding = nn.Embedding(dims.n_vocab, dims.d_model)
        self.positional_embedding = nn.Parameter(torch.empty(dims.n_text_ctx, dims.d_model))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.d_model, dims.n_heads, cross_attention=True)
            for _ in range(dims.n_layers)
        )
        self.ln = nn.LayerNorm(dims.d_model)

    def forward(
        self, tokens: torch.Tensor, encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens [B, S], encoder_states [B, F, D] (-> logits [B, S, vocab]).

        ``encoder_mask`` [B, F] (True = real frame) hides padded frames from cross-attention.
        """
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        context_mask = None if encoder_mask is None else encoder_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, causal=True, context=encoder_states, context_mask=context_mask)
        return self.ln(x) @ self.token_embedding.weight.T


@dataclass(frozen=True)
class DecodingRules:
    """Token suppression CTranslate2 applies in ``generate`` (from the model's config.json)."""

    eot: int
    suppress_ids: tuple[int, ...] = ()
    suppress_ids_begin: tuple[int, ...] = ()  # only at the first generated step


class Whisper(nn.Module):
    """Encoder + decoder, for zero-shot transcription."""

    def __init__(self, dims: WhisperDims, window: str = "30s", name: str = "whisper"):
        super().__init__()
        self.dims = dims
        self.encoder = WhisperEncoder(dims, window=window, name=name)
        self.decoder = TextDecoder(dims)

    def logits(
        self, tokens: torch.Tensor, encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, S, vocab] for every prefix of ``tokens``."""
        return self.decoder(tokens, encoder_states, encoder_mask)

    @torch.no_grad()
    def greedy_decode(
        self, encoder_states: torch.Tensor, prompt: list[int], rules: DecodingRules,
        encoder_mask: torch.Tensor | None = None, max_length: int = TEXT_CONTEXT,
    ) -> list[list[int]]:
        """Greedy tokens after ``prompt`` up to (excluding) end-of-text, one list per clip.

        Recomputes the whole prefix each step (no KV cache): fine for command-length outputs.
        """
        batch = encoder_states.shape[0]
        tokens = torch.tensor([prompt] * batch, device=encoder_states.device)
        done = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        suppress = torch.tensor(rules.suppress_ids, dtype=torch.long, device=tokens.device)
        suppress_begin = torch.tensor(
            rules.suppress_ids_begin, dtype=torch.long, device=tokens.device
        )
        for step in range(max_length - len(prompt)):
            logits = self.logits(tokens, encoder_states, encoder_mask)[:, -1]
            logits[:, suppress] = -torch.inf
            if step == 0:
                logits[:, suppress_begin] = -torch.inf
            next_token = logits.argmax(dim=-1).masked_fill(done, rules.eot)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            done |= next_token == rules.eot
            if bool(done.all()):
                break
        out = []
        for row in tokens[:, len(prompt) :].tolist():
            out.append(row[: row.index(rules.eot)] if rules.eot in row else row)
        return out
