"""speechxfer: speech-command recognition by transfer learning from ASR models."""

__all__ = ["CommandClassifier", "ModelError", "Prediction", "Recognizer", "load_model"]
__version__ = "0.1.0"

_HOMES = {"CommandClassifier": "model", "ModelError": "recognizer", "Prediction": "recognizer",
          "Recognizer": "recognizer", "load_model": "recognizer"}


def __getattr__(name: str):
    # Lazy: `import speechxfer.audio` should not pay for building the model stack.
    if name in _HOMES:
        from importlib import import_module

        module = import_module(f"{__name__}.{_HOMES[name]}")
        return getattr(module, "load" if name == "load_model" else name)
    raise AttributeError(f"module 'speechxfer' has no attribute {name!r}")
