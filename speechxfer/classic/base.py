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
from safetensors.numpy import save_file

from speechxfer.audio import SAMPLE_RATE
from speechxfer.classic.mfcc import FEATURE_DIM, mfcc_features
from speechxfer.heads import check_int, check_real
from speechxfer.log import LOGGER
from speechxfer.recognizer import (
    ModelError,
    Recognizer,
    check_kind,
    check_labels,
    is_model_folder,
    read_config,
    read_weights,
    softmax,
)
from speechxfer.store import atomic_folder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROBE_FRAMES = 20  # a loaded model scores one such blank clip: weights that do not fit fail here


def _warn_copies(feats: list[np.ndarray], labels: list[str]) -> None:
    """Say when every training clip of a label is the same audio: the model then learns one
    utterance, not the word, and is near-certain that other voices' takes are something else."""
    groups: dict[str, list[np.ndarray]] = {}
    for f, label in zip(feats, labels):
        groups.setdefault(label, []).append(f)
    for label, group in sorted(groups.items()):
        if len(group) > 1 and all(np.array_equal(group[0], f) for f in group[1:]):
            LOGGER.warning("label %r: its %d training clips are copies of one recording: the "
                           "model learns that one utterance and may miss other takes of %r",
                           label, len(group), label)


@dataclass
class ClassicRecognizer(Recognizer, ABC):
    """Base class: turns waves into MFCCs, labels into indices, scores into probabilities.

    As a ``Recognizer`` it also offers ``predict(file or samples)`` and ``predict_batch``, so
    eval, predict and the recipes treat it like a neural model.
    """

    kind: ClassVar[str]
    sample_rate: int = SAMPLE_RATE  # Hz of the waves given to fit/predict
    trim_silence: bool = True
    seed: int = 0
    labels: list[str] = field(default_factory=list, init=False)
    # [low, high] of every numeric option (a saved config is a user file); subclasses extend it
    OPTION_RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "sample_rate": (1_000, 192_000), "seed": (0, 2**32 - 1)}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # config.json's kind, as recognizer.KINDS names it
            cls.model_kind = f"classic-{cls.kind}"

    def __post_init__(self) -> None:
        """Refuse options of the wrong type or out of range before anything uses them."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.init or isinstance(f.default, str):  # str-typed options: the subclass checks
                continue
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise TypeError(f"option {f.name} must be true or false, got {value!r:.60}")
            elif isinstance(f.default, int):
                check_int(f"option {f.name}", value, *self.OPTION_RANGES[f.name])
            else:
                check_real(f"option {f.name}", value, *self.OPTION_RANGES[f.name])

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
        _warn_copies(feats, [str(label) for label in labels])
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
        return softmax(self._log_scores(self.features(waves)))

    def predict_labels(self, waves: list[torch.Tensor]) -> list[str]:
        """Most probable label per wave."""
        return [self.labels[i] for i in self.predict_proba(waves).argmax(axis=1)]

    def save(self, directory: str | Path) -> None:
        """Write model.safetensors (parameters) and config.json (kind, labels, options)."""
        if not self.labels:
            raise RuntimeError("cannot save an unfitted recogniser")
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        with atomic_folder(directory, is_model_folder) as folder:  # weights + config, or neither
            save_file(arrays, str(folder / WEIGHTS_FILE))
            config = {**self.config_header(), "sample_rate": self.sample_rate,
                      "labels": self.labels, "options": self.options(), **self.rejection_config()}
            (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ClassicRecognizer:
        """Rebuild a recogniser written by ``save``; options, labels and weights that do not
        fit together are a ModelError naming the folder (a loaded model never mislabels)."""
        directory = Path(directory)
        return cls.from_folder(directory, read_config(directory, cls.model_kind), device)

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu") -> ClassicRecognizer:
        """The recogniser of a folder whose config.json ``read_config`` has read; it computes
        with NumPy, so on the CPU whatever ``device`` says."""
        check_kind(directory, config, cls.model_kind)
        options, names = config.get("options"), sorted(f.name for f in fields(cls) if f.init)
        if not isinstance(options, dict) or sorted(options) != names:
            got = sorted(options) if isinstance(options, dict) else options
            raise ModelError(f"{directory}: options must name exactly {names}, got {got!r:.200}")
        try:
            model = cls(**options)
        except (TypeError, ValueError) as err:
            raise ModelError(f"{directory}: bad options ({err})") from None
        try:
            model.labels = check_labels(config.get("labels"))
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        model.load_rejection(config, directory)
        if model.labels != sorted(model.labels):  # fit sorts them: weight i is label i
            raise ModelError(f"{directory}: labels {model.labels} are not in the sorted order "
                             "their weights were fitted in")
        if config.get("sample_rate", model.sample_rate) != model.sample_rate:
            raise ModelError(f"{directory}: sample_rate {config['sample_rate']!r:.20} differs "
                             f"from options' {model.sample_rate}")
        arrays = read_weights(directory / WEIGHTS_FILE, "np")
        problem = f"{len(model.labels)} labels"
        try:
            model._restore(arrays)
            probe = model._log_scores([np.zeros((PROBE_FRAMES, FEATURE_DIM), np.float32)])
            fits = (set(model._arrays()) == set(arrays) and np.shape(probe) == (1, len(model.labels))
                    and bool(np.isfinite(probe).all()))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
            fits, problem = False, f"{problem}; {str(err)[:200]}"
        if not fits:
            raise ModelError(f"{directory}: the weights in {WEIGHTS_FILE} do not fit config.json "
                             f"({problem})")
        return model
