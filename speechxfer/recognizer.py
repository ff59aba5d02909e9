"""The contract every system keeps, and ``load`` for any saved one.

Every system (a neural CommandClassifier, the decoder-based zero-shot, generative and combined
systems, the classic MFCC ones) is a ``Recognizer``: ``predict_proba`` on waves, ``predict`` on
files or samples, ``save`` to a folder of config.json (+ safetensors). ``load`` opens any such
folder through one table of kinds (``KINDS``: the config's "kind" -> the class that reads it),
the way torchaudio's bundles name their builders: this module imports none of them, so the
systems sit above it and import it, never the other way round.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .audio import AudioError, to_mono_resampled
from .audio import load as load_audio
from .heads import MAX_CLASSES, check_real
from .vocab import is_command

if TYPE_CHECKING:
    from .model import CommandClassifier

FORMAT = "speechxfer-model"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is labels and metrics: kilobytes, not gigabytes
INFO_KEYS = ("strategy", "metrics", "data")  # what a training job adds to any config.json

# config.json "kind" -> "module:class" whose ``from_folder(directory, config, device)`` opens it.
# Kind strings are stored in users' model folders: never rename one.
KINDS: dict[str, str] = {
    "neural": "speechxfer.model:CommandClassifier",
    "zero-shot": "speechxfer.decoder.scoring:ZeroShotRecognizer",
    "generative": "speechxfer.decoder.generative:GenerativeRecognizer",
    "combined": "speechxfer.decoder.combined:CombinedRecognizer",
    "ensemble": "speechxfer.ensemble:EnsembleRecognizer",
    "classic-gmm-hmm": "speechxfer.classic.hmm:HMMRecognizer",
    "classic-dtw": "speechxfer.classic.dtw:DTWRecognizer",
    "classic-svm": "speechxfer.classic.svm:SVMRecognizer",
    "onnx": "speechxfer.export:OnnxRecognizer",  # exported by speechxfer export
}


class ModelError(ValueError):
    """A model folder that cannot be used; the message names the folder and the problem."""


@dataclass
class Prediction:
    """The top label of the primary task, its probability, and every task's distribution."""

    label: str
    probability: float
    probabilities: dict[str, float]
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    embeddings: dict[str, list[float]] = field(default_factory=dict)  # embedding heads' vectors

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most probable labels (all of them when None or more than there are) with
        their probabilities, best first, ties in the model's label order: the runners-up a
        "did you mean" offers. This is the model's ranking; ``label`` is the open-set decision,
        so a rejected clip's ``label`` is ``_unknown_`` while ``top(1)`` names its best guess."""
        if isinstance(k, bool) or not (k is None or isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"top: k must be a whole number >= 1 (or None: all), got {k!r:.20}")
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]

    def top_dicts(self, k: int | None = None) -> list[dict[str, str | float]]:
        """``top(k)`` as the ``"top"`` list of ``predict --json --top K`` and ``POST
        /predict?top=K``: one shape for both, so the two answers cannot drift apart."""
        return [{"label": label, "probability": p} for label, p in self.top(k)]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
            "tasks": self.tasks,
            "embeddings": self.embeddings,
        }


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature`` (max-shifted, so large scores never overflow)."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def read_config(directory: str | Path, kind: str | None = None) -> dict:
    """Read and check a model folder's config.json (and, if given, that it holds ``kind``).

    The one reader of config.json: a missing, torn, oversized or non-object config is a
    ModelError naming the file, never a traceback.
    """
    directory = Path(directory)
    path = directory / "config.json"
    try:
        if not path.is_file():
            raise ModelError(f"{directory}: not a model folder (no config.json)")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a model config")
        config = json.loads(path.read_text(encoding="utf-8"))
    except ModelError:  # a ValueError too: not to be reported as invalid JSON below
        raise
    except OSError as err:
        raise ModelError(f"{path}: unreadable ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:  # torn JSON, bad UTF-8, absurd nesting
        raise ModelError(f"{path}: invalid JSON ({str(err)[:200]})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a speechxfer model config (a JSON "
                         f"{type(config).__name__}, not an object)")
    if config.get("format") != FORMAT or not isinstance(config.get("kind"), str):
        raise ModelError(f"{path}: not a speechxfer model config (format/kind missing)")
    version = config.get("version", FORMAT_VERSION)
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        # a newer layout may mean what this release would read otherwise: refuse, not guess
        raise ModelError(f"{path}: model format version {version!r:.20}; this speechxfer reads "
                         f"versions 1 to {FORMAT_VERSION} (saved by a newer release? upgrade)")
    if kind is not None:
        check_kind(directory, config, kind)
    return config


def check_kind(directory: Path, config: dict, kind: str) -> None:
    """A ModelError unless ``config`` (read by ``read_config``) holds a ``kind`` system."""
    if config.get("kind") != kind:
        raise ModelError(f"{directory}: a {config.get('kind')!r:.60} model, not {kind}")


def info_from(config: dict) -> dict:
    """What a training job stored beside the system (strategy, metrics, data)."""
    return {k: config[k] for k in INFO_KEYS if k in config}


def sub_folder(directory: Path, config: dict, key: str) -> Path:
    """The folder a config entry names: only the plain name of a folder inside ``directory``
    (an entry is data from a user file, so it must never lead outside the model folder)."""
    name = config.get(key)
    if (not isinstance(name, str) or name in ("", ".", "..")
            or any(c in name for c in "/\\\0") or len(name) > 255):
        raise ModelError(f"{directory}: {key!r} must name a sub-folder of the model folder, "
                         f"got {name!r:.60}")
    try:
        root, real = directory.resolve(), (directory / name).resolve()
        inside = real.is_dir() and real != root and real.is_relative_to(root)
    except (OSError, RuntimeError) as err:  # e.g. a symlink loop
        raise ModelError(f"{directory}: {key!r} names an unusable folder {name!r} ({err})") from None
    if not inside:
        raise ModelError(f"{directory}: {key!r} names {name!r}, which is not a folder inside "
                         "the model folder")
    return directory / name


def check_labels(labels: object, what: str = "labels", minimum: int = 2) -> list[str]:
    """``labels`` as a list of distinct strings, ``minimum`` to MAX_CLASSES of them; else a
    ValueError saying why (one label is no classifier; duplicates make two outputs one name)."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{what} must be a list of strings, got {labels!r:.60}")
    if len(labels) > MAX_CLASSES:
        raise ValueError(f"{what}: {len(labels)} labels, more than {MAX_CLASSES}")
    if len(labels) < minimum:
        raise ValueError(f"{what}: a classifier needs at least {minimum} labels, got {list(labels)}")
    duplicates = sorted(x for x, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise ValueError(f"{what}: duplicate labels {duplicates[:5]}")
    return list(labels)


def read_weights(path: Path, framework: str = "pt",
                 expected: dict[str, tuple[int, ...]] | None = None) -> dict:
    """The tensors of a safetensors file, checked: readable, every float finite and, with
    ``expected`` (name -> shape), exactly those names and shapes, checked from the header
    before any tensor is read. Else a ModelError naming the file."""
    if not path.is_file():
        raise ModelError(f"{path.parent}: {path.name} is missing")
    try:
        with safe_open(str(path), framework=framework) as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not iterable)
            fits = expected is None or shapes == {k: tuple(v) for k, v in expected.items()}
            tensors = {k: f.get_tensor(k) for k in shapes} if fits else {}
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise ModelError(f"{path}: unreadable weights ({str(err)[:200]})") from None
    if not fits:
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        wrong = sorted(k for k in expected if k in shapes and shapes[k] != tuple(expected[k]))
        raise ModelError(f"{path.parent}: config.json does not match {path.name} (missing "
                         f"{missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]})")
    bad = [k for k, v in tensors.items() if not _finite(v)]
    if bad:
        raise ModelError(f"{path}: non-finite (NaN or infinite) values in {bad[:3]}")
    return tensors


def _finite(tensor: torch.Tensor | np.ndarray) -> bool:
    if isinstance(tensor, torch.Tensor):
        return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())
    return tensor.dtype.kind not in "fc" or bool(np.isfinite(tensor).all())


def is_model_folder(directory: Path) -> bool:
    """True for a folder a save of ours wrote (its config.json names our format): the only
    kind of non-empty folder a new save may replace."""
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def auto(device: str | torch.device) -> str | torch.device:
    """``device`` with "auto" made a CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def to_wave(item: str | Path | np.ndarray | torch.Tensor | Mapping, sample_rate: int | None,
            target: int, source: str = "<samples>"):
    """A file path, raw samples (with their rate, named ``source`` in errors) or a mapping of
    both (``from_mapping``) as a mono tensor at ``target`` Hz."""
    if isinstance(item, (str, Path)):
        return load_audio(item, target)
    if isinstance(item, Mapping):
        item, sample_rate = from_mapping(item, sample_rate, source)
    if sample_rate is None:
        raise AudioError(source, "raw samples need their sample_rate")
    return to_mono_resampled(item, sample_rate, target, source)


def from_mapping(item: Mapping, sample_rate: int | None, source: str) -> tuple[object, object]:
    """The samples and rate of ``{"array" (or "raw"): samples, "sampling_rate": rate}``, the
    form Hugging Face ``datasets`` rows and ``pipeline`` calls hold audio in, so such a row is
    passed as it is. A ``sample_rate`` given beside it must agree: one of the two is wrong."""
    keys = [k for k in ("array", "raw") if k in item]
    if len(keys) != 1 or "sampling_rate" not in item:
        raise AudioError(source, "a mapping of audio needs 'array' (or 'raw') and "
                                 f"'sampling_rate'; got the keys {sorted(map(str, item))[:6]}")
    rate = item["sampling_rate"]
    if sample_rate is not None and sample_rate != rate:
        raise AudioError(source, f"sample_rate={sample_rate!r:.20} disagrees with the mapping's "
                                 f"sampling_rate {rate!r:.20}")
    return item[keys[0]], rate


def to_waves(items: list, sample_rate: int | None, target: int) -> list[torch.Tensor]:
    """``to_wave`` of every clip of a batch; raw samples are named by their place in it
    (``<samples #3>``), so an error says which one. One clip instead of a list (a path, or a
    1-D array whose samples would each be taken for a clip) is refused, saying so."""
    one = "one clip, not a list of them: predict_batch takes a list of clips; predict takes one"
    if isinstance(items, (str, Path)):
        raise AudioError(items, one)
    if isinstance(items, Mapping):  # a list of its keys would be taken for file names
        raise AudioError("<samples>", one)
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim < 2:
        raise AudioError("<samples>", one)
    items = list(items)  # rows of a 2-D array, or any iterable
    many = len(items) > 1
    return [to_wave(x, sample_rate, target, f"<samples #{i}>" if many else "<samples>")
            for i, x in enumerate(items)]


class Recognizer:
    """What eval, predict and the recipes need of any system, neural, decoder-based or classic.

    ``threshold`` (set by the training job, saved in config.json) makes ``predict`` an
    open-set decision (``openset.decide``): a clip whose best command is less probable is
    returned as ``_unknown_`` or ``_silence_``. ``predict_proba`` never rejects.

    A saved system reopens through ``load``: its class names its kind (``kind``, as in
    ``KINDS``) and reads its folder in ``from_folder(directory, config, device)``.
    """

    labels: list[str]
    sample_rate: int
    model_kind: ClassVar[str] = ""  # config.json's "kind" of a saved one (a key of KINDS)
    threshold: float | None = None  # None: the most probable label wins
    max_false_accept: float | None = None  # the target the threshold was calibrated for

    @classmethod
    def config_header(cls) -> dict:
        """What starts every config.json of this kind: the format ``read_config`` checks."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": cls.model_kind}

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Recognizer:
        """Reopen a folder this class saved, on ``device``; a folder of another kind is a
        ModelError naming it (``load`` below opens any kind)."""
        directory = Path(directory)
        config = read_config(directory)
        if config["kind"] != cls.model_kind:
            raise ModelError(f"{directory}: a {config['kind']!r:.60} system, not a "
                             f"{cls.__name__}; open it with speechxfer.load_model")
        return cls.from_folder(directory, config, auto(device))

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu") -> Recognizer:
        """The system of a folder whose config.json ``read_config`` has read."""
        raise NotImplementedError

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path | None:
        raise NotImplementedError

    def task_model(self) -> CommandClassifier | None:
        """The classifier whose extra task heads (speaker, ...) this system carries, if any."""
        return None

    def decide(self, probs: np.ndarray) -> list[str]:
        """The label of each row of ``probs``: after rejection when a threshold is set."""
        if self.threshold is None:
            return [self.labels[i] for i in np.asarray(probs).argmax(1)]
        from .openset import decide  # openset pulls in sklearn's metrics; predict rarely needs it

        return decide(self.labels, probs, self.threshold)

    def rejection_config(self) -> dict:
        """The open-set rule as config.json stores it (nothing without a threshold)."""
        if self.threshold is None:
            return {}
        return {"threshold": self.threshold, "max_false_accept": self.max_false_accept}

    def load_rejection(self, config: dict, directory: str | Path) -> None:
        """Take back what ``rejection_config`` stored; a bad value is a ModelError."""
        threshold, target = config.get("threshold"), config.get("max_false_accept")
        if threshold is None:
            return
        try:  # nextafter(1.0) is a valid threshold: it rejects everything
            check_real("threshold", threshold, 0.0, 1.0 + 1e-9)
            if target is not None:
                check_real("max_false_accept", target, 0.0, 1.0)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        if not any(is_command(lab) for lab in self.labels):
            raise ModelError(f"{directory}: a threshold needs a command among {self.labels}")
        self.threshold, self.max_false_accept = float(threshold), target

    def predictions(self, probs: np.ndarray) -> list[Prediction]:
        """A Prediction per row: the decided label, its probability (for a rejection the model
        has no column for, the rejected command's) and every label's probability, also as the
        command task's (every kind answers ``tasks["command"]``, a classifier's other heads
        beside it)."""
        out = []
        for row, label in zip(probs, self.decide(probs)):
            dist = {lab: float(p) for lab, p in zip(self.labels, row)}
            if label not in dist:
                label_p = max(p for lab, p in dist.items() if is_command(lab))
            else:
                label_p = dist[label]
            out.append(Prediction(label, label_p, dist, {"command": dict(dist)}))
        return out

    def predict(
        self, item: str | Path | np.ndarray | torch.Tensor | Mapping,
        sample_rate: int | None = None,
    ) -> Prediction:
        """Label one clip: a file path, raw samples with their ``sample_rate``, or a mapping
        ``{"array": samples, "sampling_rate": rate}`` (a Hugging Face ``datasets`` audio row)."""
        if isinstance(item, (list, tuple)) and any(
                isinstance(x, (str, Path, np.ndarray, torch.Tensor, Mapping)) for x in item):
            # equal-length clips would be averaged as the channels of one, with no error
            raise AudioError("<samples>", f"a list of {len(item)} clip(s), not one clip: "
                                          "predict_batch takes a list; predict takes one (a "
                                          "clip's channels: one array, [time, channels])")
        return self.predict_batch([item], sample_rate)[0]

    def predict_batch(
        self, items: list, sample_rate: int | None = None
    ) -> list[Prediction]:
        waves = to_waves(items, sample_rate, self.sample_rate)
        return self.predictions(self.predict_proba(waves))


class FolderLoader(Protocol):
    """What ``KINDS`` names: a class that opens its kind's folder from the read config."""

    def from_folder(self, directory: Path, config: dict, device: str | torch.device) -> Recognizer:
        ...


def loader_of(kind: str, directory: Path | str = "") -> FolderLoader:
    """The class that opens ``kind`` folders, imported by name from ``KINDS``."""
    if kind not in KINDS:
        where = f"{directory}: " if str(directory) else ""
        raise ModelError(f"{where}unknown model kind {kind!r:.60}; known: {', '.join(KINDS)}")
    module, _, attr = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)


def load(directory: str | Path, device: str | torch.device = "cpu") -> Recognizer:
    """Open any saved system by the kind its config.json names, on ``device`` ("auto": a
    CUDA GPU when there is one; systems that compute with NumPy, the classic ones, run on the
    CPU whatever the device)."""
    directory = Path(directory)
    config = read_config(directory)
    return loader_of(config["kind"], directory).from_folder(directory, config, auto(device))
