"""The one surface every classic recogniser shares: fit/predict on waveforms, save/load as
safetensors arrays + JSON (no pickle, so a saved model is inert data that any version can read).

Subclasses are dataclasses whose init fields are their options; they implement ``_fit`` and
``_log_scores`` on MFCC feature matrices plus ``_arrays``/``_restore`` for persistence.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from scipy.special import softmax

from speechxfer.classic.mfcc import mfcc_features
from speechxfer.model import FORMAT, FORMAT_VERSION, Recognizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ClassicRecognizer(Recognizer, ABC):
    """Base class: turns waves into MFCCs, labels into indices, scores into probabilities.

    As a ``Recognizer`` it also offers ``predict(file or samples)`` and ``predict_batch``, so
    eval, predict and the recipes treat it like a neural model.
    """

    kind: ClassVar[str]
    sample_rate: int = 16000  # Hz of the waves given to fit/predict
    trim_silence: bool = True
    seed: int = 0
    labels: list[str] = field(default_factory=list, init=False)

    # -- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _fit(self, feats: list[np.ndarray], targets: np.ndarray) -> None:
        """Train on feature matrices [frames, 39] and label indices into ``self.labels``."""

    @abstractmethod
    def _log_scores(self, feats: list[np.ndarray]) -> np.ndarray:
        """Unnormalised log-scores [n, len(labels)]; softmax turns them into probabilities."""

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """Every fitted parameter as a named array."""

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the fitted state from ``_arrays()`` output (labels are already set)."""

    # -- public API -----------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """Constructor options, as stored in config.json."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def features(self, waves: list[torch.Tensor | np.ndarray]) -> list[np.ndarray]:
        """MFCC matrices for ``waves``, with a clear error for unusable input."""
        if isinstance(waves, (torch.Tensor, np.ndarray)) or len(waves) == 0:
            raise ValueError("expected a non-empty list of 1-D waveforms")
        out = []
        for i, wave in enumerate(waves):
            try:
                out.append(mfcc_features(wave, self.sample_rate, self.trim_silence))
            except ValueError as err:
                raise ValueError(f"wave {i}: {err}") from None
        return out

    def fit(self, waves: list[torch.Tensor], labels: list[str]) -> ClassicRecognizer:
        """Learn one model per label from waves at ``sample_rate``; returns self."""
        if len(waves) != len(labels):
            raise ValueError(f"got {len(waves)} waves but {len(labels)} labels")
        feats = self.features(waves)
        classes = sorted({str(label) for label in labels})
        if len(classes) < 2:
            raise ValueError(f"need at least two distinct labels, got {classes}")
        index = {label: i for i, label in enumerate(classes)}
        self.labels = classes
        try:
            self._fit(feats, np.array([index[str(label)] for label in labels]))
        except BaseException:
            self.labels = []  # a failed fit must not look fitted
            raise
        return self

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        """Class probabilities [n, len(labels)], columns in ``labels`` order, rows sum to 1."""
        if not self.labels:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load()")
        scores = self._log_scores(self.features(waves))
        return softmax(scores.astype(np.float64), axis=1)

    def predict_labels(self, waves: list[torch.Tensor]) -> list[str]:
        """Most probable label per wave."""
        return [self.labels[i] for i in self.predict_proba(waves).argmax(axis=1)]

    def save(self, directory: str | Path) -> None:
        """Write model.safetensors (parameters) and config.json (kind, labels, options)."""
        if not self.labels:
            raise RuntimeError("cannot save an unfitted recogniser")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        save_file(arrays, str(directory / WEIGHTS_FILE))
        config = {"format": FORMAT, "version": FORMAT_VERSION, "kind": f"classic-{self.kind}",
                  "sample_rate": self.sample_rate, "labels": self.labels, "options": self.options()}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ClassicRecognizer:
        """Rebuild a recogniser written by ``save``."""
        directory = Path(directory)
        config = read_config(directory)
        if config["kind"] != f"classic-{cls.kind}":
            raise ValueError(f"{directory} holds a {config['kind']!r} model, not classic-{cls.kind}")
        model = cls(**config["options"])
        model.labels = list(config["labels"])
        model._restore(load_file(str(directory / WEIGHTS_FILE)))
        return model


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a saved classic model, with a clear error when it is missing."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a saved classic model directory")
    return json.loads(path.read_text())
