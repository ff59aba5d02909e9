"""wav2vec 2.0 / HuBERT encoders on ``torchaudio.models``, loaded from local checkpoint folders.

Two folder layouts are read (weights as safetensors; nothing is ever unpickled):

- Hugging Face: ``config.json`` (``Wav2Vec2Config``/``HubertConfig`` keys), ``model.safetensors``
  with HF parameter names (a ``pytorch_model.bin`` is accepted too, read with
  ``torch.load(weights_only=True)``, which refuses arbitrary objects), and optionally
  ``preprocessor_config.json`` whose ``do_normalize`` says whether the model expects each clip
  normalised (HF's ``Wav2Vec2FeatureExtractor`` default, True, applies when it is absent).
- torchaudio bundle: ``torchaudio_config.json`` holding the ``wav2vec2_model`` keyword arguments
  (what ``torchaudio.pipelines.WAV2VEC2_BASE._params`` holds, plus an optional
  ``"normalize_waveform"``: the bundle's ``_normalize_waveform``) and ``model.safetensors`` with
  torchaudio parameter names.

HuBERT and wav2vec2 share one architecture (they differ in pre-training only), so both build the
same ``Wav2Vec2Model``. Pre-training and task heads (quantizer, ``lm_head``, ``aux``, ...) are
dropped; so is ``masked_spec_embed`` (SpecAugment's learned mask vector, training only).

Layer-norm placement: ``wav2vec2_model(encoder_layer_norm_first=...)`` hands the *negated* flag
to its ``Transformer``, whose own ``layer_norm_first`` therefore means "normalise before the
layers" (post-LN "base" models: hidden state 0 is normalised) and, when False, "normalise after
the last layer" (pre-LN "large"/stable models: the final norm is a top parameter). This module
reads the transformer's own flag, so both variants follow torchaudio (and fairseq/HF) exactly.

Padding invariance: the waveform is zeroed past each clip and normalised over its real samples;
the first conv layer's GroupNorm ("base" models) takes its statistics over the clip's own frames
only (torchaudio and HF average over padding too); padded frames are zeroed before the
positional conv and hidden from attention. A clip alone and the same clip in a padded batch
therefore give the same hidden states on its real frames, equal to torchaudio's for the clip
alone. Not reproduced: LayerDrop and SpecAugment time masking (both training-time only).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torchaudio.models import Wav2Vec2Model, wav2vec2_model
from torchaudio.models.wav2vec2.components import SelfAttention

from speechxfer.audio import SAMPLE_RATE  # the rate every wav2vec2/HuBERT checkpoint was trained at
from speechxfer.encoders.base import Encoder, EncoderOutput
from speechxfer.log import LOGGER

HF_NORM_EPS = 1e-7  # variance floor of HF's zero_mean_unit_var_norm
TORCHAUDIO_NORM_EPS = 1e-5  # the bundles normalise with F.layer_norm's default eps
MODEL_TYPES = ("wav2vec2", "hubert")
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
TORCHAUDIO_CONFIG = "torchaudio_config.json"
SAFETENSORS = "model.safetensors"
PICKLE_WEIGHTS = "pytorch_model.bin"
# HF config keys that fix the architecture: a config without them is not trusted to defaults
HF_REQUIRED = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "conv_dim", "conv_kernel", "conv_stride", "feat_extract_norm", "do_stable_layer_norm",
    "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
)
# Variants torchaudio's Wav2Vec2Model cannot express: (key, the only supported value, HF default)
HF_FIXED = (
    ("hidden_act", "gelu", "gelu"),
    ("feat_extract_activation", "gelu", "gelu"),
    ("layer_norm_eps", 1e-5, 1e-5),
    ("feat_proj_layer_norm", True, True),
    ("conv_pos_batch_norm", False, False),
    ("add_adapter", False, False),
)
# wav2vec2_model argument -> the HF config.json key it is read from (for errors)
HF_NAMES = {
    "extractor_conv_bias": "conv_bias", "encoder_embed_dim": "hidden_size",
    "encoder_projection_dropout": "feat_proj_dropout",
    "encoder_pos_conv_kernel": "num_conv_pos_embeddings",
    "encoder_pos_conv_groups": "num_conv_pos_embedding_groups",
    "encoder_num_layers": "num_hidden_layers", "encoder_num_heads": "num_attention_heads",
    "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_features": "intermediate_size",
    "encoder_ff_interm_dropout": "activation_dropout", "encoder_dropout": "hidden_dropout",
    "encoder_layer_norm_first": "do_stable_layer_norm", "encoder_layer_drop": "layerdrop",
}
HF_BACKBONE_PREFIXES = ("wav2vec2.", "hubert.")  # task models (ForCTC, ...) nest the backbone
HF_TRAINING_ONLY = ("masked_spec_embed",)
# HF module path -> torchaudio module path (first match wins)
HF_RENAMES = (
    ("feature_extractor.", "feature_extractor."),
    ("feature_projection.", "encoder.feature_projection."),
    ("encoder.", "encoder.transformer."),
)
# old-style weight_norm names (HF checkpoints, torchaudio's published bundles) -> parametrizations
WEIGHT_NORM_RENAMES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}
MAX_LISTED = 8  # keys named in an error before "... and N more"
# what a saved classifier records about its encoder beyond the weights (Wav2Vec2Encoder.recorded)
RECORDED = ("normalize", "norm_eps", "params")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the folder and the problem."""


@dataclass(frozen=True)
class Wav2Vec2Config:
    """What a checkpoint folder says about the architecture and its expected input."""

    params: dict[str, Any]  # keyword arguments of torchaudio's ``wav2vec2_model``
    model_type: str  # "wav2vec2" or "hubert"
    normalize: bool  # normalise each clip's waveform to zero mean, unit variance
    norm_eps: float  # variance floor of that normalisation, as the source implementation uses
    source: str  # "huggingface", "torchaudio" or "recorded" (by a saved classifier)

    @property
    def hidden_size(self) -> int:
        return int(self.params["encoder_embed_dim"])

    @property
    def num_layers(self) -> int:
        return int(self.params["encoder_num_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.params["encoder_num_heads"])


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _hf_config(folder: Path) -> Wav2Vec2Config:
    """Mirror torchaudio's ``import_huggingface._get_config`` on the raw config.json keys."""
    cfg = _read_json(folder / HF_CONFIG)
    missing = [k for k in HF_REQUIRED if k not in cfg]
    if missing:
        raise CheckpointError(f"{folder / HF_CONFIG}: missing keys {_listed(missing)}")
    if cfg["model_type"] not in MODEL_TYPES:
        raise CheckpointError(
            f"{folder / HF_CONFIG}: model_type {cfg['model_type']!r} is not supported "
            f"(only {', '.join(MODEL_TYPES)})"
        )
    for key, supported, default in HF_FIXED:
        if cfg.get(key, default) != supported:
            raise CheckpointError(
                f"{folder / HF_CONFIG}: {key}={cfg[key]!r} is not supported (needs {supported!r})"
            )
    if cfg["feat_extract_norm"] not in ("group", "layer"):
        raise CheckpointError(
            f"{folder / HF_CONFIG}: feat_extract_norm must be 'group' or 'layer', "
            f"got {cfg['feat_extract_norm']!r}"
        )
    convs = (cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"])
    if len({len(c) for c in convs}) != 1:
        raise CheckpointError(
            f"{folder / HF_CONFIG}: conv_dim, conv_kernel and conv_stride differ in length"
        )
    params = {
        "extractor_mode": f"{cfg['feat_extract_norm']}_norm",
        "extractor_conv_layer_config": [tuple(c) for c in zip(*convs, strict=True)],
        "extractor_conv_bias": cfg.get("conv_bias", False),
        "encoder_embed_dim": cfg["hidden_size"],
        "encoder_projection_dropout": cfg.get("feat_proj_dropout", 0.0),
        "encoder_pos_conv_kernel": cfg["num_conv_pos_embeddings"],
        "encoder_pos_conv_groups": cfg["num_conv_pos_embedding_groups"],
        "encoder_num_layers": cfg["num_hidden_layers"],
        "encoder_num_heads": cfg["num_attention_heads"],
        "encoder_attention_dropout": cfg.get("attention_dropout", 0.1),
        "encoder_ff_interm_features": cfg["intermediate_size"],
        "encoder_ff_interm_dropout": cfg.get("activation_dropout", 0.1),
        "encoder_dropout": cfg.get("hidden_dropout", 0.1),
        "encoder_layer_norm_first": cfg["do_stable_layer_norm"],
        "encoder_layer_drop": cfg.get("layerdrop", 0.1),
        "aux_num_out": None,
    }
    normalize = True  # Wav2Vec2FeatureExtractor's default
    if (folder / HF_PREPROCESSOR).is_file():
        pre = _read_json(folder / HF_PREPROCESSOR)
        if pre.get("sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise CheckpointError(
                f"{folder / HF_PREPROCESSOR}: sampling_rate {pre['sampling_rate']} is not "
                f"{SAMPLE_RATE}"
            )
        normalize = pre.get("do_normalize", True)
        if not isinstance(normalize, bool):  # bool("false") would silently normalise
            raise CheckpointError(f"{folder / HF_PREPROCESSOR}: do_normalize must be true or "
                                  f"false, got {normalize!r:.40}")
    params = _checked_params(params, str(folder / HF_CONFIG), HF_NAMES)
    return Wav2Vec2Config(params, cfg["model_type"], normalize, HF_NORM_EPS, "huggingface")


def _checked_params(params: dict[str, Any], where: str,
                    names: dict[str, str] | None = None) -> dict[str, Any]:
    """``params`` if they are exactly ``wav2vec2_model``'s keyword arguments, each of its type
    (conv layers as tuples, as torchaudio holds them); a CheckpointError prefixed with
    ``where`` if not, naming an argument as ``names`` maps it (the file's own key)."""
    expected = set(inspect.signature(wav2vec2_model).parameters)
    unknown, missing = sorted(set(params) - expected), sorted(expected - set(params))
    if unknown or missing:
        raise CheckpointError(
            f"{where}: not wav2vec2_model keyword arguments "
            f"(unknown: {_listed(unknown) or 'none'}; missing: {_listed(missing) or 'none'})"
        )
    # torchaudio takes any value: "false" for a bool flag builds the model as true, unsaid
    kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    for name, parameter in inspect.signature(wav2vec2_model).parameters.items():
        kind, value = parameter.annotation, params[name]
        if kind in kinds and not (
                isinstance(value, kind) if kind in (bool, str) else
                isinstance(value, int | float if kind is float else int)
                and not isinstance(value, bool) and math.isfinite(value)):
            raise CheckpointError(f"{where}: {(names or {}).get(name, name)} must be "
                                  f"{kinds[kind]}, got {value!r:.40}")
    conv = params["extractor_conv_layer_config"]
    if isinstance(conv, list):
        params["extractor_conv_layer_config"] = [
            tuple(c) if isinstance(c, list) else c for c in conv]
    return params


def _torchaudio_config(folder: Path) -> Wav2Vec2Config:
    params = _read_json(folder / TORCHAUDIO_CONFIG)
    normalize = params.pop("normalize_waveform", False)
    if not isinstance(normalize, bool):
        raise CheckpointError(f"{folder / TORCHAUDIO_CONFIG}: normalize_waveform must be true "
                              f"or false, got {normalize!r:.40}")
    params["aux_num_out"] = None  # the CTC head is not part of the encoder
    params = _checked_params(params, str(folder / TORCHAUDIO_CONFIG))
    return Wav2Vec2Config(params, "wav2vec2", normalize, TORCHAUDIO_NORM_EPS, "torchaudio")


def read_config(folder: str | Path) -> Wav2Vec2Config:
    """The architecture a checkpoint folder describes, from its JSON alone (no weights read).

    A folder with ``torchaudio_config.json`` is a torchaudio bundle; otherwise ``config.json``
    makes it a Hugging Face checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if (folder / TORCHAUDIO_CONFIG).is_file():
        return _torchaudio_config(folder)
    if (folder / HF_CONFIG).is_file():
        return _hf_config(folder)
    raise CheckpointError(
        f"{folder}: not a wav2vec2/HuBERT checkpoint: expected {HF_CONFIG} (Hugging Face) "
        f"or {TORCHAUDIO_CONFIG} (torchaudio bundle)"
    )


def recorded_config(record: dict[str, Any]) -> Wav2Vec2Config:
    """The config a saved classifier recorded (``Wav2Vec2Encoder.recorded``), checked.

    A TypeError or ValueError names the first bad entry; the caller names the file.
    """
    unknown = sorted(set(record) - set(RECORDED))
    if unknown:
        raise ValueError(f"encoder records unknown setting(s) {_listed(unknown)} "
                         f"(known: {', '.join(RECORDED)})")
    missing = [k for k in RECORDED if k not in record]
    if missing:  # a hand-edited record: half from it and half from the folder would be a guess
        present = ", ".join(k for k in RECORDED if k in record)
        raise ValueError(f"encoder records {present} but not {', '.join(missing)}")
    normalize, eps, params = (record[k] for k in RECORDED)
    if not isinstance(normalize, bool):  # bool("false") would silently normalise
        raise TypeError(f"encoder normalize must be true or false, got {normalize!r:.40}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"encoder norm_eps must be a positive number, got {eps!r:.40}")
    if not isinstance(params, dict):
        raise TypeError(f"encoder params must map wav2vec2_model arguments to values, "
                        f"got {params!r:.40}")
    params = _checked_params(dict(params), "encoder params")
    return Wav2Vec2Config(params, "wav2vec2", normalize, float(eps), "recorded")


def _warn_if_changed(folder: Path, recorded: Wav2Vec2Config, name: str) -> None:
    """Log which file of a still-present checkpoint folder now says otherwise than a saved
    model recorded: the recorded values are used (the model was trained with them)."""
    if not folder.is_dir():
        return  # moved or deleted: nothing of it is needed
    try:
        now = read_config(folder)
    except CheckpointError as err:
        LOGGER.warning("%s: %s; using the settings the model recorded", name, err)
        return
    settings_file, arch_file = ((TORCHAUDIO_CONFIG, TORCHAUDIO_CONFIG)
                                if now.source == "torchaudio" else (HF_PREPROCESSOR, HF_CONFIG))
    settings = ("normalize", "norm_eps")
    was = {k: getattr(recorded, k) for k in settings} | recorded.params
    is_now = {k: getattr(now, k) for k in settings} | now.params
    diffs: dict[str, list[str]] = {}
    for key, value in was.items():
        if is_now.get(key) != value:
            file = settings_file if key in settings else arch_file
            diffs.setdefault(file, []).append(f"{key}={is_now.get(key)!r} (trained with {value!r})")
    for file, found in diffs.items():
        LOGGER.warning("%s: %s now says %s; using the settings the model recorded", name,
                       folder / file, ", ".join(found))


def _read_weights(folder: Path, allow_pickle_file: bool) -> dict[str, torch.Tensor]:
    """The tensors by name; a file that is unreadable or holds anything else is a
    CheckpointError naming it (not the reader's own error, which names no file)."""
    path = folder / SAFETENSORS
    try:
        if path.is_file():
            state = load_file(str(path))
        elif allow_pickle_file and (folder / PICKLE_WEIGHTS).is_file():
            path = folder / PICKLE_WEIGHTS
            # weights_only: tensors and plain containers, never arbitrary pickled objects
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            expected = f"{SAFETENSORS} or {PICKLE_WEIGHTS}" if allow_pickle_file else SAFETENSORS
            raise CheckpointError(f"{folder}: no weights ({expected})")
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 (unpickling and safetensors raise many kinds)
        why = (f"torch.load(weights_only=True) refuses it: {type(err).__name__}"
               if path.name == PICKLE_WEIGHTS else str(err).strip()[:200] or type(err).__name__)
        raise CheckpointError(f"{path}: unreadable weights ({why})") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a mapping of parameter names to tensors")
    return state


def _weight_norm_name(key: str) -> str:
    for old, new in WEIGHT_NORM_RENAMES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def huggingface_to_torchaudio(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF parameter names -> torchaudio ``Wav2Vec2Model`` names, and the keys that map nowhere.

    Mirrors ``torchaudio.models.wav2vec2.utils.import_huggingface`` (which needs a live
    ``transformers`` model): the backbone's submodules are named alike, except that HF's
    ``feature_projection`` and ``encoder`` sit under torchaudio's ``encoder`` and
    ``encoder.transformer``. Keys outside a task model's backbone (heads) are dropped.
    """
    prefix = next((p for p in HF_BACKBONE_PREFIXES if any(k.startswith(p) for k in state)), "")
    mapped, unknown = {}, []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue  # lm_head, quantizer, project_q, classifier, ...: not the encoder
        key = key[len(prefix) :]
        if key in HF_TRAINING_ONLY:
            continue
        new = next((to + key[len(src) :] for src, to in HF_RENAMES if key.startswith(src)), None)
        if new is None:
            unknown.append(prefix + key)
        else:
            mapped[_weight_norm_name(new)] = value
    return mapped, unknown


def _load_checked(
    model: Wav2Vec2Model, state: dict[str, torch.Tensor], unknown: list[str], folder: Path
) -> None:
    """Load strictly, naming the folder and every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    unexpected = unknown + sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    shapes = [
        f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    # half or bfloat16 weights are widened, as HF loads them; integers or booleans in a float
    # parameter would be cast silently into another model
    dtypes = [f"{k} {v.dtype}" for k, v in state.items()
              if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    non_finite = [k for k, v in state.items()
                  if k in own and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    problems = [
        f"{label}: {_listed(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes),
                            ("not floating point", dtypes), ("NaN or infinite values", non_finite))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{folder}: weights do not fit the config; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def normalise_waves(waves: torch.Tensor, real: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero mean, unit variance per clip over its real samples (``real`` [B, T] bool); padding
    stays 0. This is what the checkpoints saw in training: one clip at a time, unpadded."""
    m = real.to(waves.dtype)
    n = m.sum(1, keepdim=True)
    mean = (waves * m).sum(1, keepdim=True) / n
    var = ((waves - mean) * m).pow(2).sum(1, keepdim=True) / n
    return (waves - mean) / (var + eps).sqrt() * m


def _masked_instance_norm(x: torch.Tensor, mask: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``GroupNorm(C, C)`` with statistics over real frames only (``mask`` [B, frames])."""
    m = mask[:, None, :].to(x.dtype)
    n = m.sum(-1, keepdim=True)
    mean = (x * m).sum(-1, keepdim=True) / n
    var = ((x - mean) * m).pow(2).sum(-1, keepdim=True) / n
    return (x - mean) / (var + norm.eps).sqrt() * norm.weight[:, None] + norm.bias[:, None]


class Wav2Vec2Encoder(Encoder):
    """A torchaudio ``Wav2Vec2Model`` behind the ``Encoder`` interface (see module docstring).

    ``hidden_states[0]`` is the transformer input (projected features + positional conv, then
    the layer norm in post-LN models); ``hidden_states[i]`` the output of layer ``i``, the last
    with the final layer norm in pre-LN models.
    """

    sample_rate = SAMPLE_RATE
    window = "clip"

    def __init__(
        self, model: Wav2Vec2Model, name: str = "wav2vec2", normalize: bool = False,
        norm_eps: float = HF_NORM_EPS, params: dict[str, Any] | None = None,
    ):
        super().__init__()
        layers = model.encoder.transformer.layers
        if not all(isinstance(layer.attention, SelfAttention) for layer in layers):
            raise ValueError("only wav2vec2/HuBERT attention is supported (not WavLM's)")
        self.model, self.name = model, name
        self.normalize, self.norm_eps = normalize, norm_eps
        self.params = params  # the wav2vec2_model arguments ``model`` was built with, if known
        self.hidden_size = model.encoder.feature_projection.projection.out_features
        self.num_layers = len(layers)
        receptive = 1
        for layer in reversed(model.feature_extractor.conv_layers):
            receptive = (receptive - 1) * layer.stride + layer.kernel_size
        self.min_samples = receptive  # shortest clip that yields one frame

    @classmethod
    def from_config(cls, config: Wav2Vec2Config, name: str) -> Wav2Vec2Encoder:
        """The architecture with PyTorch's default initialisation, as torchaudio builds it."""
        return cls(wav2vec2_model(**config.params), name, config.normalize, config.norm_eps,
                   config.params)

    def recorded(self) -> dict[str, Any]:
        """Input normalisation and architecture, which the checkpoint folder's JSON decides and
        may change after training (see base); empty for a model built without its params."""
        if self.params is None:
            return {}
        return {"normalize": self.normalize, "norm_eps": self.norm_eps, "params": self.params}

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.transformer.layers

    @property
    def _final_norm(self) -> bool:
        # torchaudio's Transformer flag is the negation of the model's (see module docstring)
        return not self.model.encoder.transformer.layer_norm_first

    def reset_block(self, index: int) -> None:
        """PyTorch's default init for every Linear/LayerNorm of the block, as a fresh model."""
        for module in self.blocks[index].modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def _conv_features(
        self, waves: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv stack -> [B, frames, C] and each clip's frame count (torchaudio's formula).

        ConvLayerBlock's maths, except that the GroupNorm takes statistics over real frames.
        """
        x = waves.unsqueeze(1)
        for layer in self.model.feature_extractor.conv_layers:
            x = layer.conv(x)
            lengths = torch.div(lengths - layer.kernel_size, layer.stride, rounding_mode="floor") + 1
            if isinstance(layer.layer_norm, nn.GroupNorm):
                real = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
                x = _masked_instance_norm(x, real, layer.layer_norm)
            elif layer.layer_norm is not None:
                x = layer.layer_norm(x)
            x = F.gelu(x)
        return x.transpose(1, 2), lengths

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
        lengths = lengths.to(waves.device)
        if int(lengths.min()) < self.min_samples:
            raise ValueError(
                f"a clip of {int(lengths.min())} samples gives no frame: {self.name} needs at "
                f"least {self.min_samples} samples"
            )
        real = torch.arange(waves.shape[1], device=waves.device) < lengths[:, None]
        waves = normalise_waves(waves, real, self.norm_eps) if self.normalize else waves * real
        feats, frames = self._conv_features(waves, lengths)
        mask = torch.arange(feats.shape[1], device=waves.device) < frames[:, None]
        # zeroed as torchaudio's Encoder._preprocess does, so the positional conv sees the same
        # zeros past a clip's end whether it is alone or padded in a batch
        x = self.model.encoder.feature_projection(feats) * mask[..., None]
        # torchaudio's own step (private, so pinned by the parity tests): positional conv, the
        # layer norm in post-LN models, dropout
        first = self.model.encoder.transformer._preprocess(x)
        return EncoderOutput(hidden_states=[first, *self.run_blocks(first, mask, 0)], mask=mask)

    def run_blocks(self, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Hidden states ``start + 1 .. num_layers`` from hidden state ``start`` (see base)."""
        batch, frames = mask.shape
        # padded keys are hidden; a batch without padding takes SDPA's unmasked fast path
        attn = None if bool(mask.all()) else mask[:, None, None, :].expand(batch, 1, frames, frames)
        out, x = [], hidden
        for layer in list(self.blocks)[start:]:
            x, _ = layer(x, attn)
            out.append(x)
        if out and self._final_norm:  # start == num_layers: the input already is the final state
            out[-1] = self.model.encoder.transformer.layer_norm(x)
        return out

    def top_parameters(self) -> list[nn.Parameter]:
        if self._final_norm:
            return list(self.model.encoder.transformer.layer_norm.parameters())
        return []


def load_wav2vec2(
    folder: str | Path, pretrained: bool = True, name: str | None = None,
    config: Wav2Vec2Config | None = None,
) -> Wav2Vec2Encoder:
    """A wav2vec2/HuBERT encoder from a Hugging Face or torchaudio-bundle checkpoint folder.

    ``pretrained=False`` reads the config only and returns the same architecture randomly
    initialised. ``name`` defaults to ``"<model_type>:<absolute folder>"``, which
    ``build_encoder`` accepts, so a saved classifier can rebuild its encoder. ``config`` (what
    a saved classifier recorded, ``recorded_config``) replaces the folder's JSON, which may
    have changed since training: the folder is then read for pretrained weights only, and a
    warning names any of its files that now says otherwise.
    """
    folder = Path(folder).resolve()
    if config is None:
        config = read_config(folder)
        where = folder / (TORCHAUDIO_CONFIG if config.source == "torchaudio" else HF_CONFIG)
    else:
        _warn_if_changed(folder, config, name or str(folder))
        where = "encoder params"
    try:
        encoder = Wav2Vec2Encoder.from_config(config, name or f"{config.model_type}:{folder}")
    except (TypeError, ValueError, RuntimeError) as err:  # torchaudio's own, naming no file
        raise CheckpointError(f"{where}: describes no buildable model "
                              f"({str(err).strip().splitlines()[0][:200]})") from None
    if pretrained:  # the weights' names follow the folder's layout, as read_config tells it
        if not (folder / TORCHAUDIO_CONFIG).is_file():
            state, unknown = huggingface_to_torchaudio(_read_weights(folder, True))
        else:
            raw = _read_weights(folder, False)
            state = {_weight_norm_name(k): v for k, v in raw.items() if not k.startswith("aux.")}
            unknown = []
        _load_checked(encoder.model, state, unknown, folder)
    return encoder
