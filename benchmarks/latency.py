"""Median per-clip CPU latency of a Whisper encoder: ``window="clip"``, ``"2s"`` and ``"30s"``.

Also the clip-mode encoder quantised to int8 and traced (``Encoder.traced``), and a whole
``CommandClassifier`` (encoder + the default layer-mixing head) run eagerly and on the traced
encoder, with the largest difference between their logits.
Single-threaded on purpose: it is the cost of one clip on one core, the unit that matters when
many clips are featurised in parallel. Run: ``python benchmarks/latency.py [encoder-name]``.

``--model DIR`` (a saved system, e.g. the default ``runs/default``) adds the whole library path,
``predict`` on a 1-s clip, for the system run by torch, exported to ONNX (fp32 and int8), as
``load_model`` opens it (the fast path of a combined system's folder) and, for a combined
system, its head alone: p50/p99 wall and CPU time, and each path's accuracy on the held-out
speakers the system was tested on (``--data DIR``: on those clips instead). ``--only-model``
skips the encoder table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from speechxfer import CommandClassifier
from speechxfer.audio import SAMPLE_RATE
from speechxfer.encoders import build_encoder
from speechxfer.log import run_script

CLIP_SECONDS = 1.0  # a typical spoken command
WARMUP_RUNS = 3
REPEATS = {"clip": 20, "2s": 20, "30s": 5}  # 30-s windows cost far more per run; fewer runs suffice
TARGET_CLIP_MS = 15.0


def encoder_run(name: str, window: str, wave: torch.Tensor,
                variant: str = "fp32") -> Callable[[torch.Tensor], object]:
    encoder = build_encoder(name, window=window).eval()
    if variant == "int8":
        return encoder.quantized()
    if variant == "traced":
        return encoder.traced(wave.shape[-1])
    return encoder


def classifier_runs(name: str, wave: torch.Tensor) -> dict[str, Callable[[torch.Tensor], object]]:
    """A clip-mode classifier with the default head (all layers mixed), eager and traced."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder(name, window="clip"),
                              {"command": [str(d) for d in range(10)]}).eval()
    traced = model.encoder.traced(wave.shape[-1])
    lengths = torch.tensor([wave.shape[-1]])
    return {"classifier": lambda w: model(w, lengths)["command"],
            "classifier traced": lambda w: model.heads_forward(traced(w))["command"]}


def median_ms(run: Callable[[torch.Tensor], object], wave: torch.Tensor,
              repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) time of ``run(wave)`` on ``wave`` [1, T], in milliseconds.

    CPU time of this thread is reported too because wall time on a shared machine also counts
    time spent waiting for a core.
    """
    wall, cpu = [], []
    with torch.inference_mode():
        for i in range(WARMUP_RUNS + repeats):
            start, start_cpu = time.perf_counter(), time.thread_time()
            run(wave)
            if i >= WARMUP_RUNS:
                wall.append(1000 * (time.perf_counter() - start))
                cpu.append(1000 * (time.thread_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu)


SYSTEM_REPEATS = 50  # predict calls timed per path (p99 of 50 is the second-worst call)


def percentiles_ms(run: Callable[[], object], repeats: int = SYSTEM_REPEATS) -> dict[str, float]:
    """p50/p99 wall and p50 CPU (this thread) milliseconds of ``run()`` after warm-ups."""
    wall, cpu = [], []
    for i in range(WARMUP_RUNS + repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        run()
        if i >= WARMUP_RUNS:
            wall.append(1000 * (time.perf_counter() - start))
            cpu.append(1000 * (time.thread_time() - start_cpu))
    return {"p50": float(np.percentile(wall, 50)), "p99": float(np.percentile(wall, 99)),
            "cpu_p50": float(np.percentile(cpu, 50))}


def held_out_clips(system, folder: Path | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """Every clip of ``folder``, or else those of the speakers the system was tested on (its
    config's data entry); a model trained on every speaker needs ``folder``."""
    from speechxfer.data import load_dataset
    from speechxfer.jobs import read_clips

    if folder is not None:
        clips = load_dataset(folder).clips
    else:
        data = system.info.get("data", {})
        speakers = set(data.get("test_speakers") or [])
        if not speakers:
            raise SystemExit("the model was trained on every speaker of its data: pass --data DIR "
                             "(clips of speakers it never heard) for the accuracy column")
        clips = [c for c in load_dataset(data["data"]).clips if c.speaker in speakers]
    waves, kept, _ = read_clips(clips, SAMPLE_RATE, "held-out")
    return waves, [c.label for c in kept]


def system_paths(model_dir: Path, work: Path) -> dict[str, object]:
    """The saved system under torch, exported to ONNX fp32 and int8, and as ``load_model``
    opens it (a combined system's fast path, when its folder has one); a combined system's
    head alone too: what the decoder prior costs and brings."""
    from speechxfer import load_model
    from speechxfer.decoder.combined import CombinedRecognizer
    from speechxfer.export import export

    picked = load_model(model_dir)
    system = load_model(model_dir)
    if isinstance(system, CombinedRecognizer):
        system.fast = None  # the torch path
    paths = {"torch eager": system}
    for int8 in (False, True):
        name = f"onnx {'int8' if int8 else 'fp32'}"
        paths[name] = load_model(export(system, work / name.replace(" ", "-"), int8)[0])
    if getattr(picked, "fast", None) is not None:
        paths["load_model: fast path"] = picked
    if isinstance(system, CombinedRecognizer):
        paths["head only, torch"] = system.head
        paths["head only, onnx int8"] = load_model(
            export(system.head, work / "head-int8", int8=True)[0])
    return paths


def model_report(model_dir: Path, folder: Path | None = None) -> None:
    """Latency of ``predict`` on a 1-s clip and held-out accuracy of each path of a system."""
    gen = torch.Generator().manual_seed(1)
    samples = (0.1 * torch.randn(int(CLIP_SECONDS * SAMPLE_RATE), generator=gen)).numpy()
    with tempfile.TemporaryDirectory() as work:
        paths = system_paths(model_dir, Path(work))
        if "load_model: fast path" not in paths:
            print(f"{model_dir} has no fast path (speechxfer export {model_dir} --fast writes it)")
        waves, truth = held_out_clips(paths["torch eager"], folder)
        reference = paths["torch eager"].predict_proba(waves)
        print(f"\n{model_dir}: predict() on a {CLIP_SECONDS:.0f}-s clip, 1 thread, "
              f"{SYSTEM_REPEATS} calls; accuracy on {len(truth)} "
              f"{'held-out clips' if folder is None else f'clips of {folder}'}")
        print(f"{'path':<24}{'p50 ms':>8}{'p99 ms':>8}{'cpu p50':>9}{'accuracy':>10}"
              f"{'agree':>8}{'max dp':>10}")
        for name, system in paths.items():
            with torch.inference_mode():
                times = percentiles_ms(lambda s=system: s.predict(samples, SAMPLE_RATE))
                probs = system.predict_proba(waves)
            labels = [p.label for p in system.predictions(probs)]
            accuracy = float(np.mean([a == b for a, b in zip(labels, truth)]))
            agree = float((probs.argmax(1) == reference.argmax(1)).mean())
            gap = float(np.abs(probs - reference).max())
            verdict = "/".join("meets" if times[k] <= TARGET_CLIP_MS else "misses"
                               for k in ("p50", "cpu_p50"))  # wall counts waits on a busy machine
            print(f"{name:<24}{times['p50']:>8.1f}{times['p99']:>8.1f}{times['cpu_p50']:>9.1f}"
                  f"{accuracy:>10.4f}{agree:>8.4f}{gap:>10.2e}  {verdict} {TARGET_CLIP_MS:.0f} ms (wall/cpu)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="whisper-tiny.en")
    parser.add_argument("--model", type=Path, help="a saved system, e.g. runs/default")
    parser.add_argument("--only-model", action="store_true", help="skip the encoder table")
    parser.add_argument("--data", type=Path,
                        help="with --model: score these clips (default: its test speakers')")
    args = parser.parse_args()
    if (args.only_model or args.data) and not args.model:  # else ignored: the encoder table runs
        parser.error(f"{'--only-model' if args.only_model else '--data'} needs --model DIR")
    if args.model:  # a wrong folder, or a kind with no ONNX form (the model table times its
        # exports: a classic one), is said now, not after minutes of the encoder table
        from speechxfer.export import ExportError, _graph_of
        from speechxfer.recognizer import ModelError, load

        try:
            _graph_of(load(args.model))
        except ModelError as err:
            parser.error(str(err))
        except ExportError as err:
            parser.error(f"--model {args.model}: {err}; the model table times its ONNX exports")
    if args.data and not args.data.exists():
        parser.error(f"--data {args.data}: no such file or folder")
    torch.set_num_threads(1)
    if args.model and args.only_model:
        model_report(args.model, args.data)
        return
    gen = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(1, int(CLIP_SECONDS * SAMPLE_RATE), generator=gen)
    results = {w: median_ms(encoder_run(args.name, w, wave), wave, n) for w, n in REPEATS.items()}
    for variant in ("int8", "traced"):
        run = encoder_run(args.name, "clip", wave, variant)
        results[f"clip {variant}"] = median_ms(run, wave, REPEATS["clip"])
    classifier = classifier_runs(args.name, wave)
    for label, run in classifier.items():
        results[label] = median_ms(run, wave, REPEATS["clip"])
    with torch.no_grad():
        logit_gap = float((classifier["classifier"](wave)
                           - classifier["classifier traced"](wave)).abs().max())
    fp32, int8 = (build_encoder(args.name, window="clip").eval() for _ in range(2))
    with torch.inference_mode():
        a, b = fp32(wave).hidden_states[-1], int8.quantized()(wave).hidden_states[-1]
    cosine = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    print(f"{args.name}, {CLIP_SECONDS:.0f}-s clip, 1 thread, medians after {WARMUP_RUNS} warm-ups")
    print(f"{'window':<18}{'runs':>6}{'wall ms':>10}{'cpu ms':>10}")
    for window, (wall, cpu) in results.items():
        runs = REPEATS.get(window, REPEATS["clip"])
        print(f"{window:<18}{runs:>6}{wall:>10.2f}{cpu:>10.2f}")
    (clip_wall, clip_cpu), (long_wall, long_cpu) = results["clip"], results["30s"]
    print(f"30s / clip ratio: {long_wall / clip_wall:.1f}x wall, {long_cpu / clip_cpu:.1f}x cpu")
    print(f"30s / 2s ratio: {long_wall / results['2s'][0]:.1f}x wall")
    for window in ("clip", "clip int8", "clip traced", "classifier", "classifier traced"):
        verdict = "meets" if results[window][0] < TARGET_CLIP_MS else "misses"
        print(f"{window} {verdict} the {TARGET_CLIP_MS:.0f} ms target (wall)")
    print(f"int8 vs fp32 final hidden states: cosine {cosine:.4f}")
    print(f"classifier logits, traced vs eager: max difference {logit_gap:.2e}")
    if args.model:
        model_report(args.model, args.data)


if __name__ == "__main__":
    run_script(main)
