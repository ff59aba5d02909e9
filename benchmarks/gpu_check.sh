#!/usr/bin/env bash
# One short check on a machine with a CUDA GPU (run it whenever one is at hand): install, run the
# CUDA tests, then print full fine-tuning clips/s (bf16 autocast, as train.fit runs on a GPU) and
# the per-clip latency of a combined system (head + decoder prior) on the GPU.
# Usage: bash benchmarks/gpu_check.sh   (from anywhere; needs the repository's data/fsdd)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -qq -c .ci/constraints.txt -e '.[dev]'
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
python -m pytest -q -rs -m "slow or not slow" tests/test_cuda.py
python - <<'PY'
import statistics, time
from pathlib import Path

import torch

from speechxfer import CommandClassifier
from speechxfer.audio import batch_waves, load
from speechxfer.decoder.combined import CombinedRecognizer
from speechxfer.decoder.scoring import ZeroShotRecognizer
from speechxfer.encoders import build_encoder

device = torch.device("cuda")
labels = [str(d) for d in range(10)]
fsdd = Path("data/fsdd/recordings")
waves = [load(fsdd / f"{d}_jackson_{t}.wav") for t in range(4) for d in labels][:32]
target = torch.tensor([i % 10 for i in range(len(waves))], device=device)
torch.manual_seed(0)
model = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"), {"command": labels}).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
batch, lengths = (t.to(device) for t in batch_waves(waves))
times = []
for step in range(13):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(batch, lengths)["command"].float(), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    if step >= 3:
        times.append(time.perf_counter() - start)
print(f"{torch.cuda.get_device_name(0)}: full fine-tuning, batch {len(waves)}: "
      f"{len(waves) / statistics.median(times):.0f} clips/s, peak "
      f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
model.eval()
model.info = {"strategy": {"strategy": "frozen"}}
system = CombinedRecognizer(model, ZeroShotRecognizer(labels, device=device), weight=8.0)
clip = waves[0].numpy()
latency = []
for i in range(53):
    torch.cuda.synchronize()
    start = time.perf_counter()
    system.predict(clip, 16_000)
    torch.cuda.synchronize()
    if i >= 3:
        latency.append(1000 * (time.perf_counter() - start))
print(f"combined predict on the GPU: p50 {statistics.median(latency):.1f} ms per clip")
PY
