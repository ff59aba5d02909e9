"""CommandClassifier: encoder + one head per task, saved as safetensors + JSON, and predict."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .audio import AudioError, batch_waves, load, to_mono_resampled
from .encoders import Encoder, EncoderOutput, build_encoder
from .heads import HeadConfig, build_head

FORMAT = "speechxfer-model"
FORMAT_VERSION = 1
PRIMARY_TASK = "command"


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


def read_config(directory: Path, kind: str | None = None) -> dict:
    """Read and check a model folder's config.json (and, if given, that it holds ``kind``)."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise ModelError(f"{directory}: not a model folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: invalid JSON ({err})") from None
    if config.get("format") != FORMAT or "kind" not in config:
        raise ModelError(f"{path}: not a speechxfer model config (format/kind missing)")
    if kind is not None and config["kind"] != kind:
        raise ModelError(f"{directory}: a {config['kind']} model, not {kind}")
    return config


def to_wave(item: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None, target: int):
    """A file path or raw samples (with their rate) as a mono tensor at ``target`` Hz."""
    if isinstance(item, (str, Path)):
        return load(item, target)
    if sample_rate is None:
        raise AudioError("<samples>", "raw samples need their sample_rate")
    return to_mono_resampled(item, sample_rate, target)


class Recognizer:
    """What eval, predict and the recipes need of any system, neural or classic."""

    labels: list[str]
    sample_rate: int

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self, item: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None = None
    ) -> Prediction:
        """Label one clip: a file path, or raw samples with their ``sample_rate``."""
        return self.predict_batch([item], sample_rate)[0]

    def predict_batch(
        self, items: list, sample_rate: int | None = None
    ) -> list[Prediction]:
        waves = [to_wave(x, sample_rate, self.sample_rate) for x in items]
        probs = self.predict_proba(waves)
        out = []
        for row in probs:
            best = int(row.argmax())
            dist = {lab: float(p) for lab, p in zip(self.labels, row)}
            out.append(Prediction(self.labels[best], float(row[best]), dist))
        return out


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
        if PRIMARY_TASK not in tasks:
            raise ValueError(f"tasks must include {PRIMARY_TASK!r}, got {sorted(tasks)}")
        self.encoder = encoder
        self.tasks = {t: list(labels) for t, labels in tasks.items()}
        shared = {"layer": layer, "pooling": pooling, "dropout": dropout}
        options = head_options or {}
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
        preds = []
        for i in range(len(waves)):
            tasks = {
                t: {lab: float(p) for lab, p in zip(self.tasks[t], all_probs[t][i])}
                for t in self.tasks
            }
            row = all_probs[PRIMARY_TASK][i]
            best = int(row.argmax())
            emb = {t: [float(x) for x in v[i]] for t, v in vectors.items()}
            preds.append(Prediction(self.labels[best], float(row[best]), tasks[PRIMARY_TASK], tasks,
                                    emb))
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
            **self.info,
        }

    def save(self, directory: str | Path) -> Path:
        """Write model.safetensors + config.json; tensors only, nothing pickled."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(self.config(), indent=2))
        return directory

    @classmethod
    def from_config(cls, config: dict, pretrained: bool = False) -> CommandClassifier:
        enc = config["encoder"]
        head = config.get("head", {})
        encoder = build_encoder(enc["name"], window=enc["window"], pretrained=pretrained)
        model = cls(encoder, config["tasks"], head.get("layer"), head.get("pooling", "mean"),
                    head.get("dropout", 0.1), config.get("heads"))
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
            state = load_file(str(weights))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{directory}: config does not describe a model ({err})") from None
        except SafetensorError as err:
            raise ModelError(f"{weights}: unreadable weights ({err})") from None
        ours = model.state_dict()
        missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        bad_shape = [k for k in ours if k in state and ours[k].shape != state[k].shape]
        if missing or extra or bad_shape:
            raise ModelError(
                f"{directory}: config.json does not match model.safetensors "
                f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {bad_shape[:3]})"
            )
        model.load_state_dict(state)
        return model.to(device).eval()


def load_model(directory: str | Path) -> Recognizer:
    """Load any saved system (neural or classic) by the kind its config names."""
    config = read_config(Path(directory))
    if config["kind"] == "neural":
        return CommandClassifier.load(directory)
    if config["kind"] in ("zero-shot", "generative", "combined"):
        from .zeroshot import CombinedRecognizer, GenerativeRecognizer, ZeroShotRecognizer

        kinds = {"zero-shot": ZeroShotRecognizer, "generative": GenerativeRecognizer,
                 "combined": CombinedRecognizer}
        return kinds[config["kind"]].load(directory)
    from .classic import load_classic

    return load_classic(directory)
