"""Transfer strategies, the training loops (``fit`` for classifier heads, ``fit_generative``
for the decoder), checkpoints and resume.

Strategies:
- ``frozen``: linear probe; the encoder never changes, so its hidden states are computed once;
- ``top-k``: fine-tune the top k blocks; the blocks below are frozen, so their output is cached
  and each step runs only the top k blocks (what makes CPU fine-tuning affordable);
- ``full``: fine-tune everything; ``reinit-k``: re-initialise the top k blocks, then fine-tune
  everything (the textbook recipe: keep the general lower layers, relearn the task-specific ones);
- ``scratch``: the same network randomly initialised: the no-transfer control.

Several processes (``torchrun --nproc-per-node N -m speechxfer train ...``): ``fit`` joins the
process group torchrun describes in its environment (gloo on the CPU, NCCL on GPUs), wraps the
trainable part in DistributedDataParallel and gives each process its share of every global
batch (``shard``), so N processes take the steps one process would take on the same batches;
only rank 0 writes checkpoints (and, in the jobs, the model folder).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .audio import batch_waves, batches_by_length
from .decoder.generative import DecoderCache, GenerativeRecognizer
from .encoders import Encoder, EncoderOutput
from .heads import MISSING, check_int, check_real, encode_multilabel
from .log import LOGGER, progress
from .model import PRIMARY_TASK, CommandClassifier
from .store import atomic_folder, recover

if TYPE_CHECKING:  # speechbrain loads only when a run augments
    from .augment import Augmenter

STRATEGIES = ("frozen", "top-k", "full", "reinit-k", "scratch")
KEEP = ("best", "last")  # which epoch's weights a run keeps (TrainConfig.keep)
# MISSING (from heads): target of a label a clip does not have: it adds no loss and no gradient


@dataclass
class TrainConfig:
    strategy: str = "top-k"
    k: int = 2  # blocks fine-tuned (top-k) or re-initialised (reinit-k)
    epochs: int = 4
    batch_size: int = 32
    lr_head: float = 2e-3
    lr_encoder: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    patience: int = 3  # epochs without validation gain before stopping
    # "best": the epoch of best command accuracy on validation, stopping when it stalls;
    # "last": every epoch, the last one kept (a speaker model, whose voices that accuracy
    # does not measure; the cosine schedule has then decayed to zero)
    keep: str = "best"
    seed: int = 0
    device: str = "auto"
    task_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.keep not in KEEP:
            raise ValueError(f"unknown keep {self.keep!r}; choose from {KEEP}")
        # library callers pass these unchecked: a NaN or zero rate, or no epochs, would train
        # nothing (or NaN weights) and still save a model
        for name in ("epochs", "batch_size", "patience"):
            check_int(name, getattr(self, name), 1, sys.maxsize)
        for name in ("lr_head", "lr_encoder"):
            check_real(name, getattr(self, name), 0.0, math.inf, low_open=True, high_open=True)
        check_real("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        check_real("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        for task, weight in self.task_weights.items():
            check_real(f"task_weights[{task!r}]", weight, 0.0, math.inf, high_open=True)

    def to_dict(self) -> dict:
        return asdict(self)


HEAD_ONLY_EPOCHS = 30  # a head on cached features: epochs cost seconds, so train it to convergence
ENCODER_EPOCHS = 4  # strategies that update encoder blocks: a few passes before they overfit


def default_epochs(strategy: str) -> int:
    """Epochs when none are asked for: many for a head alone, few when the encoder trains."""
    return HEAD_ONLY_EPOCHS if strategy in ("frozen", "combined") else ENCODER_EPOCHS


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` (auto, cpu, cuda, cuda:N, mps); a ValueError that says why
    when torch does not know it or this machine lacks it, so a run fails before reading data."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is available here (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: Apple MPS is not available here (use cpu or auto)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def distributed() -> tuple[int, int]:
    """(rank, world size): a torchrun launch (WORLD_SIZE > 1) joins its process group here,
    once, over NCCL when this process has a GPU and gloo otherwise; a plain run is (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """True except in the non-zero ranks of a torchrun launch: the one process that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def shard(idx: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This rank's clips of the global batch ``idx`` and the factor its mean loss is scaled by,
    so that DDP's average of the ranks' gradients is the gradient of the global batch's mean.
    A rank left without clips (a batch smaller than the world) runs one with factor 0: every
    rank must take part in each gradient exchange."""
    part = idx[rank::world]
    if not part:
        return idx[:1], 0.0
    return part, len(part) * world / len(idx)


class _Step(nn.Module):
    """One training forward (``run(idx, epoch)``) as a module, so DistributedDataParallel sees
    the forward it must prepare the gradient exchange for; ``model`` holds the parameters."""

    def __init__(self, model: nn.Module, run):
        super().__init__()
        self.model, self.run = model, run

    def forward(self, idx: list[int], epoch: int) -> dict[str, torch.Tensor]:
        return self.run(idx, epoch)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and GPUs); jobs call it before building any model, so
    the same seed gives the same initial weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_fingerprint(model: CommandClassifier) -> dict:
    """Encoder, tasks, head options and a hash of every tensor's name and shape: a checkpoint
    of another layout (pooling, layer, labels...) must never be loaded into this one."""
    shapes = json.dumps([[k, list(v.shape)] for k, v in model.state_dict().items()])
    return {"encoder": model.encoder.name, "window": model.encoder.window, "tasks": model.tasks,
            "heads": {t: h.config.options() for t, h in model.heads.items()},
            "tensors": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tensors training can change (trainable parameters and buffers): what a
    checkpoint or the best epoch must keep; a frozen encoder's weights stay as built."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
            if k in keep}


def waves_digest(*parts: list) -> str:
    """A hash of the training clips' samples and labels (and of the validation ones)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"|{len(part)}|".encode())
        for item in part:
            if isinstance(item, torch.Tensor):
                digest.update(item.detach().cpu().contiguous().numpy().tobytes())
            else:
                digest.update(json.dumps(item, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def frozen_blocks(model: CommandClassifier, config: TrainConfig) -> int:
    """How many lower blocks stay fixed (and so can be cached) under the strategy."""
    n = model.encoder.num_layers
    if config.strategy == "frozen":
        return n
    if config.strategy == "top-k":
        if not 1 <= config.k <= n:
            raise ValueError(f"top-k needs 1 <= k <= {n}, got {config.k}")
        return n - config.k
    return 0


def prepare(model: CommandClassifier, config: TrainConfig) -> int:
    """Apply the strategy to the model's parameters; return the number of frozen blocks."""
    enc = model.encoder
    unknown = sorted(set(config.task_weights) - set(model.tasks))
    if unknown:  # a misspelt task's weight would be ignored without a word
        raise ValueError(f"task_weights names task(s) {unknown} the model lacks; its tasks are "
                         f"{sorted(model.tasks)}")
    n_frozen = frozen_blocks(model, config)
    states = enc.num_layers + 1
    if config.strategy == "top-k" and all(
            head.mix.layer is not None and head.mix.layer % states <= n_frozen
            for head in model.heads.values()):  # the tuned blocks would change nothing read
        raise ValueError(f"top-k with k={config.k} tunes blocks above hidden state {n_frozen}, "
                         f"but every head reads one at or below it (layer "
                         f"{sorted({h.mix.layer for h in model.heads.values()})}); use a higher "
                         "layer, a larger k, or the frozen strategy")
    if config.strategy == "reinit-k":
        if not 1 <= config.k <= enc.num_layers:
            raise ValueError(f"reinit-k needs 1 <= k <= {enc.num_layers}, got {config.k}")
        for i in range(enc.num_layers - config.k, enc.num_layers):
            enc.reset_block(i)
    for p in enc.parameters():
        p.requires_grad = n_frozen == 0
    for block in list(enc.blocks)[n_frozen:]:
        for p in block.parameters():
            p.requires_grad = True
    if n_frozen < enc.num_layers:
        for p in enc.top_parameters():
            p.requires_grad = True
    return n_frozen


class FeatureCache:
    """Hidden states 0..n_frozen of every clip, computed once by the frozen part of the encoder.

    Stored per clip, trimmed to the frames that cover the audio, in float16 to halve memory.
    In a fixed window ("30s", "2s") the trainable blocks attend over the whole padded window,
    so the state they start from is also kept untrimmed.
    """

    def __init__(self, model: CommandClassifier, waves: list[torch.Tensor], n_frozen: int,
                 device: torch.device, batch_size: int = 16, desc: str = "caching features"):
        self.n_frozen = n_frozen
        keep_full = n_frozen < model.encoder.num_layers and model.encoder.window != "clip"
        self.items: list[torch.Tensor] = [torch.empty(0)] * len(waves)
        self.full: list[torch.Tensor] | None = [torch.empty(0)] * len(waves) if keep_full else None
        model.eval()
        with torch.no_grad():
            for idx in progress(list(batches_by_length(waves, batch_size)), desc):
                batch, lengths = batch_waves([waves[i] for i in idx])
                out = model.encoder(batch.to(device), lengths.to(device))
                states = torch.stack(out.hidden_states[: n_frozen + 1], 1)  # [B, S, F, D]
                for j, i in enumerate(idx):
                    n = int(out.mask[j].sum())  # covered frames are a prefix
                    self.items[i] = states[j][:, :n].to(torch.float16).cpu()
                    if self.full is not None:
                        self.full[i] = states[j][-1].to(torch.float16).cpu()

    def subset(self, idx: list[int]) -> FeatureCache:
        """The cache of clips ``idx`` (sharing tensors): one caching pass serves many runs."""
        part = copy.copy(self)
        part.items = [self.items[i] for i in idx]
        part.full = [self.full[i] for i in idx] if self.full is not None else None
        return part

    def mean_pooled(self) -> FeatureCache:
        """Each clip's states averaged over its frames (one frame left): for a fully frozen
        encoder under mean-pooled heads the same pooled vectors (the layer mix is linear, so
        the mean over frames commutes with it), at a fraction of the cost per epoch."""
        part = self.subset(list(range(len(self.items))))
        part.items = [x.float().mean(1, keepdim=True).to(torch.float16) for x in self.items]
        return part

    def joined(self, other: FeatureCache) -> FeatureCache:
        """This cache's clips followed by ``other``'s (made by the same frozen encoder part)."""
        part = copy.copy(self)
        part.items = self.items + other.items
        part.full = None if self.full is None else self.full + other.full
        return part

    def batch(self, idx: list[int], device: torch.device):
        """Padded [S, B, F, D] states, the [B, F] frame mask, and the untrimmed start state."""
        frames = max(self.items[i].shape[1] for i in idx)
        first = self.items[idx[0]]
        x = torch.zeros(first.shape[0], len(idx), frames, first.shape[2])
        mask = torch.zeros(len(idx), frames, dtype=torch.bool)
        for j, i in enumerate(idx):
            f = self.items[i].shape[1]
            x[:, j, :f] = self.items[i].float()
            mask[j, :f] = True
        full = None
        if self.full is not None:  # window lengths differ only if a clip outgrew the window
            full = nn.utils.rnn.pad_sequence([self.full[i] for i in idx], batch_first=True)
            full = full.float().to(device)
        return x.to(device), mask.to(device), full


def log_mel_front_end(encoder: Encoder) -> nn.Module | None:
    """The module whose output is the encoder's log-mel features [batch, mels, frames]:
    Whisper's ``log_mel``, a DS-CNN's mel front end; None for encoders that read samples."""
    from .encoders.cnn import LogMel

    front = getattr(encoder, "log_mel", None)
    if front is None and isinstance(getattr(encoder, "front_end", None), LogMel):
        front = encoder.front_end
    return front


@contextmanager
def masked_features(encoder: Encoder, augmenter: Augmenter | None) -> Iterator[None]:
    """Inside, the encoder's log-mel features go through ``augmenter.mask_features``
    (SpecAugment) before the network reads them; a no-op without an augmenter or with its
    ``specaugment`` off.

    Masks must come before the encoder, so strategies that cache encoder states (frozen,
    top-k) cache masked copies of the clips; the others mask every training step.
    """
    if augmenter is None or not augmenter.config.specaugment:
        yield
        return
    front = log_mel_front_end(encoder)
    if front is None:
        raise ValueError(f"SpecAugment masks log-mel features, and the {encoder.name} encoder "
                         "reads raw samples: turn specaugment off for it")

    def mask(_module, _inputs, mel: torch.Tensor) -> torch.Tensor:
        return augmenter.mask_features(mel.transpose(1, 2)).transpose(1, 2)

    handle = front.register_forward_hook(mask)
    try:
        yield
    finally:
        handle.remove()


def training_cache(model: CommandClassifier, waves: list[torch.Tensor], n_clean: int,
                   n_frozen: int, device: torch.device,
                   augmenter: Augmenter | None = None) -> FeatureCache:
    """The cache of ``waves``: ``n_clean`` clean clips, then their augmented copies, whose
    features are masked (``masked_features``) when the augmenter asks for SpecAugment."""
    if augmenter is None or not augmenter.config.specaugment or n_clean == len(waves):
        return FeatureCache(model, waves, n_frozen, device, desc="caching train")
    clean = FeatureCache(model, waves[:n_clean], n_frozen, device, desc="caching train")
    with masked_features(model.encoder, augmenter):
        masked = FeatureCache(model, waves[n_clean:], n_frozen, device, desc="caching copies")
    return clean.joined(masked)


def forward_cached(model: CommandClassifier, cache: FeatureCache, idx: list[int],
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Run only the trainable top of the encoder on cached lower states, then the heads."""
    states, mask, full = cache.batch(idx, device)
    hidden = list(states.unbind(0))
    if cache.n_frozen < model.encoder.num_layers:
        if full is None:
            hidden += model.encoder.run_blocks(hidden[-1], mask, cache.n_frozen)
        else:
            full_mask = torch.ones(full.shape[:2], dtype=torch.bool, device=device)
            top = model.encoder.run_blocks(full, full_mask, cache.n_frozen)
            hidden += [h[:, : mask.shape[1]] for h in top]
    return model.heads_forward(EncoderOutput(hidden, mask))


@torch.no_grad()
def cached_proba(model: CommandClassifier, cache: FeatureCache, batch_size: int = 64) -> np.ndarray:
    """Primary-task probabilities of every clip in ``cache``: no encoder pass below the cache."""
    model.eval()
    device = next(model.heads.parameters()).device
    n = len(cache.items)
    out = [torch.softmax(forward_cached(model, cache, list(range(s, min(s + batch_size, n))),
                                        device)[PRIMARY_TASK].float(), -1).cpu()
           for s in range(0, n, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.labels)), np.float32)


def length_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar-length clips: less padding, so less compute per step.

    Clips are shuffled, sorted by length within pools of 16 batches, cut into batches, and the
    batches shuffled again, so every epoch still sees a different mix.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 16
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def encode_targets(model: CommandClassifier, labels: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Label strings to targets per task; unknown or absent labels become MISSING.

    Single and embedding tasks give a class index per clip; multi-label tasks a [clips, classes]
    matrix of 1 / 0 / MISSING (see ``heads.encode_multilabel``).
    """
    out = {}
    for task, names in model.tasks.items():
        if model.kinds[task] == "multi":
            out[task] = torch.tensor([encode_multilabel(lab.get(task), names) for lab in labels])
            continue
        index = {n: i for i, n in enumerate(names)}
        out[task] = torch.tensor([index.get(lab.get(task), MISSING) for lab in labels])
    return out


def masked_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                weights: dict[str, float], heads: nn.ModuleDict | None = None) -> torch.Tensor:
    """Weighted sum of per-task losses over the clips (or entries) whose label is known.

    Each head supplies its kind's loss; without ``heads`` every task is plain cross-entropy.
    """
    total = 0.0
    for task, lg in logits.items():
        t = targets[task].to(lg.device)
        if (t != MISSING).any():
            loss = (heads[task].loss(lg, t) if heads is not None
                    else nn.functional.cross_entropy(lg.float(), t, ignore_index=MISSING))
            total = total + weights.get(task, 1.0) * loss
    return total


CHECKPOINT_FILES = ("state.json", "model.safetensors", "best.safetensors",
                    "optimizer.safetensors", "rng.safetensors")


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every global random generator (Python, NumPy, torch CPU and CUDA) as tensors plus
    JSON, so a checkpoint stores them without pickling."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"python": torch.tensor(keys, dtype=torch.int64),
               "numpy": torch.from_numpy(np_keys.astype(np.int64)),
               "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    return tensors, {"python": [version, gauss], "numpy": [kind, int(pos), int(has_gauss),
                                                           float(cached)]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore what ``rng_state`` returned; all or nothing (each state is tried on a scratch
    generator first), so a bad one leaves the generators as they were."""
    version, gauss = meta["python"]
    python = (int(version), tuple(int(x) for x in tensors["python"].tolist()), gauss)
    kind, pos, has_gauss, cached = meta["numpy"]
    numpy = (str(kind), tensors["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss),
             float(cached))
    random.Random().setstate(python)
    np.random.RandomState().set_state(numpy)
    torch.Generator().set_state(tensors["torch"])
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count())
                if f"cuda.{i}" in tensors]
        torch.cuda.set_rng_state_all(cuda)


def _plain(value):
    """``value`` as JSON gives it back (tuples become lists), for comparing with a saved one."""
    return json.loads(json.dumps(value))


def _changes(old, new, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in _changes(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".") or "signature"]


def _is_checkpoint(directory: Path) -> bool:
    return all(p.name in CHECKPOINT_FILES for p in directory.iterdir())


class Checkpointer:
    """Saves model, optimizer, loop and random-generator state each epoch, so a crashed run
    resumes where it stopped and ends as an uninterrupted one would, dropout included.

    The folder is swapped in whole each epoch (``store.atomic_folder``). One that is torn or
    was made by another run (its ``signature`` differs) is reported in one line, removed, and
    training starts from the beginning.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             best_state: dict[str, torch.Tensor], state: dict,
             peers: list[tuple[dict[str, torch.Tensor], dict]] = ()) -> None:
        """``peers``: the ``rng_state`` of torchrun ranks 1, 2, ... (their dropout differs from
        rank 0's), stored beside this process's so that every rank resumes its own."""
        opt = optimizer.state_dict()
        tensors = {f"{i}.{name}": torch.as_tensor(v).cpu().contiguous()
                   for i, s in opt["state"].items() for name, v in s.items()}
        groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
        rng, rng_meta = rng_state()
        for rank, (peer, _) in enumerate(peers, start=1):
            rng.update({f"rank{rank}.{k}": v for k, v in peer.items()})
        with atomic_folder(self.dir, _is_checkpoint) as folder:
            save_file(best_state, str(folder / "best.safetensors"))
            save_file(trained_state(model), str(folder / "model.safetensors"))
            save_file(tensors, str(folder / "optimizer.safetensors"))
            save_file(rng, str(folder / "rng.safetensors"))
            (folder / "state.json").write_text(json.dumps(
                {**state, "param_groups": groups, "rng": rng_meta,
                 "rng_peers": [meta for _, meta in peers]}))

    def discard(self, reason: str) -> None:
        LOGGER.warning("discarding checkpoint %s: %s; training from the start", self.dir, reason)
        shutil.rmtree(self.dir, ignore_errors=True)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             signature: dict) -> dict | None:
        """Restore model, optimizer and random generators from this run's checkpoint and return
        the loop state (with ``best_state``); None when there is none to resume."""
        recover(self.dir)
        if not self.dir.is_dir():
            return None
        path = self.dir / "state.json"
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                raise TypeError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
            self.discard(f"{path} is unreadable ({err})")
            return None
        changed = _changes(state.get("signature"), _plain(signature))
        if changed:
            self.discard(f"it was made by a run with other data or options "
                         f"(changed: {', '.join(changed[:6])})")
            return None
        tensors = {}
        for name in ("model", "best", "optimizer", "rng"):
            file = self.dir / f"{name}.safetensors"
            try:
                tensors[name] = load_file(str(file))
            except (OSError, SafetensorError, ValueError, RuntimeError) as err:
                self.discard(f"{file} is unreadable ({err})")
                return None
        try:
            return self._restore(model, optimizer, state, tensors)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            self.discard(f"{path} does not fit this run ({err!r})")
            return None

    @staticmethod
    def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                 tensors: dict[str, dict[str, torch.Tensor]]) -> dict:
        """Check everything first, then apply: a checkpoint that does not fit changes nothing."""
        ours = {k: v.shape for k, v in trained_state(model).items()}
        for name in ("model", "best"):
            if {k: v.shape for k, v in tensors[name].items()} != ours:
                raise ValueError(f"{name}.safetensors does not match the model's tensors")
        loop = {"epoch": int(state["epoch"]), "best_epoch": int(state["best_epoch"]),
                "history": list(state["history"]), "stale": int(state["stale"]),
                "best": tuple(float(x) for x in state["best"]), "best_state": tensors["best"],
                "peer_rng": [({k.split(".", 1)[1]: v for k, v in tensors["rng"].items()
                               if k.startswith(f"rank{rank}.")}, meta)
                             for rank, meta in enumerate(state.get("rng_peers", []), start=1)]}
        per_param: dict[int, dict] = {}
        for key, value in tensors["optimizer"].items():
            i, name = key.split(".", 1)
            per_param.setdefault(int(i), {})[name] = value
        snapshot = rng_state()
        set_rng_state({k: v for k, v in tensors["rng"].items() if not k.startswith("rank")},
                      state["rng"])
        try:
            optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
        except BaseException:
            set_rng_state(*snapshot)
            raise
        model.load_state_dict(tensors["model"], strict=False)  # the rest never trains
        return loop


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    resumed_from: int | None  # epochs the checkpoint had done (numbered as the history is)
    train_examples: int = 0  # training examples per epoch: clips plus cached augmented copies
    # the lower-layer features fit used (cached strategies): later fits on subsets reuse them
    train_cache: FeatureCache | None = None
    val_cache: FeatureCache | None = None


def evaluate_accuracy(model: CommandClassifier, run_batch, n: int, targets: torch.Tensor,
                      batch_size: int) -> tuple[float, float]:
    """Primary-task accuracy and loss over ``n`` clips, given a batch runner."""
    model.eval()
    correct, loss_sum, counted = 0, 0.0, 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            lg = run_batch(idx)[PRIMARY_TASK].float().cpu()
            t = targets[idx]
            ok = t != MISSING
            correct += int((lg.argmax(-1)[ok] == t[ok]).sum())
            loss_sum += float(nn.functional.cross_entropy(lg[ok], t[ok], reduction="sum"))
            counted += int(ok.sum())
    return correct / max(counted, 1), loss_sum / max(counted, 1)


def verification_eer(model: CommandClassifier, run_batch, n: int, owners: list[str | None],
                     task: str, batch_size: int) -> float | None:
    """EER of the cosine of every pair of the ``n`` clips whose ``task`` label (``owners``) is
    known, a pair with one label being a target: how well an embedding head separates classes
    it never trained on (validation speakers). None without both kinds of pair."""
    from .evaluate import eer_of_pairs

    model.eval()
    known = [i for i in range(n) if owners[i] is not None]
    if len(known) < 2:
        return None
    with torch.no_grad():
        emb = torch.cat([run_batch(known[start:start + batch_size])[task].float().cpu()
                         for start in range(0, len(known), batch_size)]).numpy()
    return eer_of_pairs(emb, [owners[i] for i in known])


def fit(
    model: CommandClassifier,
    train_waves: list[torch.Tensor],
    train_labels: list[dict[str, str]],
    val_waves: list[torch.Tensor],
    val_labels: list[dict[str, str]],
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    train_cache: FeatureCache | None = None,
    identity: dict | None = None,
    augmenter: Augmenter | None = None,
    val_cache: FeatureCache | None = None,
) -> TrainResult:
    """Train under ``config.strategy``; keep the best validation epoch (or the last:
    ``config.keep``); resume if interrupted. Each embedding task's verification EER over the
    validation clip pairs is recorded in the history (``val_eer_<task>``).

    With ``checkpoint_dir`` each epoch is checkpointed there, and a checkpoint left by a run
    with the same ``identity`` (what the caller knows of data, split and options: JSON),
    config, model layout and training clips is resumed; any other one is discarded.

    ``train_cache`` (cached strategies only) reuses lower-layer features already computed for
    ``train_waves`` (followed by their augmented copies, with ``augmenter``) by a model with the
    same frozen encoder, as a recipe comparing runs does; ``val_cache`` the same for
    ``val_waves``. The result holds both caches.

    ``augmenter`` augments the training clips, never the validation ones. Cached strategies
    (frozen, top-k) cache its K seeded copies of every clip beside the clean one, so an epoch
    sees K + 1 versions of each; the others, which run the encoder every step anyway, draw a
    fresh version of each clip every epoch (seeded by seed, epoch and clip). With the
    augmenter's ``specaugment``, the cached copies' log-mel features are masked before the
    encoder reads them, and the other strategies mask every training batch
    (``masked_features``).
    """
    seed_everything(config.seed)
    rank, world = distributed()
    device = pick_device(config.device)
    if world > 1 and device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model.to(device)
    n_frozen = prepare(model, config)
    cached = n_frozen > 0
    targets = encode_targets(model, train_labels)
    val_targets = encode_targets(model, val_labels)[PRIMARY_TASK]
    val_owners = {t: [lab.get(t) for lab in val_labels]  # embedding tasks: EER of val pairs
                  for t, kind in model.kinds.items() if kind == "embedding"}
    clean_waves = train_waves
    if augmenter is not None and cached:
        train_waves, reps = augmenter.with_copies(train_waves)
        targets = {t: torch.cat([v] * reps) for t, v in targets.items()}

    if cached:
        if (train_cache is None or train_cache.n_frozen != n_frozen
                or len(train_cache.items) != len(train_waves)):
            train_cache = training_cache(model, train_waves, len(clean_waves), n_frozen, device,
                                         augmenter)
        if (val_cache is None or val_cache.n_frozen != n_frozen
                or len(val_cache.items) != len(val_waves)):
            val_cache = FeatureCache(model, val_waves, n_frozen, device, desc="caching validation")

        def run_train(idx, epoch):
            return forward_cached(model, train_cache, idx, device)

        def run_val(idx):
            return forward_cached(model, val_cache, idx, device)
    else:
        def run_wave_batch(waves, idx):
            batch, lengths = batch_waves([waves[i] for i in idx])
            return model(batch.to(device), lengths.to(device))

        def run_train(idx, epoch):
            if augmenter is None:
                return run_wave_batch(train_waves, idx)
            seed = augmenter.config.seed
            waves = [augmenter.augment(train_waves[i], np.random.default_rng([seed, epoch, i]))
                     for i in idx]
            with masked_features(model.encoder, augmenter):
                return run_wave_batch(waves, list(range(len(idx))))

        def run_val(idx):
            return run_wave_batch(val_waves, idx)

    head_params = [p for p in model.heads.parameters()]
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": config.lr_head}]
    if enc_params:
        lr = config.lr_head if config.strategy == "scratch" else config.lr_encoder
        groups.append({"params": enc_params, "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_waves) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir and rank == 0 else None
    signature = None
    if checkpointer:
        signature = {"identity": identity or {}, "config": config.to_dict(),
                     "model": model_fingerprint(model),
                     "data": waves_digest(clean_waves, train_labels, val_waves, val_labels),
                     "augment": None if augmenter is None else {
                         **asdict(augmenter.config), "noises": waves_digest(augmenter.noises)}}
    state = checkpointer.load(model, optimizer, signature) if checkpointer else None
    start_epoch, best, best_epoch, history, stale = 0, (-1.0, math.inf), -1, [], 0
    best_state = None
    resumed_from = None
    if world > 1:  # rank 0 alone reads the checkpoint: every rank resumes from its state
        import torch.distributed as dist

        shared = [state, optimizer.state_dict(), trained_state(model)]
        dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
        state = shared[0]
        if rank:
            optimizer.load_state_dict(shared[1])
            model.load_state_dict(shared[2], strict=False)
            peers = state["peer_rng"] if state is not None else []
            if len(peers) >= rank:  # a checkpoint of as many ranks: this rank's own generators
                set_rng_state(*peers[rank - 1])
    if state is not None:
        start_epoch, best_epoch, history, stale = (state["epoch"] + 1, state["best_epoch"],
                                                  state["history"], state["stale"])
        best, best_state = state["best"], state["best_state"]
        resumed_from = start_epoch
        if rank == 0:  # a rerun that only printed later epochs would look like a fresh start
            LOGGER.info("resuming from the checkpoint in %s: epoch %d of %d done", checkpoint_dir,
                        start_epoch, config.epochs)
        with warnings.catch_warnings():  # fast-forwarding the schedule before any step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start_epoch * steps_per_epoch):
                schedule.step()
    step = _Step(model, run_train)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step = DistributedDataParallel(step, find_unused_parameters=len(model.tasks) > 1)

    for epoch in range(start_epoch, config.epochs):
        if stale >= config.patience:
            break
        model.train()
        batches = length_batches([w.numel() for w in train_waves], config.batch_size,
                                 config.seed * 1000 + epoch)
        losses, epoch_started = [], time.perf_counter()
        bar = progress(batches, f"epoch {epoch + 1}")
        for batch_idx in bar:
            idx, scale = shard(batch_idx, rank, world)
            with autocast:
                logits = step(idx, epoch)
            loss = scale * masked_loss(logits, {t: v[idx] for t, v in targets.items()},
                                       config.task_weights, model.heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 5.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if val_waves:  # no validation clips: no val figures at all, never a NaN in the history
            with autocast:
                val_acc, val_loss = evaluate_accuracy(model, run_val, len(val_waves), val_targets,
                                                      config.batch_size)
            record.update(val_accuracy=val_acc, val_loss=val_loss)
            for task, owners in val_owners.items():
                with autocast:
                    eer = verification_eer(model, run_val, len(val_waves), owners, task,
                                           config.batch_size)
                if eer is not None:
                    record[f"val_eer_{task}"] = eer
            LOGGER.info("epoch %d: train loss %.4f  val acc %.4f  val loss %.4f%s", epoch + 1,
                        record["train_loss"], val_acc, val_loss,
                        "".join(f"  val EER {t} {record[f'val_eer_{t}']:.4f}"
                                for t in val_owners if f"val_eer_{t}" in record))
        else:
            LOGGER.info("epoch %d: train loss %.4f", epoch + 1, record["train_loss"])
        history.append(record)
        LOGGER.debug("epoch %d took %.1f s (%d steps)", epoch + 1,
                     time.perf_counter() - epoch_started, len(losses))
        by_val = bool(val_waves) and config.keep == "best"
        score = (record["val_accuracy"], -record["val_loss"]) if by_val else (epoch, 0.0)
        if score > (best[0], -best[1]):
            best, best_epoch, stale = (score[0], -score[1]), epoch + 1, 0
            best_state = trained_state(model)
        else:
            stale += 1
        peers = []
        if checkpoint_dir and world > 1:  # every rank takes part; rank 0 stores them all
            import torch.distributed as dist

            peers = [None] * world
            dist.all_gather_object(peers, rng_state())
            peers = peers[1:]
        if checkpointer:
            checkpointer.save(model, optimizer, best_state, {
                "signature": signature, "epoch": epoch, "best": list(best),
                "best_epoch": best_epoch, "history": history, "stale": stale}, peers)
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    return TrainResult(history, best_epoch, resumed_from, len(train_waves),
                       train_cache if cached else None, val_cache if cached else None)


GENERATIVE_CHECKPOINT_STEPS = 10  # optimiser steps between checkpoints of ``fit_generative``


def fit_generative(
    system: GenerativeRecognizer, waves: list[torch.Tensor], truth: list[str],
    steps: int = 60, batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
    device: str = "auto", cache: DecoderCache | None = None,
    checkpoint_dir: Path | None = None, identity: dict | None = None,
) -> dict:
    """Fine-tune the system's tuned decoder blocks for ``steps`` AdamW steps on the label
    scores of ``waves`` (cross-entropy over labels); returns cost and loss figures.

    The frozen encoder and decoder bottom run once (``DecoderCache``; pass ``cache``, built
    for ``waves`` with this ``tuned_from``, to reuse one across runs while the model still
    holds the pretrained weights). With ``checkpoint_dir`` the loop is checkpointed every
    GENERATIVE_CHECKPOINT_STEPS steps and a run with the same ``identity``, options and
    clips resumes there, ending as an uninterrupted run would.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    system.to(pick_device(device))
    if cache is None:
        cache = DecoderCache(system, waves, system.tuned_from)
    if cache.tuned_from != system.tuned_from:
        raise ValueError("the cache was built for another tuned_from")
    target = torch.tensor([system.labels.index(t) for t in truth], device=system.device)
    vocab, mass = system.shortlist(cache)
    params = system.tuned_parameters()
    for p in system.model.parameters():
        p.requires_grad = False
    for p in params.values():
        p.requires_grad = True
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.01)
    options = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "tuned_from": system.tuned_from}
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None
    signature = {"identity": identity or {}, "config": options, "labels": system.labels,
                 "data": waves_digest(waves, truth)} if checkpointer else None
    state = checkpointer.load(system.model, optimizer, signature) if checkpointer else None
    losses: list[float] = [] if state is None else [float(x) for x in state["history"]]
    if state is not None:
        LOGGER.info("resuming from the checkpoint in %s: step %d of %d done", checkpoint_dir,
                    len(losses), steps)
    rng = np.random.default_rng(seed)
    system.model.train()
    bar = progress(range(steps), "tuning the decoder")
    for step in bar:
        idx = rng.choice(len(truth), min(batch_size, len(truth)), replace=False).tolist()
        if step < len(losses):  # resumed: draw the batch as the first run did, skip the step
            continue
        logits = system.cached_label_scores(cache, idx, vocab)
        loss = nn.functional.cross_entropy(logits / system.options.temperature, target[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if checkpointer and (step + 1) % GENERATIVE_CHECKPOINT_STEPS == 0 and step + 1 < steps:
            checkpointer.save(system.model, optimizer, trained_state(system.model), {
                "signature": signature, "epoch": step, "best": [0.0, 0.0], "best_epoch": step,
                "history": losses, "stale": 0})
    for p in params.values():
        p.requires_grad = False
    system.model.eval()
    return {**options, "n_train": len(truth), "device": str(system.device),
            "resumed_from_step": None if state is None else len(state["history"]),
            "tuned_parameters": sum(p.numel() for p in params.values()),
            "shortlist_tokens": len(vocab), "shortlist_mass": mass,
            "first_loss": float(np.mean(losses[:5])), "last_loss": float(np.mean(losses[-5:])),
            "train_seconds": time.perf_counter() - started}
