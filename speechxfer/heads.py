"""Heads: mix the encoder's layers, pool frames into one vector, classify.

Which layer holds the answer differs by task (words sit high, speaker identity lower), so the
default mixes all layers with learned softmax weights (the SUPERB recipe) instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

POOLINGS = ("mean", "attentive")


@dataclass
class HeadConfig:
    """Everything needed to rebuild a head; saved in the model's config.json."""

    num_classes: int
    hidden_size: int
    num_states: int  # encoder layers + 1
    layer: int | None = None  # None: learned mix of all layers; else that hidden state only
    pooling: str = "mean"
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class LayerMix(nn.Module):
    """Softmax-weighted sum of hidden states, or one chosen state."""

    def __init__(self, num_states: int, layer: int | None = None):
        super().__init__()
        if layer is not None and not -num_states <= layer < num_states:
            raise ValueError(f"layer {layer} out of range for {num_states} hidden states")
        self.layer = layer
        self.weights = nn.Parameter(torch.zeros(num_states)) if layer is None else None

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        if self.weights is None:
            return states[self.layer]
        w = torch.softmax(self.weights, dim=0)
        return sum(wi * s for wi, s in zip(w, states))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the frames where ``mask`` is True: padding never dilutes the clip."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over frames (x-vector style)."""

    def __init__(self, hidden_size: int, attention_size: int = 128):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(hidden_size, attention_size), nn.Tanh(), nn.Linear(attention_size, 1)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1).unsqueeze(-1)
        mean = (w * x).sum(1)
        var = (w * (x - mean.unsqueeze(1)) ** 2).sum(1)
        return torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=-1)


class ClassifierHead(nn.Module):
    """Layer mix -> pooling -> layer norm, dropout, linear classifier."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; choose from {POOLINGS}")
        self.config = config
        self.mix = LayerMix(config.num_states, config.layer)
        self.pool = AttentiveStatsPool(config.hidden_size) if config.pooling == "attentive" else None
        pooled = config.hidden_size * (2 if self.pool is not None else 1)
        self.classifier = nn.Sequential(
            nn.LayerNorm(pooled), nn.Dropout(config.dropout), nn.Linear(pooled, config.num_classes)
        )

    def forward(self, states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        x = self.mix(states)
        pooled = masked_mean(x, mask) if self.pool is None else self.pool(x, mask)
        return self.classifier(pooled)
