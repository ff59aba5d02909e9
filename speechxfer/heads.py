"""Heads: mix the encoder's layers, pool frames into one vector, classify.

Which layer holds the answer differs by task (words sit high, speaker identity lower), so the
default mixes all layers with learned softmax weights (the SUPERB recipe) instead of guessing.

Three head kinds share that trunk and differ only in output, activation and loss:
- ``single``: one label per clip; softmax, cross-entropy;
- ``multi``: any subset of the labels (e.g. the commands in a concatenated clip); a sigmoid per
  class, binary cross-entropy over the entries whose truth is known;
- ``embedding``: an L2-normalised vector (e.g. a speaker embedding) trained with additive-margin
  softmax against one learned prototype per class, so unseen classes (new speakers) can still be
  compared by cosine, while the prototypes give closed-set identification.

Multi-label values are written ``"1|7"`` (classes present, every other class absent); a token
``"?3"`` marks class 3's entry unknown, and an empty value marks the whole label unknown.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real

import torch
from torch import nn

POOLINGS = ("mean", "attentive")
HEAD_KINDS = ("single", "multi", "embedding")
# bounds on what a config may ask for: a hostile config.json must fail before allocating
MAX_CLASSES = 10_000  # labels of one task
MAX_HIDDEN_SIZE = 8_192  # encoder width
MAX_STATES = 257  # encoder layers + 1
MAX_EMBEDDING_DIM = 4_096
MAX_SCALE = 1_000.0  # cosine-to-logit scale of embedding heads
MISSING = -1  # target of an unknown label (single/embedding) or an unknown multi-label entry
SEP, UNKNOWN_MARK = "|", "?"
EMBEDDING_OPTIONS = ("embedding_dim", "margin", "scale")  # HeadConfig fields only they read


@dataclass
class HeadConfig:
    """Everything needed to rebuild a head; saved in the model's config.json."""

    num_classes: int
    hidden_size: int
    num_states: int  # encoder layers + 1
    layer: int | None = None  # None: learned mix of all layers; else that hidden state only
    pooling: str = "mean"
    dropout: float = 0.1
    kind: str = "single"
    embedding_dim: int = 128  # embedding heads only
    margin: float = 0.2  # additive cosine margin of the embedding loss
    scale: float = 30.0  # cosine-to-logit scale of the embedding loss and probabilities

    def __post_init__(self) -> None:
        """Refuse sizes and options no head can have before anything is allocated (the values
        come from config.json, a user file)."""
        check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        check_int("hidden_size", self.hidden_size, 1, MAX_HIDDEN_SIZE)
        check_int("num_states", self.num_states, 1, MAX_STATES)
        if self.layer is not None:
            check_int("layer", self.layer, -self.num_states, self.num_states - 1)
        if not isinstance(self.pooling, str) or self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {POOLINGS}")
        if not isinstance(self.kind, str) or self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; choose from {HEAD_KINDS}")
        check_real("dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_int("embedding_dim", self.embedding_dim, 1, MAX_EMBEDDING_DIM)
        check_real("margin", self.margin, 0.0, 2.0)
        check_real("scale", self.scale, 0.0, MAX_SCALE, low_open=True)
        if self.kind != "embedding":  # other kinds never read them: a set one is a mistake
            unused = [f.name for f in fields(self)
                      if f.name in EMBEDDING_OPTIONS and getattr(self, f.name) != f.default]
            if unused:
                raise ValueError(f"{', '.join(unused)}: options of embedding heads only; this "
                                 f"head is {self.kind!r} (--task NAME:embedding)")

    def options(self) -> dict:
        """The per-task choices config.json keeps; the sizes come from the encoder and labels."""
        skip = ("num_classes", "hidden_size", "num_states")
        return {k: v for k, v in asdict(self).items() if k not in skip}


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an integer (not a bool) in [low, high]; else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r:.60}")
    return int(value)


def check_real(name: str, value: object, low: float, high: float, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` if it is a finite number (not a bool) within the bounds; else a ValueError."""
    ok = (not isinstance(value, bool) and isinstance(value, Real)
          and (isinstance(value, Integral) or math.isfinite(value))  # JSON ints may be huge
          and (low < value if low_open else low <= value)
          and (value < high if high_open else value <= high))
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r:.60}")
    return float(value)


def multilabel_classes(values: list[str]) -> list[str]:
    """Every class named in multi-label values (known-present or marked unknown)."""
    return sorted({tok.removeprefix(UNKNOWN_MARK) for v in values for tok in v.split(SEP) if tok}
                  - {""})


def encode_multilabel(value: str | None, classes: list[str]) -> list[float]:
    """A multi-label value as 1 (present) / 0 (absent) / MISSING (unknown) per class."""
    if not value:
        return [float(MISSING)] * len(classes)
    tokens = [t for t in value.split(SEP) if t]
    present = {t for t in tokens if not t.startswith(UNKNOWN_MARK)}
    unknown = {t[len(UNKNOWN_MARK):] for t in tokens if t.startswith(UNKNOWN_MARK)}
    return [float(MISSING) if c in unknown else float(c in present) for c in classes]


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
    """Layer mix -> pooling -> layer norm, dropout, linear classifier (the ``single`` kind)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; choose from {POOLINGS}")
        if config.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {config.kind!r}; choose from {HEAD_KINDS}")
        self.config = config
        self.mix = LayerMix(config.num_states, config.layer)
        self.pool = AttentiveStatsPool(config.hidden_size) if config.pooling == "attentive" else None
        pooled = config.hidden_size * (2 if self.pool is not None else 1)
        out = config.embedding_dim if config.kind == "embedding" else config.num_classes
        self.classifier = nn.Sequential(
            nn.LayerNorm(pooled), nn.Dropout(config.dropout), nn.Linear(pooled, out)
        )

    def forward(self, states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        x = self.mix(states)
        pooled = masked_mean(x, mask) if self.pool is None else self.pool(x, mask)
        return self.classifier(pooled)

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out.float(), -1)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the clips whose label is known."""
        return nn.functional.cross_entropy(out.float(), target, ignore_index=MISSING)


class MultiLabelHead(ClassifierHead):
    """A sigmoid per class: several labels may be present at once."""

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy averaged over the known entries only."""
        known = target != MISSING
        per_entry = nn.functional.binary_cross_entropy_with_logits(
            out.float(), target.float().clamp(min=0), reduction="none"
        )
        return (per_entry * known).sum() / known.sum().clamp(min=1)


class EmbeddingHead(ClassifierHead):
    """An L2-normalised embedding, trained by additive-margin softmax over class prototypes."""

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.prototypes = nn.Parameter(torch.randn(config.num_classes, config.embedding_dim) * 0.1)

    def forward(self, states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(super().forward(states, mask).float(), dim=-1)

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ nn.functional.normalize(self.prototypes, dim=-1).T

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.config.scale * self.cosines(out), -1)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """AM-softmax: the true class's cosine must beat the others by ``margin``."""
        cos = self.cosines(out)
        known = target != MISSING
        margin = nn.functional.one_hot(target.clamp(min=0), cos.shape[-1]) * known.unsqueeze(-1)
        logits = self.config.scale * (cos - self.config.margin * margin)
        return nn.functional.cross_entropy(logits, target, ignore_index=MISSING)


def build_head(config: HeadConfig) -> ClassifierHead:
    """The head class for ``config.kind``."""
    if config.kind == "multi":
        return MultiLabelHead(config)
    if config.kind == "embedding":
        return EmbeddingHead(config)
    return ClassifierHead(config)
