"""Classic isolated-word recognisers (MFCC + GMM-HMM / DTW / SVM): the pre-transfer baseline.

All share ``ClassicRecognizer``'s surface; ``build_classic`` makes one by kind and
``load_classic`` reopens a saved one from its config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechxfer.classic.base import ClassicRecognizer
from speechxfer.classic.dtw import DTWRecognizer
from speechxfer.classic.hmm import HMMRecognizer
from speechxfer.classic.mfcc import mfcc_features
from speechxfer.classic.svm import SVMRecognizer
from speechxfer.model import ModelError, read_config

RECOGNIZERS: dict[str, type[ClassicRecognizer]] = {
    cls.kind: cls for cls in (HMMRecognizer, DTWRecognizer, SVMRecognizer)
}
CLASSIC_KINDS: tuple[str, ...] = tuple(RECOGNIZERS)


def build_classic(kind: str, **options: Any) -> ClassicRecognizer:
    """An unfitted recogniser of ``kind`` (one of CLASSIC_KINDS) with the given options."""
    if kind not in RECOGNIZERS:
        raise ValueError(f"unknown classic kind {kind!r}; choose from {CLASSIC_KINDS}")
    return RECOGNIZERS[kind](**options)


def load_classic(directory: str | Path) -> ClassicRecognizer:
    """Reopen any saved classic recogniser, dispatching on config.json's "kind"."""
    kind = read_config(Path(directory))["kind"].removeprefix("classic-")
    if kind not in RECOGNIZERS:
        raise ModelError(f"{directory}: unknown classic model kind {kind!r:.60}")
    return RECOGNIZERS[kind].load(directory)


__all__ = [
    "CLASSIC_KINDS",
    "ClassicRecognizer",
    "DTWRecognizer",
    "HMMRecognizer",
    "SVMRecognizer",
    "build_classic",
    "load_classic",
    "mfcc_features",
]
