"""CommandClassifier: encoder + one head per task, saved as safetensors + JSON, and predict."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .audio import AudioError, batch_waves, load, to_mono_resampled
from .encoders import Encoder, EncoderOutput, build_encoder
from .heads import MAX_CLASSES, HeadConfig, build_head, check_real
from .store import atomic_folder
from .vocab import is_command

FORMAT = "speechxfer-model"
FORMAT_VERSION = 1
PRIMARY_TASK = "command"
KINDS = ("neural", "zero-shot", "generative", "combined")  # and "classic-<kind>"
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is labels and metrics: kilobytes, not gigabytes
MAX_TASKS = 64
HEAD_OPTIONS = {f.name for f in fields(HeadConfig)} - {"num_classes", "hidden_size", "num_states"}


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

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
            "tasks": self.tasks,
            "embeddings": self.embeddings,
        }


def read_config(directory: str | Path, kind: str | None = None) -> dict:
    """Read and check a model folder's config.json (and, if given, that it holds ``kind``).

    Every loader reads its config here: a missing, torn, oversized or non-object config is a
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
    except OSError as err:
        raise ModelError(f"{path}: unreadable ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:  # torn JSON, bad UTF-8, absurd nesting
        raise ModelError(f"{path}: invalid JSON ({str(err)[:200]})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a speechxfer model config (a JSON "
                         f"{type(config).__name__}, not an object)")
    if config.get("format") != FORMAT or not isinstance(config.get("kind"), str):
        raise ModelError(f"{path}: not a speechxfer model config (format/kind missing)")
    if kind is not None and config["kind"] != kind:
        raise ModelError(f"{directory}: a {config['kind']!r:.60} model, not {kind}")
    return config


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


def to_wave(item: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None, target: int):
    """A file path or raw samples (with their rate) as a mono tensor at ``target`` Hz."""
    if isinstance(item, (str, Path)):
        return load(item, target)
    if sample_rate is None:
        raise AudioError("<samples>", "raw samples need their sample_rate")
    return to_mono_resampled(item, sample_rate, target)


class Recognizer:
    """What eval, predict and the recipes need of any system, neural or classic.

    ``threshold`` (set by the training job, saved in config.json) makes ``predict`` an
    open-set decision (``openset.decide``): a clip whose best command is less probable is
    returned as ``_unknown_`` or ``_silence_``. ``predict_proba`` never rejects.
    """

    labels: list[str]
    sample_rate: int
    threshold: float | None = None  # None: the most probable label wins
    max_false_accept: float | None = None  # the target the threshold was calibrated for

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        raise NotImplementedError

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
        has no column for, the rejected command's) and every label's probability."""
        out = []
        for row, label in zip(probs, self.decide(probs)):
            dist = {lab: float(p) for lab, p in zip(self.labels, row)}
            if label not in dist:
                label_p = max(p for lab, p in dist.items() if is_command(lab))
            else:
                label_p = dist[label]
            out.append(Prediction(label, label_p, dist))
        return out

    def predict(
        self, item: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None = None
    ) -> Prediction:
        """Label one clip: a file path, or raw samples with their ``sample_rate``."""
        return self.predict_batch([item], sample_rate)[0]

    def predict_batch(
        self, items: list, sample_rate: int | None = None
    ) -> list[Prediction]:
        waves = [to_wave(x, sample_rate, self.sample_rate) for x in items]
        return self.predictions(self.predict_proba(waves))


class CommandClassifier(nn.Module, Recognizer):
    """A pretrained (or scratch) encoder with a head per task.

    ``head_options`` maps a task to HeadConfig fields (kind, layer, pooling, ...) that override
    the shared ``layer``/``pooling``/``dropout`` for that task's head; the default is ``single``.
    """

    def __init__(
        self,
        encoder: Encoder,
        tasks: dict[str, list[str]],
        layer: int | None = None,
        pooling: str = "mean",
        dropout: float = 0.1,
        head_options: dict[str, dict] | None = None,
    ):
        super().__init__()
        if not isinstance(tasks, dict) or PRIMARY_TASK not in tasks:
            raise ValueError(f"tasks must map task names to labels and include {PRIMARY_TASK!r}, "
                             f"got {tasks!r:.60}")
        if len(tasks) > MAX_TASKS:
            raise ValueError(f"tasks: {len(tasks)} tasks, more than {MAX_TASKS}")
        options = {} if head_options is None else head_options
        if not isinstance(options, dict) or set(options) - set(tasks):
            raise ValueError(f"heads must map tasks to head options, got {options!r:.60}")
        for t, opts in options.items():
            unknown = set(opts) - HEAD_OPTIONS if isinstance(opts, dict) else None
            if unknown or unknown is None:
                raise ValueError(f"heads[{t!r}]: unknown head option(s) {sorted(unknown or [])} "
                                 f"in {opts!r:.60}; choose from {sorted(HEAD_OPTIONS)}")
        self.encoder = encoder
        self.tasks = {t: check_labels(labels, f"task {t!r}", 2 if t == PRIMARY_TASK else 1)
                      for t, labels in tasks.items()}
        shared = {"layer": layer, "pooling": pooling, "dropout": dropout}
        self.heads = nn.ModuleDict(
            {
                t: build_head(
                    HeadConfig(len(labels), encoder.hidden_size, encoder.num_layers + 1,
                               **(shared | options.get(t, {})))
                )
                for t, labels in self.tasks.items()
            }
        )
        if self.heads[PRIMARY_TASK].config.kind != "single":
            raise ValueError(f"the {PRIMARY_TASK!r} task needs a 'single' head")
        self.sample_rate = encoder.sample_rate
        self.info: dict = {}  # strategy, metrics, data: travels in config.json

    @property
    def labels(self) -> list[str]:
        return self.tasks[PRIMARY_TASK]

    def heads_forward(self, out: EncoderOutput) -> dict[str, torch.Tensor]:
        return {t: head(out.hidden_states, out.mask) for t, head in self.heads.items()}

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads_forward(self.encoder(waves, lengths))

    @property
    def kinds(self) -> dict[str, str]:
        return {t: head.config.kind for t, head in self.heads.items()}

    @torch.no_grad()
    def predict_all(self, waves: list[torch.Tensor], batch_size: int = 16,
                    embeddings: bool = False) -> dict[str, np.ndarray]:
        """Every task's probabilities for every clip, batched by similar length.

        Multi-label tasks give a sigmoid per class; embedding tasks give the softmax over their
        class prototypes, or with ``embeddings=True`` the L2-normalised vectors themselves.
        """
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
        raw = {t for t, kind in self.kinds.items() if embeddings and kind == "embedding"}
        probs = {t: np.zeros((len(waves), head.config.embedding_dim if t in raw
                              else head.config.num_classes), np.float32)
                 for t, head in self.heads.items()}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch, lengths = batch_waves([waves[i] for i in idx])
            outputs = self(batch.to(device), lengths.to(device))
            for t, out in outputs.items():
                values = out.float() if t in raw else self.heads[t].probabilities(out)
                probs[t][idx] = values.cpu().numpy()
        return probs

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        return self.predict_all(waves)[PRIMARY_TASK]

    def predict_batch(self, items: list, sample_rate: int | None = None) -> list[Prediction]:
        waves = [to_wave(x, sample_rate, self.sample_rate) for x in items]
        all_probs = self.predict_all(waves, embeddings=True)
        vectors = {t: v for t, v in all_probs.items() if self.kinds[t] == "embedding"}
        with torch.no_grad():
            for t, v in vectors.items():
                all_probs[t] = self.heads[t].probabilities(torch.from_numpy(v)).numpy()
        preds = self.predictions(all_probs[PRIMARY_TASK])
        for i, pred in enumerate(preds):
            pred.tasks = {
                t: {lab: float(p) for lab, p in zip(self.tasks[t], all_probs[t][i])}
                for t in self.tasks
            }
            pred.embeddings = {t: [float(x) for x in v[i]] for t, v in vectors.items()}
        return preds

    def config(self) -> dict:
        head = next(iter(self.heads.values())).config
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": "neural",
            "encoder": {"name": self.encoder.name, "window": self.encoder.window},
            "sample_rate": self.sample_rate,
            "labels": self.labels,
            "tasks": self.tasks,
            "head": {"layer": head.layer, "pooling": head.pooling, "dropout": head.dropout},
            "heads": {t: h.config.options() for t, h in self.heads.items()},
            **self.rejection_config(),
            **self.info,
        }

    def save(self, directory: str | Path) -> Path:
        """Write model.safetensors + config.json (tensors only, nothing pickled), swapped in
        together so weights and config never come from different saves."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_folder(directory, is_model_folder) as folder:
            save_file(state, str(folder / "model.safetensors"))
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
        return directory

    @classmethod
    def from_config(cls, config: dict, pretrained: bool = False) -> CommandClassifier:
        """The model a config describes; a ValueError names the first field that is wrong."""
        enc, head = config.get("encoder"), config.get("head", {})
        if not (isinstance(enc, dict) and isinstance(enc.get("name"), str)
                and isinstance(enc.get("window"), str)):
            raise TypeError(f"encoder must be {{'name': str, 'window': str}}, got {enc!r:.60}")
        if not isinstance(head, dict) or set(head) - {"layer", "pooling", "dropout"}:
            raise ValueError(f"head must hold only layer, pooling and dropout, got {head!r:.60}")
        tasks, heads = config.get("tasks"), config.get("heads", {})
        if not isinstance(heads, dict):
            raise TypeError(f"heads must map tasks to head options, got {heads!r:.60}")
        if "labels" in config and (not isinstance(tasks, dict)
                                   or config["labels"] != tasks.get(PRIMARY_TASK)):
            raise ValueError(f"labels {config['labels']!r:.60} differ from the tasks' "
                             f"{PRIMARY_TASK!r} labels")
        encoder = build_encoder(enc["name"], window=enc["window"], pretrained=pretrained)
        model = cls(encoder, tasks, head.get("layer"), head.get("pooling", "mean"),
                    head.get("dropout", 0.1), heads)
        if config.get("sample_rate", model.sample_rate) != model.sample_rate:
            raise ValueError(f"sample_rate {config['sample_rate']!r:.20} is not the encoder's "
                             f"{model.sample_rate}")
        model.info = {k: config[k] for k in ("strategy", "metrics", "data") if k in config}
        return model

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Recognizer:
        """Rebuild from config.json, then check the weights fit it exactly.

        A folder holding another kind of system (zero-shot, generative, classic...) is opened by
        ``load_model`` instead, so an app can load whatever `speechxfer train` produced.
        """
        directory = Path(directory)
        config = read_config(directory)
        if config["kind"] != "neural":
            return load_model(directory)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{directory}: model.safetensors is missing")
        try:
            model = cls.from_config(config)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{directory}: config does not describe a model ({err})") from None
        model.load_rejection(config, directory)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(read_weights(weights, "pt", shapes))
        return model.to(device).eval()


def load_model(directory: str | Path) -> Recognizer:
    """Load any saved system (neural or classic) by the kind its config names."""
    config = read_config(Path(directory))
    if config["kind"] not in KINDS and not config["kind"].startswith("classic-"):
        raise ModelError(f"{directory}: unknown model kind {config['kind']!r:.60}")
    if config["kind"] == "neural":
        return CommandClassifier.load(directory)
    if config["kind"] in ("zero-shot", "generative", "combined"):
        from .zeroshot import CombinedRecognizer, GenerativeRecognizer, ZeroShotRecognizer

        kinds = {"zero-shot": ZeroShotRecognizer, "generative": GenerativeRecognizer,
                 "combined": CombinedRecognizer}
        return kinds[config["kind"]].load(directory)
    from .classic import load_classic

    return load_classic(directory)
