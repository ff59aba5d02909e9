"""ONNX export of a neural or combined system, and the ONNX Runtime recogniser that runs it.

An exported folder is self-contained: ``model.onnx`` (waveform [B, T] + length [B] in,
probabilities [B, labels] out) beside a config.json of kind ``onnx`` holding the labels, the
rejection threshold, the window and what the graph was exported from. ``load_model`` opens it
like any saved system, so predict, predict_batch, eval and the stream detector run unchanged,
without torch doing any of the compute.

Why a graph of our own rather than ``torch.onnx.export(model)``: Whisper's log-mel front end
takes a complex STFT, which ONNX cannot carry; here it is the same STFT as a strided convolution
with a cos/sin basis (real tensors only). The graph derives every frame count from the padded
input length, and the runtime pads each batch the way the encoder's window asks
(``padded_length``), so one graph serves any batch and clip length. For the combined system the
decoder prior over the fixed candidate layout (encoder states -> label scores) is part of the
same graph: the candidate tokens and their attention mask are constants.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio import SAMPLE_RATE, batches_by_length
from .decoder.combined import FAST_FOLDER, CombinedRecognizer, source_fingerprint
from .decoder.scoring import ZeroShotRecognizer
from .encoders.registry import weights_identity
from .encoders.whisper import (
    DYNAMIC_RANGE,
    HOP_SAMPLES,
    LOG_FLOOR,
    N_FFT,
    SAMPLES_PER_FRAME,
    WhisperEncoder,
    encoder_frames,
    mel_frames,
    window_seconds,
)
from .log import LOGGER
from .model import PRIMARY_TASK, CommandClassifier
from .recognizer import (
    ModelError,
    Recognizer,
    check_kind,
    check_labels,
    info_from,
    is_model_folder,
    read_config,
)
from .store import atomic_folder, check_replaceable
from .vocab import SILENCE, UNKNOWN

KIND = "onnx"
GRAPH = "model.onnx"
OPSET = 17
MAX_GRAPH_BYTES = 2**31  # ONNX's protobuf limit; a bigger file is no graph of ours
BATCH_SIZE = 16  # clips per runtime call of an fp32 graph, grouped by similar length (int8: 1)
FAST_CHECK_CLIPS = 100  # training-speaker clips for the fast path's shortlist, as many for parity
FAST_MIN_AGREEMENT = 0.995  # label agreement with torch below which no fast path is written
# the graph's own record (ONNX metadata) of what its config.json must say: a graph copied from
# another export, or a config edited after it, would otherwise answer under the wrong labels
GRAPH_META = "speechxfer"
GRAPH_META_KEYS = ("labels", "sample_rate", "window", "int8", "graph_id")


class ExportError(ValueError):
    """A system this exporter cannot turn into a graph; the message says why."""


def padded_length(window: str, longest: int) -> int:
    """Samples a batch whose longest clip has ``longest`` is zero-padded to before the graph:
    whole encoder frames, and at least the fixed window (e.g. 2 s) when there is one."""
    frames = -(-longest // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    seconds = window_seconds(window)
    return frames if seconds is None else max(frames, int(seconds * SAMPLE_RATE))


class _WhisperStates(nn.Module):
    """A WhisperEncoder's forward in ONNX-exportable operations (same weights, same maths).

    Input: waves [B, T] with T = ``padded_length(window, longest)``, lengths [B]. Output: every
    layer's hidden states and the frame mask, as ``WhisperEncoder.forward`` gives them.
    """

    def __init__(self, encoder: WhisperEncoder):
        super().__init__()
        self.encoder = encoder
        self.clip = window_seconds(encoder.window) is None
        n = torch.arange(N_FFT, dtype=torch.float64)
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * n / N_FFT
        window = torch.hann_window(N_FFT, dtype=torch.float64)
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # [2 * bins, n_fft]
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor):
        enc = self.encoder
        n_out = waves.shape[1] // SAMPLES_PER_FRAME
        waves = waves * (torch.arange(waves.shape[1]) < lengths[:, None]).to(waves.dtype)
        if self.clip:  # as WhisperEncoder.features: 2 n_out + 1 mel frames from zero padding
            waves = F.pad(waves, (0, N_FFT // 2))
        x = F.pad(waves[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")
        spec = F.conv1d(x, self.basis, stride=HOP_SAMPLES)[..., :-1]  # centred STFT frames
        bins = N_FFT // 2 + 1
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
        log_spec = torch.clamp(enc.log_mel.filters @ power, min=LOG_FLOOR).log10()
        if self.clip:  # only frames whose window touches the clip set the max-8 floor
            touched = mel_frames(lengths)
            counted = torch.arange(log_spec.shape[-1])[None, :] < touched[:, None]
            log_spec_max = log_spec.masked_fill(~counted[:, None, :], -1e30)
        else:
            log_spec_max = log_spec
        peak = log_spec_max.amax(dim=(1, 2))
        log_spec = torch.maximum(log_spec, (peak - DYNAMIC_RANGE)[:, None, None])
        mel = (log_spec + 4.0) / 4.0
        h = F.gelu(enc.conv1(mel))
        h = F.gelu(enc.conv2(h)).transpose(1, 2)
        if self.clip:
            h = h[:, :-1]
        h = h + enc.positional_embedding[:n_out]
        frames = encoder_frames(lengths)
        mask = torch.arange(n_out)[None, :] < frames[:, None]
        key_mask = mask[:, None, None, :] if self.clip else None
        states = [h]
        for block in enc.blocks:
            h = block(h, mask=key_mask)
            states.append(h)
        states[-1] = enc.ln_post(h)
        return states, mask


class _HeadGraph(nn.Module):
    """waves, lengths -> the neural classifier's command probabilities."""

    def __init__(self, model: CommandClassifier):
        super().__init__()
        self.states = _WhisperStates(model.encoder)
        self.head = model.heads[PRIMARY_TASK]

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states, mask = self.states(waves, lengths)
        return torch.softmax(self.head(states, mask).float(), -1)


class _CombinedGraph(nn.Module):
    """waves, lengths -> p ∝ p_head · p_zero^weight, the decoder prior included.

    One encoder pass serves head and prior when the head sat on the untouched encoder (a frozen
    head, the default); otherwise the prior's own encoder runs too. ``shortlist`` (token ids,
    ``ZeroShotRecognizer.shortlist``) restricts the prior's softmax normaliser to those tokens.
    """

    def __init__(self, system: CombinedRecognizer, shortlist: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("shortlist", shortlist, persistent=False)
        self.head = _HeadGraph(system.head)
        self.zero: ZeroShotRecognizer = system.zero
        self.prior_states = None if system.shares_encoder() else _WhisperStates(
            system.zero.model.encoder)
        self.decoder = system.zero.model.decoder  # registers its weights with the graph
        self.register_buffer("order", torch.tensor(system.order), persistent=False)
        self.weight = system.weight
        options = system.zero.options
        self.temperature, self.combine = options.temperature, options.combine
        # labels_from_candidates as constants: a label's spellings by an additive mask (no
        # boolean indexing, which ONNX turns into data-dependent NonZero ops)
        labels = system.zero.labels
        owner = system.zero._cand_label.cpu()[None, :] == torch.arange(len(labels))[:, None]
        self.register_buffer("spelling_mask", torch.where(owner, 0.0, -1e30), persistent=False)
        fixed = torch.tensor([lab == UNKNOWN for lab in labels])
        offset = torch.tensor([options.silence_offset if lab == SILENCE else 0.0
                               for lab in labels])
        self.register_buffer("fixed", fixed, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        self.unknown_score = options.unknown_score

    def label_scores(self, cand: torch.Tensor) -> torch.Tensor:
        """``ZeroShotRecognizer.labels_from_candidates`` on [B, candidates] -> [B, labels]."""
        spelled = cand[:, None, :] + self.spelling_mask
        scores = spelled.amax(-1) if self.combine == "max" else spelled.logsumexp(-1)
        # _unknown_: the level, or its best spelling where higher (none: a -1e30 mask row)
        scores = torch.where(self.fixed, scores.clamp(min=self.unknown_score), scores)
        return scores + self.offset

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states, mask = self.head.states(waves, lengths)
        head = torch.softmax(self.head.head(states, mask).float(), -1)
        if self.prior_states is not None:
            states, mask = self.prior_states(waves, lengths)
        ctx_mask = mask if self.zero.window == "clip" else None
        scores = self.label_scores(
            self.zero.candidate_scores(states[-1], ctx_mask, self.shortlist).float())
        prior = torch.softmax(scores / self.temperature, -1)[:, self.order]
        logits = (torch.log(head.clamp(min=1e-12))
                  + self.weight * torch.log(prior.clamp(min=1e-12)))
        return torch.softmax(logits, -1)


def _graph_of(system: Recognizer, shortlist: torch.Tensor | None = None) -> tuple[nn.Module, str]:
    """The exportable module for ``system`` and the window its input is padded for."""
    if shortlist is not None and not isinstance(system, CombinedRecognizer):
        raise ExportError("a normaliser shortlist applies to the combined system's prior only")
    if isinstance(system, CombinedRecognizer):
        head_enc, zero_enc = system.head.encoder, system.zero.model.encoder
        if not isinstance(head_enc, WhisperEncoder):
            raise ExportError(f"the combined system's head sits on {head_enc.name}, not Whisper")
        if head_enc.window != system.zero.window:
            raise ExportError(f"head window {head_enc.window!r} differs from the prior's "
                              f"{system.zero.window!r}: one graph input cannot serve both")
        if zero_enc.window != system.zero.window:  # the zero-shot system sets it when built
            raise ExportError("the prior's encoder window is inconsistent")
        return _CombinedGraph(system, shortlist).eval(), head_enc.window
    if isinstance(system, CommandClassifier):
        if not isinstance(system.encoder, WhisperEncoder):
            raise ExportError(f"ONNX export covers Whisper encoders; {system.encoder.name!r} "
                              "has a front end without an exportable form here")
        return _HeadGraph(system).eval(), system.encoder.window
    raise ExportError(f"ONNX export covers the neural and combined kinds, not "
                      f"{system.model_kind!r}")


def _move(system: Recognizer, device: torch.device) -> None:
    if isinstance(system, CombinedRecognizer):
        system.head.to(device)
        system.zero.to(device)
    else:
        system.to(device)


def export_graph(system: Recognizer, path: Path, int8: bool = False,
                 shortlist: torch.Tensor | None = None) -> str:
    """Write ``system``'s ONNX graph to ``path`` (dynamically int8-quantised with ``int8``;
    ``shortlist``: see ``_CombinedGraph``); returns the window its inputs are padded for. A
    system on a GPU is traced on the CPU and moved back."""
    graph, window = _graph_of(system, None if shortlist is None else shortlist.cpu())
    device = next(graph.parameters()).device
    if device.type != "cpu":
        _move(system, torch.device("cpu"))
    n = padded_length(window, SAMPLE_RATE)
    wave = torch.zeros(2, n)
    wave[:, : n // 2] = 0.1 * torch.randn(2, n // 2, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([n, n // 2])
    fp32 = path.with_name(path.stem + ".fp32.onnx") if int8 else path
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes
            torch.onnx.export(graph, (wave, lengths), str(fp32), input_names=["waves", "lengths"],
                              output_names=["probabilities"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"waves": {0: "batch", 1: "samples"},
                                            "lengths": {0: "batch"},
                                            "probabilities": {0: "batch"}})
    finally:
        if device.type != "cpu":
            _move(system, device)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # matrix products only: the STFT is a convolution of the raw waveform, and 8 bits
        # per tensor cannot hold a quiet clip beside a loud one (ConvInteger flips labels)
        # it logs advice to run its pre-processing pass through ``logging.warning`` at every
        # call (that pass only helps speed here; the parity check measures what quantisation
        # costs), which would also give the root logger a handler that prints our own log lines
        # a second time: a handler of ours on root for the call keeps it from doing either
        root, quiet = logging.getLogger(), logging.NullHandler()
        level = root.level
        root.addHandler(quiet)
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
            root.removeHandler(quiet)
        fp32.unlink()
    return window


def graph_id(path: Path) -> str:
    """The digest of a graph file as exported, before its stamp: the same model exports to the
    same id (same command, same folder), another model's graph to another."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:32]


def stamp_graph(path: Path, config: dict) -> None:
    """Write ``config``'s GRAPH_META_KEYS into the graph's metadata (checked by ``check_stamp``)."""
    import onnx

    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = GRAPH_META, json.dumps({k: config[k] for k in GRAPH_META_KEYS})
    onnx.save(graph, str(path))


def check_stamp(graph: Path, stamp: str | None, config: dict) -> None:
    """A ModelError unless the graph's stamp agrees with ``config`` (a graph exported before
    stamps existed has none and is taken on trust, unless ``config`` was written with one)."""
    if stamp is None:
        if "graph_id" in config:  # an older export's graph put beside a newer config
            raise ModelError(f"{graph}: carries no export record, but config.json beside it "
                             "names one (a graph of another export?); export the model again")
        return
    try:
        stamped = json.loads(stamp)
    except ValueError:
        stamped = None
    differ = [k for k in GRAPH_META_KEYS
              if not isinstance(stamped, dict) or stamped.get(k) != config.get(k)]
    if differ:
        raise ModelError(f"{graph}: exported with another {', '.join(differ)} than config.json "
                         "beside it says (a graph or config of another export?); export the "
                         "model again")


class OnnxRecognizer(Recognizer):
    """A system exported by ``export``, run by ONNX Runtime (threads: torch's thread count, so
    ``torch.set_num_threads`` governs both paths alike)."""

    model_kind = KIND

    def __init__(self, graph: Path, labels: list[str], window: str, sample_rate: int = SAMPLE_RATE,
                 device: str | torch.device = "cpu", int8: bool = False):
        import onnxruntime as ort

        self.labels, self.window, self.sample_rate = list(labels), window, sample_rate
        # dynamic int8 scales a matrix product's input by the whole batch tensor, so a clip
        # batched with others would get another answer than alone (as predict and the stream
        # detector score it): an int8 graph runs one clip per call
        self.batch_size = 1 if int8 else BATCH_SIZE
        self.info: dict = {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:  # the answers are the same, only slower: said, not refused
                LOGGER.warning("%s: device %s asked, but ONNX Runtime here has no CUDA provider "
                               "(pip install onnxruntime-gpu); running on the CPU", graph, device)
        self.session = ort.InferenceSession(str(graph), options, providers=providers)

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        out = np.zeros((len(waves), len(self.labels)), np.float32)
        for idx in batches_by_length(waves, self.batch_size):
            n = padded_length(self.window, max(waves[i].numel() for i in idx))
            batch = np.zeros((len(idx), n), np.float32)
            for j, i in enumerate(idx):
                batch[j, : waves[i].numel()] = waves[i].detach().cpu().numpy()
            lengths = np.array([waves[i].numel() for i in idx], np.int64)
            out[idx] = self.session.run(None, {"waves": batch, "lengths": lengths})[0]
        return out

    def save(self, directory: str | Path) -> Path:
        raise ModelError(f"{directory}: an exported ONNX system is saved by export, not re-saved")

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu") -> OnnxRecognizer:
        check_kind(directory, config, KIND)
        graph = directory / GRAPH
        try:
            labels = check_labels(config.get("labels"))
            window = config.get("window")
            window_seconds(window if isinstance(window, str) else repr(window))
            if config.get("sample_rate") != SAMPLE_RATE:
                raise ValueError(f"sample_rate must be {SAMPLE_RATE}, got "
                                 f"{config.get('sample_rate')!r:.20}")
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        if not graph.is_file():
            raise ModelError(f"{directory}: {GRAPH} is missing")
        if graph.stat().st_size > MAX_GRAPH_BYTES:
            raise ModelError(f"{graph}: larger than {MAX_GRAPH_BYTES} bytes; not a graph of ours")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ModelError(f"{directory}: an exported ONNX model needs ONNX Runtime: pip "
                             "install onnx onnxruntime") from None
        try:
            system = cls(graph, labels, window, device=device, int8=config.get("int8") is True)
        except Exception as err:  # noqa: BLE001 (onnxruntime's errors derive from Exception only)
            raise ModelError(f"{graph}: ONNX Runtime cannot open it ({str(err)[:200]})") from None
        shape = system.session.get_outputs()[0].shape
        names = [i.name for i in system.session.get_inputs()]
        if names != ["waves", "lengths"] or shape[-1] != len(labels):
            raise ModelError(f"{graph}: inputs {names} / output {shape} do not fit "
                             f"{len(labels)} labels")
        check_stamp(graph, system.session.get_modelmeta().custom_metadata_map.get(GRAPH_META),
                    config)
        system.load_rejection(config, directory)
        system.info = info_from(config)
        return system


@dataclass
class Parity:
    """How the exported graph agrees with the torch system on the same clips."""

    n: int
    label_agreement: float
    max_probability_difference: float
    torch_ms_per_clip: float
    onnx_ms_per_clip: float

    def line(self) -> str:
        return (f"parity on {self.n} clips: label agreement {self.label_agreement:.4f}, max "
                f"probability difference {self.max_probability_difference:.2e}; "
                f"{self.torch_ms_per_clip:.1f} ms/clip torch, "
                f"{self.onnx_ms_per_clip:.1f} ms/clip ONNX Runtime")


def parity(system: Recognizer, exported: Recognizer, waves: list[torch.Tensor]) -> Parity:
    """Label agreement and largest probability difference of ``exported`` against ``system``.
    The labels are those predict gives, after ``system``'s rejection where it has a threshold:
    an int8 graph can take a clip across it and keep its most probable label."""
    start = time.perf_counter()
    ref = system.predict_proba(waves)
    mid = time.perf_counter()
    got = exported.predict_proba(waves)
    end = time.perf_counter()
    agree = np.mean([a == b for a, b in zip(system.decide(ref), system.decide(got))])
    return Parity(len(waves), float(agree),
                  float(np.abs(ref - got).max()), 1000 * (mid - start) / len(waves),
                  1000 * (end - mid) / len(waves))


def export(system: Recognizer, out: str | Path, int8: bool = False,
           check_waves: list[torch.Tensor] | None = None,
           shortlist: torch.Tensor | None = None,
           min_agreement: float | None = None,
           fingerprint: str | None = None,
           digest: str | None = None, part: bool = False,
           weights: dict | None = None) -> tuple[Path, Parity | None]:
    """Export ``system`` to the folder ``out`` (model.onnx + config.json), written whole or not
    at all; with ``check_waves`` the parity against the torch system is measured on them before
    the folder is swapped in, and stored in its config; below ``min_agreement`` label
    agreement it is an ExportError and ``out`` is left as it was. ``fingerprint``: the source
    folder's ``source_fingerprint``, stored for a fast path to be found stale by. ``digest``:
    the source folder's ``ensemble.system_digest``, stored so that an ensemble can tell the
    export from the model it was made from (the two together would count one system twice).
    ``part``: ``out`` is a part of the saved system it lies in (its fast path); any other folder
    inside a saved system is refused, as it would change that system. ``weights``: the
    ``registry.weights_identity`` of the installed Whisper weights the system loaded and no
    source file holds, stored for a fast path to be found stale by too."""
    out = Path(out)
    with atomic_folder(out, is_model_folder, part) as folder:
        window = export_graph(system, folder / GRAPH, int8, shortlist)
        source = {"kind": system.model_kind}
        encoder = system.head.encoder if isinstance(system, CombinedRecognizer) else system.encoder
        source["encoder"] = encoder.name
        if fingerprint is not None:
            source["fingerprint"] = fingerprint
        if digest is not None:
            source["digest"] = digest
        if weights is not None:
            source["weights"] = weights
        config = {**OnnxRecognizer.config_header(), "labels": list(system.labels),
                  "sample_rate": system.sample_rate, "window": window, "int8": int8, "opset": OPSET,
                  "graph_id": graph_id(folder / GRAPH),
                  "normaliser_tokens": None if shortlist is None else shortlist.tolist(),
                  "source": source,
                  **system.rejection_config(), **getattr(system, "info", {})}
        stamp_graph(folder / GRAPH, config)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        result = None
        if check_waves:
            exported = OnnxRecognizer.from_folder(folder, config)
            result = parity(system, exported, check_waves)
            config["parity"] = {k: v for k, v in vars(result).items() if not k.endswith("ms_per_clip")}
            (folder / "config.json").write_text(json.dumps(config, indent=2))
            if min_agreement is not None and result.label_agreement < min_agreement:
                raise ExportError(f"{out}: label agreement {result.label_agreement:.4f} with the "
                                  f"torch system is under {min_agreement}; not written")
    return out, result


def check_clips(data: str | Path, limit: int, seed: int = 0,
                leave_out: frozenset[str] = frozenset()) -> list[torch.Tensor]:
    """Up to ``limit`` clips of a dataset (any layout), drawn by ``seed``, for the parity check;
    none of the speakers in ``leave_out``."""
    from .data import load_dataset
    from .jobs import read_clips

    clips = [c for c in load_dataset(data).clips if c.speaker not in leave_out]
    rng = np.random.default_rng(seed)
    chosen = [clips[i] for i in sorted(rng.permutation(len(clips))[:limit])]
    return read_clips(chosen, SAMPLE_RATE, "parity check")[0]


def export_folder(model_dir: str | Path, out: str | Path, int8: bool = False,
                  data: str | Path | None = None, limit: int = 100) -> tuple[Path, Parity | None]:
    """Export the system saved in ``model_dir`` to ``out``; the parity check runs on ``limit``
    clips of ``data`` (default: the dataset the model was trained on, when it is still there)."""
    from .ensemble import system_digest
    from .recognizer import load

    # realpath, not resolve: a link loop above ``out`` is the save's clear error, not a traceback
    source, target = Path(os.path.realpath(model_dir)), Path(os.path.realpath(out))
    if source.is_relative_to(target) or target.is_relative_to(source):  # inside: head/ replaced
        raise ExportError(f"{out}: is, holds or lies inside the model folder {model_dir}, which "
                          "the export would replace or change; export to another folder "
                          "(--fast writes MODEL/fast)")
    check_replaceable(out, is_model_folder)  # before the model loads and the clips are read
    system = load(model_dir, "cpu")
    try:
        _graph_of(system)  # before any parity clip is read; the error names the model
    except ExportError as err:
        raise ExportError(f"{model_dir}: {err}") from None
    if isinstance(system, CombinedRecognizer):
        system.fast = None  # the parity reference is torch, not the int8 graph in fast/
    if data is None:
        trained_on = getattr(system, "info", {}).get("data", {}).get("data")
        data = trained_on if trained_on and Path(trained_on).exists() else None
    waves = check_clips(data, limit) if data is not None else None
    return export(system, out, int8, waves, digest=system_digest(Path(model_dir)))


def fast_path_available() -> bool:
    """ONNX (to export) and ONNX Runtime (to check and run) are both installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def write_fast_path(model_dir: str | Path, data: str | Path | None = None,
                    limit: int = FAST_CHECK_CLIPS) -> Parity:
    """Write the fast path of the combined system saved in ``model_dir``: its int8 graph, the
    prior's normaliser over a token shortlist, in ``model_dir/fast`` (``load_model`` runs it
    on the CPU; see ``decoder.combined``).

    Both choices are checked on clips of the training speakers (``data``: default the training
    data): the shortlist is drawn from ``limit`` of them and the parity against the torch
    system measured on ``limit`` others; under ``FAST_MIN_AGREEMENT`` label agreement it is an
    ExportError and nothing is written.
    """
    from .recognizer import load

    model_dir = Path(model_dir)
    system = load(model_dir, "cpu")
    if not isinstance(system, CombinedRecognizer) or type(system.zero) is not ZeroShotRecognizer:
        raise ExportError(f"{model_dir}: a fast path is written for the combined system with a "
                          f"zero-shot prior, not {system.model_kind!r}")
    system.fast = None  # the reference is the torch system, even when a fast path exists
    info = system.info.get("data", {})
    data = data or info.get("data")
    if not data or not Path(data).exists():
        raise ExportError(f"{model_dir}: its training data {data!r} is not here to check a fast "
                          "path on")
    waves = check_clips(data, 2 * limit, leave_out=frozenset(info.get("test_speakers") or ()))
    if len(waves) < 2:
        raise ExportError(f"{data}: too few clips of the training speakers to check a fast path")
    half = len(waves) // 2
    rng = np.random.default_rng(0)
    order = rng.permutation(len(waves))
    shortlist = system.zero.shortlist([waves[i] for i in order[:half]])
    return export(system, model_dir / FAST_FOLDER, int8=True,
                  check_waves=[waves[i] for i in order[half:]], shortlist=shortlist,
                  min_agreement=FAST_MIN_AGREEMENT,
                  fingerprint=source_fingerprint(model_dir, read_config(model_dir)), part=True,
                  weights=weights_identity(system.zero.encoder_name))[1]
