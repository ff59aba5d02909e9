"""Generative tuning: zero-shot scoring whose top decoder blocks were fine-tuned on labelled
clips (``train.fit_generative`` runs the training loop; this module holds no loop).

The loss is cross-entropy over the label scores (softmax over labels of the spellings'
length-normalised log-probabilities), so training sharpens exactly what ``predict`` ranks; the
encoder and the bottom decoder blocks stay frozen and are cached (``DecoderCache``). Only the
tuned tensors are saved; the rest are the installed package's weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..audio import batch_waves, batches_by_length
from ..heads import check_int
from ..recognizer import ModelError, check_kind, is_model_folder, read_weights
from ..store import atomic_folder
from .scoring import ZeroShotRecognizer

KIND = "generative"
WEIGHTS = "decoder.safetensors"


class DecoderCache:
    """Per clip: final encoder states, the decoder layout's hidden state below the tuned
    blocks, and the zero-shot label scores, all from one frozen pass.

    Why: with the encoder and the bottom decoder blocks frozen, a fine-tuning step only runs
    the tuned blocks over cached inputs, and the zero-shot scores come for free. Stored in
    float16 on the CPU per clip; in the clip window only the real frames are kept.
    """

    def __init__(self, system: ZeroShotRecognizer, waves: list[torch.Tensor], tuned_from: int,
                 batch_size: int = 16):
        self.tuned_from = tuned_from
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(waves)
        self.hidden: list[torch.Tensor] = [torch.empty(0)] * len(waves)
        self.scores = np.zeros((len(waves), len(system.labels)), np.float32)
        system.model.eval()
        with torch.no_grad():
            for idx in batches_by_length(waves, batch_size):
                states, mask = system.encode(*batch_waves([waves[i] for i in idx]))
                x = system.run_decoder_blocks(system.decoder_input(len(idx)), states, mask,
                                              0, tuned_from)
                top = system.run_decoder_blocks(x, states, mask, tuned_from)
                self.scores[idx] = system.labels_from_candidates(
                    system.scores_from_hidden(top)).cpu().numpy()
                for j, i in enumerate(idx):
                    n = int(mask[j].sum()) if mask is not None else states.shape[1]
                    self.states[i] = states[j, :n].to(torch.float16).cpu()
                    self.hidden[i] = x[j].to(torch.float16).cpu()

    def __len__(self) -> int:
        return len(self.states)

    def subset(self, idx: list[int]) -> DecoderCache:
        """The cache of clips ``idx`` (sharing tensors)."""
        part = copy.copy(self)
        part.states = [self.states[i] for i in idx]
        part.hidden = [self.hidden[i] for i in idx]
        part.scores = self.scores[idx]
        return part

    def batch(self, idx: list[int], clip_window: bool, device: str | torch.device = "cpu"):
        """Stacked hidden [B, T, D], padded states [B, F, D] and their mask (or None)."""
        lengths = torch.tensor([self.states[i].shape[0] for i in idx])
        states = torch.nn.utils.rnn.pad_sequence([self.states[i] for i in idx], batch_first=True)
        mask = torch.arange(states.shape[1])[None, :] < lengths[:, None]
        if not clip_window and bool(mask.all()):
            mask = None  # a fixed window attends over all of it, as ``encode`` does
        hidden = torch.stack([self.hidden[i] for i in idx]).float()
        return (hidden.to(device), states.float().to(device),
                None if mask is None else mask.to(device))


class GenerativeRecognizer(ZeroShotRecognizer):
    """Zero-shot scoring with decoder blocks ``tuned_from..`` (+ final LN) fine-tuned
    (``train.fit_generative``); by default only the last block."""

    model_kind = KIND

    def __init__(self, *args, tuned_from: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.model.decoder.blocks)
        self.tuned_from = n - 1 if tuned_from is None else tuned_from
        if not 0 <= self.tuned_from < n:
            raise ValueError(f"tuned_from must be in [0, {n - 1}], got {tuned_from}")

    def tuned_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Decoder blocks ``tuned_from..`` and the final LN (the tied embedding stays frozen)."""
        names = [f"blocks.{i}." for i in range(self.tuned_from, len(self.model.decoder.blocks))]
        return {k: v for k, v in self.model.decoder.named_parameters()
                if k.startswith("ln.") or any(k.startswith(b) for b in names)}

    def cached_label_scores(self, cache: DecoderCache, idx: list[int],
                            vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Label scores [B, labels] of cached clips ``idx``: only the tuned blocks run
        (``vocab``: the training-time normaliser, see ``scores_from_hidden``)."""
        x, states, mask = cache.batch(idx, self.window == "clip", self.device)
        top = self.run_decoder_blocks(x, states, mask, cache.tuned_from)
        return self.labels_from_candidates(self.scores_from_hidden(top, vocab))

    @torch.no_grad()
    def cached_scores(self, cache: DecoderCache, batch_size: int = 16) -> np.ndarray:
        """Label scores [n, labels] from a ``DecoderCache``: ``scores`` up to the cache's
        float16 rounding, at the cost of the tuned blocks only."""
        self.model.eval()
        out = np.zeros((len(cache), len(self.labels)), np.float32)
        for start in range(0, len(out), batch_size):
            idx = list(range(start, min(len(out), start + batch_size)))
            out[idx] = self.cached_label_scores(cache, idx).cpu().numpy()
        return out

    @torch.no_grad()
    def shortlist(self, cache: DecoderCache, per_row: int = 64,
                  clips: int = 32) -> tuple[torch.Tensor, float]:
        """Tokens for the training-time normaliser: every target plus each row's ``per_row``
        likeliest tokens on up to ``clips`` training clips; also the probability mass they held."""
        idx = list(range(min(clips, len(cache))))
        x, states, mask = cache.batch(idx, self.window == "clip", self.device)
        probs = torch.softmax(
            self.row_logits(self.run_decoder_blocks(x, states, mask, self.tuned_from)), -1)
        vocab = torch.unique(torch.cat([probs.topk(per_row, -1).indices.flatten(),
                                        self._targets]))
        return vocab, float(probs[..., vocab].sum(-1).mean())

    def config(self) -> dict:
        return {**super().config(), "tuned_from": self.tuned_from, "weights": WEIGHTS}

    def save(self, directory: str | Path) -> Path:
        """config.json plus the tuned decoder tensors (safetensors); nothing else is stored."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.tuned_parameters().items()}
        with atomic_folder(directory, is_model_folder) as folder:
            super().save(folder)
            save_file(state, str(folder / WEIGHTS))
        return directory

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu", **extra) -> GenerativeRecognizer:
        check_kind(directory, config, cls.model_kind)
        try:
            tuned_from = check_int("tuned_from", config.get("tuned_from"), 0, 255)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        system = super().from_folder(directory, config, device, tuned_from=tuned_from, **extra)
        ours = system.tuned_parameters()
        state = read_weights(directory / WEIGHTS, "pt", {k: tuple(v.shape) for k, v in ours.items()})
        with torch.no_grad():
            for k, v in ours.items():
                v.copy_(state[k])
        return system
