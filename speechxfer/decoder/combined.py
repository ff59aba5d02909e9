"""The combined system: a trained classifier head with the decoder's zero-shot scores as a
prior, p ∝ p_head · p_zero^weight.

Why: the head learns the speakers it saw, the decoder knows the words; the prior helps most
when the head has few clips or meets a new voice (``weight`` chosen by ``choose_weight`` on
validation clips of the training speakers, each scored by a head trained without its speaker:
``jobs.held_out_speaker_probs``). See recipes/zero_shot_vs_finetune for how it compares with a
head alone.

The fast path: ``speechxfer train`` also writes the system's int8 ONNX graph into the model
folder's ``fast/`` (``export.write_fast_path``, after a parity check); ``from_folder`` on the CPU
then runs the command probabilities through it when ONNX Runtime is installed, and the torch
system otherwise (or with ``SPEECHXFER_TORCH=1``, or after ``system.fast = None``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..audio import batch_waves, batches_by_length
from ..encoders.registry import weights_identity
from ..heads import check_real
from ..log import LOGGER
from ..model import KIND as NEURAL_KIND
from ..model import PRIMARY_TASK, CommandClassifier
from ..recognizer import (
    ModelError,
    Prediction,
    Recognizer,
    check_kind,
    info_from,
    is_model_folder,
    load,
    loader_of,
    read_config,
    softmax,
    sub_folder,
    to_waves,
)
from ..store import atomic_folder, digest_files, is_model_file
from .generative import KIND as GENERATIVE_KIND
from .scoring import KIND as ZERO_SHOT_KIND
from .scoring import ZeroShotRecognizer

KIND = "combined"
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
MAX_PRIOR_WEIGHT = 1_000.0  # beyond it p_zero^weight under- or overflows to NaN
FAST_FOLDER = "fast"  # the exported graph inside a model folder (see the module docstring)
TORCH_ONLY_ENV = "SPEECHXFER_TORCH"  # "1": load_model ignores FAST_FOLDER
FAST_KIND = "onnx"


def combine_log_linear(head_probs: np.ndarray, zero_probs: np.ndarray, weight: float) -> np.ndarray:
    """p ∝ p_head · p_zero^weight, row-normalised (in log space, so tiny values survive)."""
    return softmax(np.log(np.clip(head_probs, 1e-12, None))
                   + weight * np.log(np.clip(zero_probs, 1e-12, None)))


def choose_weight(head_probs: np.ndarray, zero_probs: np.ndarray, target: np.ndarray,
                  grid: tuple[float, ...] = WEIGHT_GRID) -> tuple[float, dict[float, float]]:
    """The grid weight of least NLL on held-out clips (NLL is smoother than accuracy on few
    clips); ties go to the smaller weight. Returns it and the NLL of every weight."""
    nll = {}
    for w in grid:
        p = combine_log_linear(head_probs, zero_probs, w)[np.arange(len(target)), target]
        nll[w] = float(-np.log(np.clip(p, 1e-12, None)).mean())
    return min(grid, key=lambda w: (round(nll[w], 9), w)), nll


class CombinedRecognizer(Recognizer):
    """A trained classifier head (any tasks: its extra heads travel along) times the
    zero-shot prior of a decoder-scoring system (zero-shot or generative)."""

    model_kind = KIND

    def __init__(self, head: CommandClassifier, zero: ZeroShotRecognizer, weight: float = 1.0):
        if sorted(head.labels) != sorted(zero.labels):
            raise ValueError(f"head labels {head.labels} differ from zero-shot {zero.labels}")
        self.head, self.zero, self.weight = head, zero, float(weight)
        self.labels = list(head.labels)
        self.sample_rate = head.sample_rate
        self.order = [zero.labels.index(lab) for lab in self.labels]  # zero's columns, our order
        self.info: dict = {}
        self.fast: Recognizer | None = None  # set: predict_proba runs it (``fast_path``)
        self._same_encoder: bool | None = None  # the two encoders' weights equal (computed once)

    def task_model(self) -> CommandClassifier | None:
        return self.head.task_model()

    def zero_probs(self, waves: list[torch.Tensor]) -> np.ndarray:
        """The prior's probabilities, columns in this system's label order."""
        return self.zero.predict_proba(waves)[:, self.order]

    def prior_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """The prior's probabilities from the decoder system's label scores, in our order."""
        return self.zero.proba_from_scores(scores)[:, self.order]

    def shares_encoder(self) -> bool:
        """True when the head sat on the same, untouched encoder: one encoder pass serves both."""
        strategy = self.head.info.get("strategy")  # config.json's: any JSON at all
        if not (isinstance(strategy, dict) and strategy.get("strategy") == "frozen"
                and self.head.encoder.window == self.zero.window
                and self.head.encoder.name == self.zero.encoder_name):
            return False
        if self._same_encoder is None:  # config.json's word alone could hand the decoder
            # states of an encoder it was never trained with (a tuned head's, relabelled)
            head, zero = self.head.encoder.state_dict(), self.zero.model.encoder.state_dict()
            self._same_encoder = head.keys() == zero.keys() and all(
                torch.equal(head[k].cpu(), zero[k].cpu()) for k in head)
        return self._same_encoder

    @torch.no_grad()
    def shared_pass(self, waves: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Head probabilities and the decoder system's label scores from one encoder pass (the
        head's encoder; valid when ``shares_encoder``)."""
        self.head.eval()
        self.zero.model.eval()
        device = next(self.head.parameters()).device
        head = np.zeros((len(waves), len(self.labels)), np.float32)
        scores = np.zeros((len(waves), len(self.zero.labels)), np.float32)
        for idx in batches_by_length(waves, self.zero.options.batch_size):
            batch, lengths = batch_waves([waves[i] for i in idx])
            out = self.head.encoder(batch.to(device), lengths.to(device))
            logits = self.head.heads_forward(out)[PRIMARY_TASK].float()
            head[idx] = torch.softmax(logits, -1).cpu().numpy()
            mask = out.mask if self.zero.window == "clip" else None
            states = out.hidden_states[-1].to(self.zero.device)
            scores[idx] = self.zero.label_scores(states, mask).cpu().numpy()
        return head, scores

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        if self.fast is not None:
            return self.fast.predict_proba(waves)
        if not self.shares_encoder():
            return combine_log_linear(self.head.predict_proba(waves), self.zero_probs(waves),
                                      self.weight)
        head, scores = self.shared_pass(waves)
        return combine_log_linear(head, self.prior_from_scores(scores), self.weight)

    def predict_batch(self, items: list, sample_rate: int | None = None) -> list[Prediction]:
        """The combined command decision, plus the head's other tasks (speaker, ...) if any."""
        waves = to_waves(items, sample_rate, self.sample_rate)
        preds = self.predictions(self.predict_proba(waves))
        if self.head.task_model() is not None:
            for pred, extra in zip(preds, self.head.predict_batch(waves, self.sample_rate)):
                pred.tasks = {**extra.tasks, PRIMARY_TASK: pred.probabilities}
                pred.embeddings = extra.embeddings
        return preds

    def config(self) -> dict:
        return {**self.config_header(), "labels": self.labels, "sample_rate": self.sample_rate, "weight": self.weight,
                "head": "head", "zero_shot": "zero_shot", **self.rejection_config(), **self.info}

    def save(self, directory: str | Path) -> Path:
        """config.json, the head's folder in head/ and the decoder system's in zero_shot/."""
        directory = Path(directory)
        with atomic_folder(directory, is_model_folder) as folder:
            self.head.save(folder / "head")
            self.zero.save(folder / "zero_shot")
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
        return directory

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu") -> CombinedRecognizer:
        check_kind(directory, config, KIND)
        try:
            weight = check_real("weight", config.get("weight"), 0.0, MAX_PRIOR_WEIGHT)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        head_dir = sub_folder(directory, config, "head")
        zero_dir = sub_folder(directory, config, "zero_shot")
        head_config, zero_config = read_config(head_dir), read_config(zero_dir)
        if head_config["kind"] != NEURAL_KIND:
            raise ModelError(f"{directory}: 'head' ({head_dir.name}/) holds no neural classifier")
        if zero_config["kind"] not in (ZERO_SHOT_KIND, GENERATIVE_KIND):
            raise ModelError(f"{directory}: 'zero_shot' ({zero_dir.name}/) holds no "
                             "decoder-scoring system")
        head = CommandClassifier.from_folder(head_dir, head_config, device)
        zero = loader_of(zero_config["kind"]).from_folder(zero_dir, zero_config, device)
        try:
            system = cls(head, zero, weight)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        if config.get("labels", system.labels) != system.labels:
            raise ModelError(f"{directory}: labels {config['labels']!r:.60} differ from the "
                             f"head's {system.labels}")
        system.load_rejection(config, directory)
        system.info = info_from(config)
        if torch.device(device).type == "cpu":
            system.fast = fast_path(directory, system.labels, config, system.zero.encoder_name)
        return system


def source_fingerprint(directory: Path, config: dict) -> str:
    """A digest of what a fast path is exported from: the prior weight, the labels and the
    config and weights of the head and prior folders. A head retrained into ``head/`` (or a
    prior with new spellings) changes it, so a graph of the old one is never run in its place."""
    digest = hashlib.sha256(json.dumps([config.get("weight"), config.get("labels")]).encode())
    for key in ("head", "zero_shot"):
        folder = sub_folder(directory, config, key)
        digest_files(digest, ((f"{key}/{path.name}", path) for path in sorted(folder.iterdir())
                              if path.is_file() and is_model_file(path)))
    return digest.hexdigest()


def fast_path(directory: Path, labels: list[str], config: dict,
              encoder: str) -> Recognizer | None:
    """The exported graph in ``directory/fast`` when it can run here: ONNX Runtime installed and
    ``SPEECHXFER_TORCH`` not "1". A broken, mismatched or stale one (exported from another head
    or prior: ``source_fingerprint``; or from other installed weights of the prior's Whisper
    ``encoder``, which zero_shot/ does not hold: ``weights_identity``, in fast paths written
    since it was recorded) is logged and passed over: the torch system beside it gives the
    answers, only slower."""
    folder = directory / FAST_FOLDER
    if (os.environ.get(TORCH_ONLY_ENV) == "1" or not (folder / "config.json").is_file()
            or importlib.util.find_spec("onnxruntime") is None):
        return None
    try:
        fast_config = read_config(folder)
        if fast_config["kind"] != FAST_KIND:
            raise ModelError(f"{folder}: not an exported ({FAST_KIND}) system")
        source = fast_config.get("source")
        written_for = source.get("fingerprint") if isinstance(source, dict) else None
        if written_for is not None and written_for != source_fingerprint(directory, config):
            raise ModelError(f"{folder}: stale, exported before the head or prior beside it "
                             f"changed (speechxfer export {directory} --fast writes a new one)")
        baked = source.get("weights") if isinstance(source, dict) else None
        if baked is not None and baked != weights_identity(encoder):
            raise ModelError(f"{folder}: stale, exported with other installed {encoder} weights "
                             f"({baked!r:.120}) than now (speechxfer export {directory} --fast "
                             "writes a new one)")
        fast = load(folder, "cpu")
    except (ModelError, OSError) as err:
        LOGGER.warning("%s; predicting with torch", err)
        return None
    if fast.labels != labels:
        LOGGER.warning("%s: labels %s differ from the system's; predicting with torch", folder,
                       fast.labels)
        return None
    return fast
