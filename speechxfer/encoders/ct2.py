"""Read CTranslate2 ``model.bin`` files into float32 tensors, and cache them as safetensors.

Why our own reader: the only pretrained Whisper weights available offline ship in
CTranslate2 format, and the ``ctranslate2`` wheel can run them but not hand tensors back.
The layout mirrors ``ctranslate2/specs/model_spec.py`` ``ModelSpec._serialize`` (binary
version 6), all little-endian::

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables x (str name | u8 ndim | ndim x u32 dim | u8 dtype_id | u32 nbytes | bytes)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is ``u16 length-including-NUL | utf-8 bytes | NUL``. Scalars (flags such as
``pre_norm``, ``num_heads``) are 0-d variables. The bundled Whisper files store float16
weights; int8/int16 quantised weights (with a ``*_scale`` companion) are dequantised too.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

SUPPORTED_BINARY_VERSIONS = (5, 6)  # 6 is what ctranslate2 4.x writes
# Order of ctranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 has no numpy dtype.
DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
COPY_CHUNK_BYTES = 16 * 1024 * 1024  # streaming buffer when joining split model files
CACHE_FORMAT = "1"  # bump when the converted layout changes, so old caches are rebuilt


def cache_root() -> Path:
    """Where converted weights live: ``$SPEECHXFER_CACHE`` or ``~/.cache/speechxfer``."""
    root = os.environ.get("SPEECHXFER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "speechxfer"


class _Reader:
    def __init__(self, data: bytes | memoryview):
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("H")
        text = bytes(self.data[self.pos : self.pos + n - 1]).decode("utf-8")
        self.pos += n
        return text

    def raw(self, n: int) -> memoryview:
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view


def _decode(raw: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":  # top 16 bits of a float32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Return the spec name and every variable of a ``model.bin``, aliases resolved.

    Floating variables come back as float32; quantised weights are dequantised
    (CTranslate2 stores ``q = round(w * scale)``, so ``w = q / scale``) and their scales dropped.
    Integer scalars (flags, head counts) keep their integer dtype.
    """
    data = Path(path).read_bytes()
    r = _Reader(data)
    version = r.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported")
    spec_name = r.string()
    r.unpack("I")  # spec revision: the variable names already say everything we need
    raw: dict[str, np.ndarray] = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        shape = tuple(r.unpack("I") for _ in range(r.unpack("B")))
        dtype = DTYPES[r.unpack("B")]
        raw[name] = _decode(r.raw(r.unpack("I")), dtype, shape)
    aliases = {}
    for _ in range(r.unpack("I")):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(data):
        raise ValueError(f"{path}: {len(data) - r.pos} trailing bytes; not a CTranslate2 model?")

    variables: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue
        scale = raw.get(name + "_scale")
        if scale is not None and value.dtype in (np.int8, np.int16):
            scale = scale.astype(np.float32)
            value = value.astype(np.float32) / (scale[:, None] if scale.ndim else scale)
        elif value.dtype.kind == "f":
            value = value.astype(np.float32)
        variables[name] = value
    for alias, target in aliases.items():
        variables[alias] = variables[target]
    return spec_name, variables


def join_parts(parts: Iterable[Path], extra_files: Iterable[Path], dest_dir: Path) -> Path:
    """Rebuild a model directory whose ``model.bin`` was split across packages.

    The parts are concatenated in order by streaming (no full copy in memory) into
    ``dest_dir/model.bin``, written under a temporary name and renamed so an interrupted join
    never leaves a truncated file behind. Small files (config, tokenizer) are copied next to it.
    Nothing is redone when the joined file already has the parts' total size.
    """
    parts = [Path(p) for p in parts]
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "model.bin"
    total = sum(p.stat().st_size for p in parts)
    if not (target.is_file() and target.stat().st_size == total):
        tmp = target.with_suffix(".bin.partial")
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, COPY_CHUNK_BYTES)
        tmp.replace(target)
    for extra in extra_files:
        copy = dest_dir / extra.name
        if not (copy.is_file() and copy.stat().st_size == extra.stat().st_size):
            shutil.copyfile(extra, copy)
    return dest_dir


def cached_state_dict(
    model_bin: str | Path,
    cache_name: str,
    convert: Callable[[dict[str, np.ndarray]], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Load converted weights from the safetensors cache, converting ``model_bin`` on a miss.

    The cache records the source path and byte size (and our format version); any mismatch,
    e.g. a reinstalled package with other weights, triggers a rebuild.
    """
    model_bin = Path(model_bin).resolve()
    meta = {"source": str(model_bin), "size": str(model_bin.stat().st_size), "format": CACHE_FORMAT}
    path = cache_root() / f"{cache_name}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == meta:
                    return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (OSError, ValueError, RuntimeError):
            pass  # unreadable cache: rebuild below
    _, variables = read_ct2(model_bin)
    state = {k: v.contiguous() for k, v in convert(variables).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return state


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _linear(out: dict, prefix: str, variables: dict, name: str, bias: bool = True) -> None:
    out[f"{prefix}.weight"] = _t(variables[f"{name}/weight"])
    if bias:
        out[f"{prefix}.bias"] = _t(variables[f"{name}/bias"])


def _layer_norm(out: dict, prefix: str, variables: dict, name: str) -> None:
    out[f"{prefix}.weight"] = _t(variables[f"{name}/gamma"])
    out[f"{prefix}.bias"] = _t(variables[f"{name}/beta"])


def _split(out: dict, prefixes: list[str], variables: dict, name: str) -> None:
    """Split a fused projection (q|k|v or k|v) into separate Linear layers.

    The key projection's bias is dropped: CTranslate2 stores zeros there and Whisper has none
    (a per-query constant added to every key score would cancel in the softmax anyway).
    """
    weights = np.split(variables[f"{name}/weight"], len(prefixes))
    biases = np.split(variables[f"{name}/bias"], len(prefixes))
    for prefix, w, b in zip(prefixes, weights, biases, strict=True):
        out[f"{prefix}.weight"] = _t(w)
        if not prefix.endswith(".key"):
            out[f"{prefix}.bias"] = _t(b)


def num_layers(variables: dict[str, np.ndarray], side: str) -> int:
    """Number of transformer layers under ``side`` ("encoder" or "decoder")."""
    prefix, suffix = f"{side}/layer_", "/ffn/linear_0/weight"
    return sum(1 for k in variables if k.startswith(prefix) and k.endswith(suffix))


def whisper_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map a CTranslate2 ``WhisperSpec`` to :class:`speechxfer.encoders.whisper.Whisper` keys."""
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, f"encoder.{conv}", variables, f"encoder/{conv}")
    out["encoder.positional_embedding"] = _t(variables["encoder/position_encodings/encodings"])
    _layer_norm(out, "encoder.ln_post", variables, "encoder/layer_norm")
    for side in ("encoder", "decoder"):
        n = num_layers(variables, side)
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            att = f"{src}/self_attention"
            _layer_norm(out, f"{dst}.attn_ln", variables, f"{att}/layer_norm")
            names = [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"]
            _split(out, names, variables, f"{att}/linear_0")
            _linear(out, f"{dst}.attn.out", variables, f"{att}/linear_1")
            if side == "decoder":
                cross = f"{src}/attention"
                _layer_norm(out, f"{dst}.cross_attn_ln", variables, f"{cross}/layer_norm")
                _linear(out, f"{dst}.cross_attn.query", variables, f"{cross}/linear_0")
                names = [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"]
                _split(out, names, variables, f"{cross}/linear_1")
                _linear(out, f"{dst}.cross_attn.out", variables, f"{cross}/linear_2")
            _layer_norm(out, f"{dst}.mlp_ln", variables, f"{src}/ffn/layer_norm")
            _linear(out, f"{dst}.mlp.0", variables, f"{src}/ffn/linear_0")
            _linear(out, f"{dst}.mlp.2", variables, f"{src}/ffn/linear_1")
    if num_layers(variables, "decoder"):
        out["decoder.token_embedding.weight"] = _t(variables["decoder/embeddings/weight"])
        out["decoder.positional_embedding"] = _t(variables["decoder/position_encodings/encodings"])
        _layer_norm(out, "decoder.ln", variables, "decoder/layer_norm")
    return out
