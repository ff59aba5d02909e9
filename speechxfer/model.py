"""CommandClassifier: encoder + one head per task, saved as safetensors + JSON, and predict."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from .audio import batch_waves, batches_by_length
from .encoders import Encoder, EncoderOutput, build_encoder
from .heads import HeadConfig, build_head
from .recognizer import (
    ModelError,
    Prediction,
    Recognizer,
    check_kind,
    check_labels,
    info_from,
    is_model_folder,
    read_weights,
    to_waves,
)
from .recognizer import load as load_model
from .store import atomic_folder

KIND = "neural"
PRIMARY_TASK = "command"
MAX_TASKS = 64
HEAD_OPTIONS = {f.name for f in fields(HeadConfig)} - {"num_classes", "hidden_size", "num_states"}
__all__ = ["PRIMARY_TASK", "CommandClassifier", "ModelError", "Prediction", "load_model"]


class CommandClassifier(nn.Module, Recognizer):
    """A pretrained (or scratch) encoder with a head per task.

    ``head_options`` maps a task to HeadConfig fields (kind, layer, pooling, ...) that override
    the shared ``layer``/``pooling``/``dropout`` for that task's head; the default is ``single``.
    """

    model_kind = KIND

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
        raw = {t for t, kind in self.kinds.items() if embeddings and kind == "embedding"}
        probs = {t: np.zeros((len(waves), head.config.embedding_dim if t in raw
                              else head.config.num_classes), np.float32)
                 for t, head in self.heads.items()}
        for idx in batches_by_length(waves, batch_size):
            batch, lengths = batch_waves([waves[i] for i in idx])
            outputs = self(batch.to(device), lengths.to(device))
            for t, out in outputs.items():
                values = out.float() if t in raw else self.heads[t].probabilities(out)
                probs[t][idx] = values.cpu().numpy()
        return probs

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        return self.predict_all(waves)[PRIMARY_TASK]

    def predict_batch(self, items: list, sample_rate: int | None = None) -> list[Prediction]:
        waves = to_waves(items, sample_rate, self.sample_rate)
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
            **self.config_header(),
            # with what decides the encoder beyond its weights, so that it is rebuilt as trained
            "encoder": {"name": self.encoder.name, "window": self.encoder.window,
                        **self.encoder.recorded()},
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
        # configs saved before encoders recorded anything hold name and window only
        recorded = {k: v for k, v in enc.items() if k not in ("name", "window")}
        encoder = build_encoder(enc["name"], window=enc["window"], pretrained=pretrained,
                                recorded=recorded)
        model = cls(encoder, tasks, head.get("layer"), head.get("pooling", "mean"),
                    head.get("dropout", 0.1), heads)
        if config.get("sample_rate", model.sample_rate) != model.sample_rate:
            raise ValueError(f"sample_rate {config['sample_rate']!r:.20} is not the encoder's "
                             f"{model.sample_rate}")
        model.info = info_from(config)
        return model

    def task_model(self) -> CommandClassifier | None:
        return self if len(self.tasks) > 1 else None

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu") -> CommandClassifier:
        """The classifier of a folder whose config.json ``read_config`` has read (``load``
        opens only a neural classifier's folder; ``load_model`` any kind)."""
        check_kind(directory, config, KIND)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{directory}: model.safetensors is missing")
        try:
            model = cls.from_config(config)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{directory / 'config.json'}: does not describe a model ({err})"
                             ) from None
        model.load_rejection(config, directory)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(read_weights(weights, "pt", shapes))
        return model.to(device).eval()
