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
from speechxfer.recognizer import ModelError, load

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
    """Reopen any saved classic recogniser (``recognizer.load``, which dispatches on its kind)."""
    system = load(directory)
    if not isinstance(system, ClassicRecognizer):
        raise ModelError(f"{directory}: not a classic recogniser; open it with "
                         "speechxfer.load_model")
    return system


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
