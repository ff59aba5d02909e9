"""Transfer strategies, the training loop, checkpoints and resume.

Strategies:
- ``frozen``: linear probe; the encoder never changes, so its hidden states are computed once;
- ``top-k``: fine-tune the top k blocks; the blocks below are frozen, so their output is cached
  and each step runs only the top k blocks (what makes CPU fine-tuning affordable);
- ``full``: fine-tune everything; ``reinit-k``: re-initialise the top k blocks, then fine-tune
  everything (the textbook recipe: keep the general lower layers, relearn the task-specific ones);
- ``scratch``: the same network randomly initialised: the no-transfer control.
"""

from __future__ import annotations

import copy
import json
import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .audio import batch_waves
from .encoders import EncoderOutput
from .heads import MISSING, encode_multilabel
from .model import PRIMARY_TASK, CommandClassifier

STRATEGIES = ("frozen", "top-k", "full", "reinit-k", "scratch")
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
    seed: int = 0
    device: str = "auto"
    task_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")

    def to_dict(self) -> dict:
        return asdict(self)


HEAD_ONLY_EPOCHS = 30  # a head on cached features: epochs cost seconds, so train it to convergence
ENCODER_EPOCHS = 4  # strategies that update encoder blocks: a few passes before they overfit


def default_epochs(strategy: str) -> int:
    """Epochs when none are asked for: many for a head alone, few when the encoder trains."""
    return HEAD_ONLY_EPOCHS if strategy in ("frozen", "combined") else ENCODER_EPOCHS


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    n_frozen = frozen_blocks(model, config)
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
        order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
        model.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
                idx = order[start : start + batch_size]
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


class Checkpointer:
    """Saves model + optimizer + loop state each epoch so a crash resumes where it stopped."""

    def __init__(self, directory: Path):
        self.dir = Path(directory) / "checkpoint"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             best_state: dict[str, torch.Tensor], state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        save_file(best_state, str(self.dir / "best.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(self.dir / "model.safetensors"))
        opt = optimizer.state_dict()
        tensors = {f"{i}.{name}": torch.as_tensor(v).cpu().contiguous()
                   for i, s in opt["state"].items() for name, v in s.items()}
        save_file(tensors, str(self.dir / "optimizer.safetensors"))
        groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
        (self.dir / "state.json").write_text(json.dumps({**state, "param_groups": groups}))

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, signature: dict) -> dict | None:
        """Restore the last epoch if a checkpoint of the same run exists; else None."""
        if not (self.dir / "state.json").is_file():
            return None
        state = json.loads((self.dir / "state.json").read_text())
        if state.get("signature") != signature:
            return None
        model.load_state_dict(load_file(str(self.dir / "model.safetensors")))
        tensors = load_file(str(self.dir / "optimizer.safetensors"))
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            i, name = key.split(".", 1)
            per_param.setdefault(int(i), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
        return state


@dataclass
class TrainResult:
    model: CommandClassifier
    history: list[dict]
    best_epoch: int
    resumed_from: int | None


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


def fit(
    model: CommandClassifier,
    train_waves: list[torch.Tensor],
    train_labels: list[dict[str, str]],
    val_waves: list[torch.Tensor],
    val_labels: list[dict[str, str]],
    config: TrainConfig,
    out_dir: Path | None = None,
    train_cache: FeatureCache | None = None,
) -> TrainResult:
    """Train under ``config.strategy``; keep the best validation epoch; resume if interrupted.

    ``train_cache`` (cached strategies only) reuses lower-layer features already computed for
    ``train_waves`` by a model with the same frozen encoder, as a recipe comparing runs does.
    """
    seed_everything(config.seed)
    device = pick_device(config.device)
    model.to(device)
    n_frozen = prepare(model, config)
    cached = n_frozen > 0
    targets = encode_targets(model, train_labels)
    val_targets = encode_targets(model, val_labels)[PRIMARY_TASK]

    if cached:
        if train_cache is None or train_cache.n_frozen != n_frozen:
            train_cache = FeatureCache(model, train_waves, n_frozen, device, desc="caching train")
        val_cache = FeatureCache(model, val_waves, n_frozen, device, desc="caching validation")

        def run_train(idx):
            return forward_cached(model, train_cache, idx, device)

        def run_val(idx):
            return forward_cached(model, val_cache, idx, device)
    else:
        def run_wave_batch(waves, idx):
            batch, lengths = batch_waves([waves[i] for i in idx])
            return model(batch.to(device), lengths.to(device))

        def run_train(idx):
            return run_wave_batch(train_waves, idx)

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

    checkpointer = Checkpointer(out_dir) if out_dir else None
    signature = {"config": config.to_dict(), "n_train": len(train_waves), "tasks": model.tasks}
    state = checkpointer.load(model, optimizer, signature) if checkpointer else None
    start_epoch, best, best_epoch, history, stale = 0, (-1.0, math.inf), -1, [], 0
    best_state = None
    resumed_from = None
    if state is not None:
        start_epoch, best_epoch, history, stale = (state["epoch"] + 1, state["best_epoch"],
                                                  state["history"], state["stale"])
        best = tuple(state["best"])
        resumed_from = state["epoch"]
        best_state = load_file(str(checkpointer.dir / "best.safetensors"))
        with warnings.catch_warnings():  # fast-forwarding the schedule before any step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start_epoch * steps_per_epoch):
                schedule.step()

    for epoch in range(start_epoch, config.epochs):
        if stale >= config.patience:
            break
        model.train()
        batches = length_batches([w.numel() for w in train_waves], config.batch_size,
                                 config.seed * 1000 + epoch)
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch + 1}", leave=False)
        for idx in bar:
            with autocast:
                logits = run_train(idx)
            loss = masked_loss(logits, {t: v[idx] for t, v in targets.items()},
                               config.task_weights, model.heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 5.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        with autocast:
            val_acc, val_loss = (evaluate_accuracy(model, run_val, len(val_waves), val_targets,
                                                   config.batch_size)
                                 if val_waves else (float("nan"), float("nan")))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "val_accuracy": val_acc, "val_loss": val_loss}
        history.append(record)
        tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}  "
                   f"val acc {val_acc:.4f}  val loss {val_loss:.4f}")
        score = (val_acc, -val_loss) if val_waves else (epoch, 0.0)
        if score > (best[0], -best[1]):
            best, best_epoch, stale = (score[0], -score[1]), epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if checkpointer:
            checkpointer.save(model, optimizer, best_state, {
                "signature": signature, "epoch": epoch, "best": list(best),
                "best_epoch": best_epoch, "history": history, "stale": stale})
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, resumed_from)
