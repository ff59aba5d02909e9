"""Training in several processes (torchrun's environment, gloo on the CPU) takes the steps one
process takes on the same global batches: the same weights, to float rounding."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from speechxfer import CommandClassifier, train
from speechxfer.audio import load
from speechxfer.encoders import build_encoder
from speechxfer.train import TrainConfig, fit, shard, trained_state

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
KEYS = [(d, s, t) for d in "147" for s in ("jackson", "george") for t in range(2)]
# 12 clips in global batches of 5: shards of 3 and 2 clips, and a last batch of 2 (1 + 1)
CONFIG = TrainConfig(strategy="frozen", epochs=3, batch_size=5, device="cpu")


def train_head() -> dict[str, torch.Tensor]:
    """A frozen random ds-cnn with a dropout-free head, trained on real clips: its head."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                              {"command": ["1", "4", "7"]}, dropout=0.0)
    waves = [load(FSDD / f"{d}_{s}_{t}.wav") for d, s, t in KEYS]
    fit(model, waves, [{"command": d} for d, _, _ in KEYS], [], [], CONFIG)
    return trained_state(model)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    seen = []  # clips this rank ran the head on: its shards only, half of each global batch
    forward = train.forward_cached
    train.forward_cached = lambda model, cache, idx, device: seen.append(len(idx)) or forward(
        model, cache, idx, device)
    state = train_head()
    save_file(state, f"{out}/rank{rank}.safetensors")
    Path(out, f"rank{rank}.seen").write_text(str(sum(seen)))
    torch.distributed.destroy_process_group()


def _combined_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    """One torchrun rank of the default (combined) strategy: every rank trains and chooses the
    prior's weight, rank 0 alone saves; each leaves its summary's figures in ``out``'s parent."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from speechxfer.jobs import train_job

    summary = train_job(data, strategy="combined", test_speakers=["theo"], epochs=2, out=out,
                        device="cpu")
    Path(out).with_name(f"rank{rank}.json").write_text(json.dumps(
        {"strategy": summary["strategy"], "test": summary["test"]}))
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_cover_the_batch_and_weigh_to_its_mean():
    idx = [4, 8, 15, 16, 23]
    parts = [shard(idx, r, 2) for r in range(2)]
    assert sorted(i for p, _ in parts for i in p) == sorted(idx)
    assert [s for _, s in parts] == [3 * 2 / 5, 2 * 2 / 5]
    assert shard([7], 1, 2) == ([7], 0.0)  # an idle rank still takes part, adding nothing


@pytest.mark.slow
def test_two_gloo_processes_reach_the_weights_of_one(tmp_path):
    assert "WORLD_SIZE" not in os.environ
    single = train_head()
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    seen = [int((tmp_path / f"rank{r}.seen").read_text()) for r in range(2)]
    assert seen == [(3 + 3 + 1) * CONFIG.epochs, (2 + 2 + 1) * CONFIG.epochs]  # vs 12 per epoch
    assert set(ranks[0]) == set(single) and single
    for name, value in single.items():
        assert torch.allclose(ranks[0][name], ranks[1][name], atol=1e-6), name
        assert torch.allclose(ranks[0][name], value, atol=1e-5), (
            name, float((ranks[0][name] - value).abs().max()))
    torch.manual_seed(0)  # training moved the head: the agreement is not that of untouched weights
    start = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                              {"command": ["1", "4", "7"]}, dropout=0.0).state_dict()
    assert max(float((single[k] - start[k]).abs().max()) for k in single) > 1e-3


@pytest.mark.slow
def test_two_gloo_processes_train_and_save_the_combined_strategy(make_fsdd, tmp_path):
    """Every rank uses the head it trained (no rank above 0 reloads it from a folder only rank 0
    writes) and the validation clips it read; rank 0 saves a model folder that loads."""
    from speechxfer import load_model
    from speechxfer.decoder.combined import CombinedRecognizer

    assert "WORLD_SIZE" not in os.environ
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4"), 6)
    out = tmp_path / "run" / "model"
    out.parent.mkdir()
    mp.spawn(_combined_worker, args=(2, free_port(), str(data), str(out)), nprocs=2,
             join=True)  # raises unless both ranks exit 0
    ranks = [json.loads((out.parent / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["strategy"]["prior_weight"]["n"] > 0  # the weight was chosen on validation
    assert ranks[0]["strategy"] == ranks[1]["strategy"]  # the same head and weight on each rank
    assert sorted(p.name for p in out.parent.iterdir()) == ["model", "rank0.json", "rank1.json"]
    system = load_model(out)
    assert isinstance(system, CombinedRecognizer) and system.labels == ["1", "4"]
    assert system.weight == ranks[0]["strategy"]["prior_weight"]["weight"]
    assert (out / "head" / "config.json").is_file() and (out / "zero_shot").is_dir()
    assert system.predict(data / "4_theo_0.wav").label in ("1", "4")


def test_checkpoint_keeps_every_ranks_random_generators(tmp_path):
    """Rank 0 stores the other ranks' generators beside its own, and hands each back on resume:
    their dropout masks differ from rank 0's, so a resumed run needs every rank's own state."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.manual_seed(1)
    peer = train.rng_state()  # what rank 1 would send
    expected = torch.rand(4)  # rank 1's next draws
    torch.manual_seed(0)
    ours = train.rng_state()
    loop = {"signature": {"s": 1}, "epoch": 0, "best": [1.0, 0.0], "best_epoch": 1,
            "history": [], "stale": 0}
    train.Checkpointer(tmp_path / "ck").save(model, optimizer, trained_state(model), loop, [peer])
    torch.manual_seed(5)
    state = train.Checkpointer(tmp_path / "ck").load(model, optimizer, {"s": 1})
    assert torch.equal(torch.get_rng_state(), ours[0]["torch"])  # rank 0's own, not the peer's
    (tensors, meta), = state["peer_rng"]
    train.set_rng_state(tensors, meta)
    assert torch.equal(torch.rand(4), expected)
