"""The `speechxfer` command: argument parsing only; every command calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .audio import AudioError
from .data import DatasetError
from .encoders.registry import MissingWeightsError
from .jobs import DEFAULT_AUGMENT_COPIES, DEFAULT_STRATEGY
from .log import LOGGER, NORMAL, QUIET, VERBOSE, configure
from .model import ModelError
from .openset import DEFAULT_MAX_FALSE_ACCEPT
from .stream import MicrophoneError

COMMAND_ERRORS = (AudioError, DatasetError, ModelError, ValueError, FileNotFoundError,
                  MissingWeightsError, MicrophoneError)


def _bounded(cast, low: float, high: float | None = None):
    """An argparse ``type=``: the number, or an error naming the range (exit 2 at parse time)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {cast.__name__}") from None
        if not (low <= value and (high is None or value <= high)):  # also rejects NaN
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: must be {span}")
        return value

    return parse


def _device(name: str) -> str:
    """Check the device exists before any data is read; the library says what is wrong."""
    from .train import pick_device

    try:
        pick_device(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def _commands(text: str) -> list[str]:
    """``--commands yes,no,up``: the words, or an error at parse time."""
    from .vocab import parse_commands

    try:
        return parse_commands(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _out_dir(text: str) -> Path:
    """Refuse an ``--out`` that is an existing file now, not after training."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    return path


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
        commands=args.commands, shots=args.shots, max_false_accept=args.max_false_accept,
        augment=args.augment, noise=args.noise, augment_copies=args.augment_copies,
    )
    test = summary.get("test")
    if test:
        print(f"held-out speakers {summary['test_speakers']}: accuracy {test['accuracy']:.4f}, "
              f"macro-F1 {test['macro_f1']:.4f} on {test['n']} clips")
        _print_open_set(test)
        _print_tasks(test.get("tasks", {}))
    if summary["skipped"]:
        LOGGER.info("%d bad clip(s) skipped; listed in %s/train_summary.json",
                    len(summary["skipped"]), args.out)
    print(f"model saved to {args.out} (trained in {summary['train_seconds']:.0f} s)")


def _print_open_set(report: dict) -> None:
    """Command recall and false accepts, when the report has them."""
    rates = report.get("open_set")
    if not rates:
        return
    figures = "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in rates.items()
                        if v is not None)
    threshold = report.get("threshold")
    print(f"  open set: {figures}" + ("" if threshold is None else
                                      f"  (rejection threshold {threshold:.4f})"))


def _print_tasks(tasks: dict[str, dict]) -> None:
    for task, m in tasks.items():
        figures = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        print(f"  {task} ({m['kind']}, {m['n']} labelled clips): {figures}")


def _eval(args: argparse.Namespace) -> None:
    from .jobs import eval_job

    report = eval_job(args.model, args.data, args.report)
    if args.json:
        print(json.dumps({k: report[k] for k in ("accuracy", "macro_f1", "n", "open_set",
                                                  "threshold", "per_class", "confusion",
                                                  "labels", "skipped", "tasks")
                          if k in report}))
    else:
        print(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
              f"on {report['n']} clips")
        _print_open_set(report)
        _print_tasks(report.get("tasks", {}))
    if report["skipped"]:
        LOGGER.info("%d bad clip(s) skipped", len(report["skipped"]))
    if args.report:
        LOGGER.info("report written to %s/eval_report.md", args.report)


def _predict(args: argparse.Namespace) -> int:
    """Label every file, then exit 1 if any of them could not be read."""
    from .model import load_model

    system = load_model(args.model)
    failed = 0
    for path in args.files:
        try:
            pred = system.predict(path)
        except AudioError as err:
            failed += 1
            print(json.dumps({"file": path, "error": str(err)}) if args.json else f"error: {err}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": path, **pred.to_dict()}))
        else:
            others = [f"{t}={max(d, key=d.get)}" if d else t for t, d in pred.tasks.items()
                      if t != "command"]
            print("\t".join([path, pred.label, f"{pred.probability:.3f}", *others]))
    if failed:
        print(f"{failed} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _stream(args: argparse.Namespace) -> int:
    from .model import load_model
    from .stream import CommandStream, file_chunks, microphone_chunks, stream_chunks

    if args.file:
        rate, chunks = file_chunks(args.file)  # a bad file fails before the model loads
        system = load_model(args.model)
    else:
        system = load_model(args.model)
        rate = system.sample_rate
        chunks = microphone_chunks(rate)
        print("listening; Ctrl-C stops", file=sys.stderr)
    stream = CommandStream(system, rate, threshold=args.threshold)
    interrupted = False
    try:
        for event in stream_chunks(stream, chunks):
            print(f"{event.start:7.2f}-{event.end:6.2f} s\t{event.label}\t{event.probability:.3f}",
                  flush=True)
    except KeyboardInterrupt:  # how a microphone session ends; a file is left unfinished
        interrupted = bool(args.file)
    source = args.file or "microphone input"
    if stream.repaired:
        LOGGER.warning("%d non-finite sample(s) in %s set to 0", stream.repaired, source)
    if stream.dropped:
        LOGGER.info("%d sustained sound(s) in %s taken as background noise", stream.dropped,
                    source)
    return 130 if interrupted else 0


def _info(args: argparse.Namespace) -> None:
    from .info import collect, format_text

    info = collect()
    print(json.dumps(info) if args.json else format_text(info))


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    """-q/-v, accepted before the command and after it (there the default must not override)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=QUIET,
                       default=default, help="results and errors only: no progress, no epochs")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=VERBOSE,
                       default=default, help="more detail (e.g. per-epoch timing)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechxfer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"speechxfer {__version__}")
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
    t.add_argument("--k", type=_bounded(int, 1), default=2,
                   help="blocks tuned (top-k) or re-initialised")
    t.add_argument("--per-class", type=_bounded(int, 1), help="keep N clips per label per speaker")
    t.add_argument("--epochs", type=_bounded(int, 1),
                   help="default: 30 for a head on a frozen encoder, 4 when encoder blocks train")
    t.add_argument("--seed", type=_bounded(int, 0, 2**32 - 1), default=0)
    t.add_argument("--out", type=_out_dir, default=Path("runs/default"))
    t.add_argument("--test-speaker", action="append",
                   help="hold out this speaker for testing (repeatable; default for the "
                        "bundled data: theo)")
    t.add_argument("--task", action="append",
                   help="task to learn, NAME[:single|multi|embedding] (repeatable; command is "
                        "always learned)")
    t.add_argument("--pooling", default="mean", choices=("mean", "attentive"))
    t.add_argument("--layer", type=int, help="use one hidden state instead of a learned mix")
    t.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda[:N]")
    t.add_argument("--commands", type=_commands, metavar="WORD,WORD,...",
                   help="these words are the classes; every other word becomes _unknown_, the "
                        "clips of _silence_/ become _silence_ (default: every folder a label)")
    t.add_argument("--shots", type=_bounded(int, 1), metavar="N",
                   help="keep N training clips per command in total, from as many speakers as "
                        "possible (unknown and silence clips are kept)")
    t.add_argument("--max-false-accept", type=_bounded(float, 0.0, 1.0),
                   default=DEFAULT_MAX_FALSE_ACCEPT, metavar="RATE",
                   help="rejection threshold: at most this fraction of the validation speakers' "
                        "unknown words and silence taken for a command (with _unknown_/_silence_"
                        " labels; default %(default)s)")
    t.add_argument("--augment", action="store_true",
                   help="train on seeded augmented copies too: speed, shift, simulated rooms, "
                        "noise from the training _silence_ clips, --noise and synthetic")
    t.add_argument("--noise", type=Path, metavar="DIR",
                   help="with --augment: also mix in the audio files of this folder")
    t.add_argument("--augment-copies", type=_bounded(int, 1), metavar="K",
                   help=f"with --augment: augmented copies per training clip "
                        f"(default {DEFAULT_AUGMENT_COPIES})")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="score every clip under a dataset with a saved model")
    e.add_argument("model", type=Path)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (diagnostics go to stderr)")
    e.add_argument("--report", type=_out_dir, metavar="DIR",
                   help="write eval_report.json/.md/_confusion.png into DIR (default: none)")
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="label and probability for each file")
    p.add_argument("model", type=Path)
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_predict)

    s = sub.add_parser("stream", help="recognise commands in a live microphone or a long file")
    s.add_argument("model", type=Path)
    s.add_argument("file", nargs="?", help="read this file in 100-ms blocks instead of the mic")
    s.add_argument("--threshold", type=_bounded(float, 0.0, 1.0), default=0.5,
                   help="drop utterances whose best probability is lower")
    s.set_defaults(func=_stream)

    i = sub.add_parser("info", help="versions, devices, installed weights: paste into bug reports")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_info)

    _add_verbosity(parser, NORMAL)
    for command in sub.choices.values():
        _add_verbosity(command, argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.verbosity)
    try:
        return args.func(args) or 0
    except COMMAND_ERRORS as err:
        print(f"speechxfer {args.command}: error: {err}", file=sys.stderr)
        return 2
