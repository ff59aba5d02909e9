"""Our Whisper-tiny command model against Hugging Face ``WhisperForAudioClassification`` built
from the same encoder weights: fine-tuning step time, clips/s, peak memory, inference latency.

Same clips (real FSDD recordings), same machine, same batch, every encoder weight trainable in
both (full fine-tuning, AdamW). Ours reads the default 2-s window; transformers' model needs
Whisper's full 30-s input (3000 mel frames), which is what it costs a user who picks it.
Nothing is downloaded: the HF model is built from a config and loaded with our state dict
(``hf_state``); its features come from its own ``WhisperFeatureExtractor`` (no files needed).
Each model runs in its own process, so its peak resident memory is its own.

Run: ``python benchmarks/hf_compare.py [--steps N] [--batch N] [--threads N]`` (needs
``pip install transformers``). Accuracy after training is not measured here: a 30-s-window
fine-tuning run on this CPU would take hours; the printed ratios are per step and per clip.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch

from speechxfer.audio import SAMPLE_RATE, batch_waves, load
from speechxfer.log import run_script

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
LABELS = [str(d) for d in range(10)]
WARMUP = 1
MAX_BATCH = 500  # clips(): jackson's 50 takes of each digit


def clips(n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    keys = [(d, t) for t in range(n) for d in LABELS][:n]
    return [load(FSDD / f"{d}_jackson_{t}.wav") for d, t in keys], torch.tensor(
        [int(d) for d, _ in keys])


def hf_state(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our WhisperEncoder's tensors under transformers' names (same layout as openai/whisper)."""
    names = {"attn_ln": "self_attn_layer_norm", "attn.query": "self_attn.q_proj",
             "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
             "attn.out": "self_attn.out_proj", "mlp_ln": "final_layer_norm", "mlp.0": "fc1",
             "mlp.2": "fc2"}
    out = {}
    for key, value in encoder_state.items():
        if key == "positional_embedding":
            out["encoder.embed_positions.weight"] = value
            continue
        if key.startswith("ln_post."):
            out["encoder.layer_norm." + key.removeprefix("ln_post.")] = value
            continue
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            for ours, theirs in names.items():
                if rest.startswith(ours + "."):
                    rest = theirs + rest[len(ours):]
                    break
            out[f"encoder.layers.{i}.{rest}"] = value
            continue
        out["encoder." + key] = value
    return out


def build(which: str):
    """(model, run(waves) -> logits) for ``ours`` or ``hf``, from the same encoder weights."""
    from speechxfer import CommandClassifier
    from speechxfer.encoders import build_encoder

    torch.manual_seed(0)
    ours = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"), {"command": LABELS})
    if which == "ours":
        def run(waves):
            batch, lengths = batch_waves(waves)
            return ours(batch, lengths)["command"]

        return ours, run
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    dims = ours.encoder.dims
    config = WhisperConfig(d_model=dims.d_model, encoder_layers=dims.n_layers,
                           encoder_attention_heads=dims.n_heads, decoder_layers=dims.n_layers,
                           decoder_attention_heads=dims.n_heads, num_mel_bins=dims.n_mels,
                           vocab_size=dims.n_vocab, num_labels=len(LABELS),
                           use_weighted_layer_sum=True)  # the same layer mix as our head
    model = WhisperForAudioClassification(config)
    missing, unexpected = model.load_state_dict(hf_state(ours.encoder.state_dict()), strict=False)
    assert not unexpected and all(not k.startswith("encoder.") for k in missing), (
        missing, unexpected)
    extractor = WhisperFeatureExtractor(feature_size=dims.n_mels)

    def run(waves):
        feats = extractor([w.numpy() for w in waves], sampling_rate=SAMPLE_RATE,
                          return_tensors="pt").input_features
        return model(input_features=feats).logits

    return model, run


def measure(which: str, steps: int, batch: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    model, run = build(which)
    waves, target = clips(batch)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step_s = []
    model.train()
    for i in range(WARMUP + steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(run(waves), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= WARMUP:
            step_s.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.eval()
    torch.set_num_threads(1)
    latency = []
    with torch.inference_mode():
        for i in range(WARMUP + 10):
            start = time.perf_counter()
            run(waves[:1])
            if i >= WARMUP:
                latency.append(1000 * (time.perf_counter() - start))
    queue.put({"step_s": statistics.median(step_s), "clips_per_s": batch / statistics.median(step_s),
               "train_peak_mb": (peak - base) / 1024, "latency_ms": statistics.median(latency)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    for name, value, most in (("steps", args.steps, None), ("batch", args.batch, MAX_BATCH),
                              ("threads", args.threads, None)):
        if value < 1 or (most is not None and value > most):
            parser.error(f"--{name} must be 1{f'..{most}' if most else ' or more'}, got {value}")
    results = {}
    ctx = mp.get_context("spawn")
    for which in ("ours", "hf"):
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(which, args.steps, args.batch, args.threads, queue))
        proc.start()
        proc.join()  # the result is one small dict: the child's put never blocks its exit
        if proc.exitcode != 0:  # queue.get() would wait for ever
            raise SystemExit(f"hf_compare.py: measuring {which} failed (exit code "
                             f"{proc.exitcode}); its error is above")
        results[which] = queue.get()
    print(f"full fine-tuning, batch {args.batch} real 1-s-or-shorter clips, {args.threads} "
          f"thread(s), median of {args.steps} steps; latency: 1 clip, 1 thread, median of 10")
    print(f"{'':<28}{'ours (2-s window)':>20}{'transformers (30 s)':>22}{'ratio':>8}")
    rows = [("training step (s)", "step_s", "{:.3f}"), ("clips/s", "clips_per_s", "{:.1f}"),
            ("training peak memory (MB)", "train_peak_mb", "{:.0f}"),
            ("inference latency (ms)", "latency_ms", "{:.1f}")]
    for name, key, fmt in rows:
        a, b = results["ours"][key], results["hf"][key]
        ratio = a / b if key == "clips_per_s" else b / a
        print(f"{name:<28}{fmt.format(a):>20}{fmt.format(b):>22}{ratio:>7.1f}x")
    print("ratio: how many times better ours is (>1: ours faster / smaller)")


if __name__ == "__main__":
    run_script(main)
