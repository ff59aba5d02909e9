"""On a CUDA GPU (skipped elsewhere; ``benchmarks/gpu_check.sh`` runs them): training with bf16
autocast learns, and a model trained there predicts as it does on the CPU and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechxfer import CommandClassifier, load_model
from speechxfer.audio import load
from speechxfer.encoders import build_encoder
from speechxfer.train import TrainConfig, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
DIGITS = ("1", "4", "7")


def test_trained_on_the_gpu_it_predicts_as_on_the_cpu_and_exports(fsdd, tmp_path):
    keys = [(d, s, t) for s in ("jackson", "george") for d in DIGITS for t in range(5)]
    waves = [load(fsdd / f"{d}_{s}_{t}.wav") for d, s, t in keys]
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"),
                              {"command": list(DIGITS)})
    fit(model, waves, [{"command": d} for d, _, _ in keys], [], [],
        TrainConfig(strategy="top-k", k=1, epochs=3, device="cuda"))
    assert next(model.parameters()).is_cuda
    model.save(tmp_path / "model")
    test = [load(fsdd / f"{d}_theo_{t}.wav") for d in DIGITS for t in range(5)]
    gpu, cpu = load_model(tmp_path / "model", "cuda"), load_model(tmp_path / "model", "cpu")
    p_gpu, p_cpu = gpu.predict_proba(test), cpu.predict_proba(test)
    assert np.abs(p_gpu - p_cpu).max() < 1e-3
    accuracy = np.mean([DIGITS[i] == d for i, d in zip(p_gpu.argmax(1), [d for d in DIGITS
                                                                          for _ in range(5)])])
    assert accuracy > 0.6
    from speechxfer.export import export

    _, parity = export(gpu, tmp_path / "onnx", check_waves=test)
    assert parity.label_agreement == 1.0
