"""The `speechxfer` command: argument parsing only; every command calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile as sf

from .audio import AudioError
from .data import DatasetError
from .jobs import DEFAULT_STRATEGY
from .model import ModelError

COMMAND_ERRORS = (AudioError, DatasetError, ModelError, ValueError, FileNotFoundError)


def _train(args: argparse.Namespace) -> None:
    from .classic import CLASSIC_KINDS
    from .jobs import train_job
    from .train import STRATEGIES
    from .zeroshot import COMBINED_STRATEGY, GENERATIVE_STRATEGY
    from .zeroshot import STRATEGY as ZERO_SHOT

    choices = (*STRATEGIES, ZERO_SHOT, GENERATIVE_STRATEGY, COMBINED_STRATEGY, *CLASSIC_KINDS)
    if args.strategy not in choices:
        raise ValueError(f"unknown strategy {args.strategy!r}; choose from {choices}")
    specs = [spec.partition(":") for spec in args.task or ["command"]]
    if "command" not in [name for name, _, _ in specs]:
        specs.insert(0, ("command", "", ""))
    head_options = {name: {"kind": kind} for name, _, kind in specs if kind}
    summary = train_job(
        data=args.data, encoder=args.encoder, window=args.window, strategy=args.strategy,
        k=args.k, per_class_n=args.per_class, epochs=args.epochs, seed=args.seed, out=args.out,
        test_speakers=args.test_speaker, tasks=tuple(name for name, _, _ in specs),
        pooling=args.pooling, layer=args.layer, device=args.device, head_options=head_options,
    )
    test = summary.get("test")
    if test:
        print(f"held-out speakers {summary['test_speakers']}: accuracy {test['accuracy']:.4f}, "
              f"macro-F1 {test['macro_f1']:.4f} on {test['n']} clips")
        _print_tasks(test.get("tasks", {}))
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} bad clip(s) skipped; listed in {args.out}/train_summary.json")
    print(f"model saved to {args.out} (trained in {summary['train_seconds']:.0f} s)")


def _print_tasks(tasks: dict[str, dict]) -> None:
    for task, m in tasks.items():
        figures = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        print(f"  {task} ({m['kind']}, {m['n']} labelled clips): {figures}")


def _eval(args: argparse.Namespace) -> None:
    from .jobs import eval_job

    report = eval_job(args.model, args.data, None if args.json else args.model)
    if args.json:
        print(json.dumps({k: report[k] for k in ("accuracy", "macro_f1", "n", "per_class",
                                                  "confusion", "labels", "skipped", "tasks")
                          if k in report}))
    else:
        print(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
              f"on {report['n']} clips; report written to {args.model}/eval_report.md")
        _print_tasks(report.get("tasks", {}))


def _predict(args: argparse.Namespace) -> None:
    from .model import load_model

    system = load_model(args.model)
    for path in args.files:
        try:
            pred = system.predict(path)
        except AudioError as err:
            print(json.dumps({"file": path, "error": str(err)}) if args.json else f"error: {err}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": path, **pred.to_dict()}))
        else:
            others = [f"{t}={max(d, key=d.get)}" if d else t for t, d in pred.tasks.items()
                      if t != "command"]
            print("\t".join([path, pred.label, f"{pred.probability:.3f}", *others]))


def _stream(args: argparse.Namespace) -> None:
    from .model import load_model
    from .stream import CommandStream, microphone_chunks, stream_chunks

    system = load_model(args.model)
    if args.file:
        info = sf.info(args.file)
        rate = info.samplerate
        chunks = sf.blocks(args.file, blocksize=rate // 10, dtype="float32")
    else:
        rate = system.sample_rate
        chunks = microphone_chunks(rate)
        print("listening; Ctrl-C stops", file=sys.stderr)
    stream = CommandStream(system, rate, threshold=args.threshold)
    for event in stream_chunks(stream, chunks):
        print(f"{event.start:7.2f}-{event.end:6.2f} s\t{event.label}\t{event.probability:.3f}",
              flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechxfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune an encoder + head, evaluate, save the model")
    t.add_argument("--data", type=Path, help="dataset folder or manifest (default: bundled FSDD)")
    t.add_argument("--encoder", default="whisper-tiny.en")
    t.add_argument("--window",
                   help="Whisper input: 'clip' (positions sliced to the clip) or a fixed padded "
                        "window 'Ns', 1 <= N <= 30 ('30s' is Whisper's own); default 2s")
    t.add_argument("--strategy", default=DEFAULT_STRATEGY,
                   help="frozen | top-k | full | reinit-k | scratch | zero-shot | generative | "
                        "combined | gmm-hmm | dtw | svm (the last three: classic MFCC pipelines)")
    t.add_argument("--k", type=int, default=2, help="blocks tuned (top-k) or re-initialised")
    t.add_argument("--per-class", type=int, help="keep N clips per label per speaker")
    t.add_argument("--epochs", type=int,
                   help="default: 30 for a head on a frozen encoder, 4 when encoder blocks train")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=Path("runs/default"))
    t.add_argument("--test-speaker", action="append",
                   help="hold out this speaker for testing (repeatable; default for the "
                        "bundled data: theo)")
    t.add_argument("--task", action="append",
                   help="task to learn, NAME[:single|multi|embedding] (repeatable; command is "
                        "always learned)")
    t.add_argument("--pooling", default="mean", choices=("mean", "attentive"))
    t.add_argument("--layer", type=int, help="use one hidden state instead of a learned mix")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="score every clip under a dataset with a saved model")
    e.add_argument("model", type=Path)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="label and probability for each file")
    p.add_argument("model", type=Path)
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_predict)

    s = sub.add_parser("stream", help="recognise commands in a live microphone or a long file")
    s.add_argument("model", type=Path)
    s.add_argument("file", nargs="?", help="read this file in 100-ms blocks instead of the mic")
    s.add_argument("--threshold", type=float, default=0.5,
                   help="drop utterances whose best probability is lower")
    s.set_defaults(func=_stream)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except COMMAND_ERRORS as err:
        print(f"speechxfer {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
