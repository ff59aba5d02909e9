"""Zero-shot decoder scoring versus free transcription (and, later, versus fine-tuning).

``measure``: every speaker's clips are unseen (nothing is trained), so all four speakers are
scored. For each window, the same clips go through (a) zero-shot label scoring and
(b) greedy transcription with the same prompt, whose text is mapped to a label; each method
runs its own encoder pass, so the seconds per clip are end to end.

    python recipes/zero_shot_vs_finetune/run.py measure --window clip --takes 10
    python recipes/zero_shot_vs_finetune/run.py measure --window 30s --takes 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from speechxfer.audio import load
from speechxfer.encoders.registry import build_whisper
from speechxfer.zeroshot import ZeroShotRecognizer, text_to_label

ROOT = Path(__file__).resolve().parents[2]
FSDD = ROOT / "data" / "fsdd" / "recordings"
RESULTS = Path(__file__).resolve().parent / "results"
SPEAKERS = ("george", "jackson", "theo", "yweweler")
DIGITS = [str(d) for d in range(10)]


def measure(window: str, takes: int, encoder: str) -> dict:
    """Accuracy and seconds per clip of zero-shot scoring and of free transcription."""
    files = [(d, FSDD / f"{d}_{s}_{t}.wav") for s in SPEAKERS for d in DIGITS for t in range(takes)]
    waves, truth = [load(f) for _, f in files], [d for d, _ in files]
    system = ZeroShotRecognizer(DIGITS, encoder=encoder, window=window,
                                model=build_whisper(encoder, window=window))
    start = time.perf_counter()
    probs = system.predict_proba(waves)
    zs_seconds = (time.perf_counter() - start) / len(waves)
    zs_pred = [DIGITS[i] for i in probs.argmax(1)]
    start = time.perf_counter()
    texts = system.transcribe(waves)
    tr_seconds = (time.perf_counter() - start) / len(waves)
    tr_pred = [text_to_label(t, system.aliases) for t in texts]

    def accuracy(pred: list[str | None]) -> float:
        return sum(p == t for p, t in zip(pred, truth)) / len(truth)

    return {
        "encoder": encoder, "window": window, "takes_per_digit_per_speaker": takes,
        "n": len(waves), "speakers": list(SPEAKERS), "threads": torch.get_num_threads(),
        "prompt": system.prompt,
        "zero_shot": {"accuracy": accuracy(zs_pred), "seconds_per_clip": zs_seconds},
        "transcription": {"accuracy": accuracy(tr_pred), "seconds_per_clip": tr_seconds,
                          "unmapped": sum(p is None for p in tr_pred),
                          "examples": sorted(set(texts))[:20]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="zero-shot vs free transcription on all four speakers")
    m.add_argument("--window", default="2s", help="clip, 30s or a padded Ns window")
    m.add_argument("--takes", type=int, default=10, help="takes per digit per speaker (max 50)")
    m.add_argument("--encoder", default="whisper-tiny.en")
    m.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args.window, args.takes, args.encoder)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"measure_{args.encoder}_{args.window}_takes{args.takes}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("window", "n", "zero_shot")}))
    print(json.dumps({k: v for k, v in result["transcription"].items() if k != "examples"}))


if __name__ == "__main__":
    main()
