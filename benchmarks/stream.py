"""Real-time factor of the stream detector on one CPU thread, with the VAD alone as its peer.

A stream is built the way ``speechxfer eval-stream`` builds it (``streameval.build_stream``) and
fed to a ``Detector`` in 0.1-s blocks, as a microphone callback would; the real-time factor is
processing seconds per stream second (under 1: keeps up; the issue's bar is 0.1). The VAD alone
(silero over every 32-ms frame) is the floor any detector with it pays, however quiet the room.
Run: ``python benchmarks/stream.py MODEL_DIR [--data DIR] [--minutes M]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from speechxfer import load_model
from speechxfer.audio import AudioError
from speechxfer.data import DatasetError
from speechxfer.detect import VAD_FRAME, Detector, SileroVAD
from speechxfer.log import run_script
from speechxfer.recognizer import ModelError
from speechxfer.streameval import CHUNK_S, build_stream

TARGET_RTF = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", default="data/speech_commands")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.minutes < math.inf:  # NaN and inf too: a traceback after the model loaded
        parser.error(f"--minutes must be positive and finite, got {args.minutes}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    torch.set_num_threads(1)
    try:  # the model first: a wrong folder is said before minutes of stream are built
        model = load_model(args.model)
        built = build_stream(args.data, args.minutes, args.seed)
    except (ModelError, DatasetError, AudioError) as err:
        raise SystemExit(f"stream.py: {err}") from None
    seconds = len(built.audio) / built.rate
    audio = torch.from_numpy(built.audio)

    vad = SileroVAD()
    began, cpu = time.perf_counter(), time.process_time()
    for at in range(0, len(audio) - VAD_FRAME + 1, VAD_FRAME):
        vad(audio[at: at + VAD_FRAME])
    vad_alone = (time.perf_counter() - began) / seconds
    vad_cpu = (time.process_time() - cpu) / seconds

    detector = Detector(model, sample_rate=built.rate, vad=vad, record=True)
    step = int(CHUNK_S * built.rate)
    events = []
    for at in range(0, len(built.audio), step):
        events += detector.feed(built.audio[at: at + step])
    events += detector.flush()
    rtf = detector.compute_s / seconds

    print(f"stream: {seconds / 60:.1f} min from {args.data} (seed {args.seed}), "
          f"{len(built.spans)} clips, {len(detector.segments)} utterances classified, "
          f"{len(events)} events; 1 torch thread")
    print("| what | real-time factor |")
    print("|---|---|")
    print(f"| VAD alone (silero, every 32-ms frame) | {vad_alone:.4f} (CPU {vad_cpu:.4f}) |")
    print(f"| detector: VAD part | {detector.vad_s / seconds:.4f} |")
    print(f"| detector: model part | {detector.model_s / seconds:.4f} |")
    print(f"| **detector, all** | **{rtf:.4f}** (target <= {TARGET_RTF}) |")
    print(f"| detector, all, in CPU seconds of this process | {detector.cpu_s / seconds:.4f} |")


if __name__ == "__main__":
    run_script(main)
