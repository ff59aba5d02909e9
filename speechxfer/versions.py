"""Versions of the packages that matter, read from their metadata without importing them.

Why apart from ``info``: the command line imports the whole stack (torch, torchaudio, ...)
before it parses a flag; when that import fails — most often torch and torchaudio from
different releases — ``__main__`` still prints this module's report, which imports nothing heavy.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

PACKAGES = ("torch", "torchaudio", "speechbrain", "numpy", "soundfile", "librosa", "tokenizers",
            "safetensors", "scikit-learn", "ctranslate2", "onnx", "onnxruntime")
IMPORT_FAILURES = (ImportError, OSError, RuntimeError)  # torchaudio's, by cause: missing,
# a shared library that does not load, a torch it was not built for


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def broken_install_report(error: BaseException) -> str:
    """What ``speechxfer info`` can still say when the toolkit cannot be imported."""
    lines = [f"speechxfer cannot start: {type(error).__name__}: {error}",
             f"python       {platform.python_version()}  ({sys.executable}; {platform.platform()})"]
    lines += [f"{name:<13}{package_version(name) or 'not installed'}" for name in PACKAGES]
    lines.append("torch and torchaudio must come from the same release (README, 'torch and "
                 "torchaudio'): pip install -c .ci/constraints.txt -e .")
    return "\n".join(lines)
