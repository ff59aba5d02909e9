"""speechxfer: speech-command recognition by transfer learning from ASR models."""

__all__ = ["CommandClassifier", "Prediction", "load_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import speechxfer.audio` should not pay for building the model stack.
    if name in __all__:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'speechxfer' has no attribute {name!r}")
