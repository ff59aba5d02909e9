"""Median per-clip CPU latency of a Whisper encoder: ``window="clip"``, ``"2s"`` and ``"30s"``.

Single-threaded on purpose: it is the cost of one clip on one core, the unit that matters when
many clips are featurised in parallel. Run: ``python benchmarks/latency.py [encoder-name]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from speechxfer.encoders import build_encoder

CLIP_SECONDS = 1.0  # a typical spoken command
SAMPLE_RATE = 16_000  # Hz
WARMUP_RUNS = 3
REPEATS = {"clip": 20, "2s": 20, "30s": 5}  # 30-s windows are ~25x slower; fewer runs suffice
TARGET_CLIP_MS = 15.0


def median_ms(name: str, window: str, wave: torch.Tensor, repeats: int,
              variant: str = "fp32") -> tuple[float, float]:
    """Median (wall, CPU) time of one forward pass on ``wave`` [1, T], in milliseconds.

    CPU time of this thread is reported too because wall time on a shared machine also counts
    time spent waiting for a core.
    """
    encoder = build_encoder(name, window=window).eval()
    if variant == "int8":
        encoder = encoder.quantized()
    elif variant == "traced":
        encoder = encoder.traced(wave.shape[-1])
    wall, cpu = [], []
    with torch.inference_mode():
        for i in range(WARMUP_RUNS + repeats):
            start, start_cpu = time.perf_counter(), time.thread_time()
            encoder(wave)
            if i >= WARMUP_RUNS:
                wall.append(1000 * (time.perf_counter() - start))
                cpu.append(1000 * (time.thread_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="whisper-tiny.en")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(1, int(CLIP_SECONDS * SAMPLE_RATE), generator=gen)
    results = {w: median_ms(args.name, w, wave, n) for w, n in REPEATS.items()}
    results["clip int8"] = median_ms(args.name, "clip", wave, REPEATS["clip"], "int8")
    results["clip traced"] = median_ms(args.name, "clip", wave, REPEATS["clip"], "traced")
    fp32, int8 = (build_encoder(args.name, window="clip").eval() for _ in range(2))
    with torch.inference_mode():
        a, b = fp32(wave).hidden_states[-1], int8.quantized()(wave).hidden_states[-1]
    cosine = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    print(f"{args.name}, {CLIP_SECONDS:.0f}-s clip, 1 thread, medians after {WARMUP_RUNS} warm-ups")
    print(f"{'window':<10}{'runs':>6}{'wall ms':>10}{'cpu ms':>10}")
    for window, (wall, cpu) in results.items():
        runs = REPEATS.get(window, REPEATS["clip"])
        print(f"{window:<10}{runs:>6}{wall:>10.2f}{cpu:>10.2f}")
    (clip_wall, clip_cpu), (long_wall, long_cpu) = results["clip"], results["30s"]
    print(f"30s / clip ratio: {long_wall / clip_wall:.1f}x wall, {long_cpu / clip_cpu:.1f}x cpu")
    print(f"30s / 2s ratio: {long_wall / results['2s'][0]:.1f}x wall")
    for window in ("clip", "clip int8", "clip traced"):
        verdict = "meets" if results[window][0] < TARGET_CLIP_MS else "misses"
        print(f"{window} {verdict} the {TARGET_CLIP_MS:.0f} ms target (wall)")
    print(f"int8 vs fp32 final hidden states: cosine {cosine:.4f}")


if __name__ == "__main__":
    main()
