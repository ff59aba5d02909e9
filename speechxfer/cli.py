"""The `speechxfer` command: argument parsing only; every command calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .audio import AudioError
from .data import DatasetError
from .encoders.registry import MissingWeightsError
from .jobs import DEFAULT_AUGMENT_COPIES, DEFAULT_STRATEGY, JOBS, KEEP
from .log import LOGGER, NORMAL, QUIET, VERBOSE, configure
from .openset import DEFAULT_MAX_FALSE_ACCEPT
from .recognizer import ModelError
from .stream import MicrophoneError

FA_LISTED = 20  # false accepts the eval-stream report prints one by one (the JSON has all)
DEVICE_HELP = ("auto (a CUDA GPU when there is one, else the CPU) | cpu | cuda | cuda:N | mps; "
               "a GPU this machine lacks is an error, not a fall-back to the CPU")
MODEL_HELP = "a model folder (what train, ensemble or export --out wrote)"
COMMAND_ERRORS = (AudioError, DatasetError, ModelError, ValueError, FileNotFoundError,
                  MissingWeightsError, MicrophoneError)


def results_folder(text: str) -> Path:
    """An argparse ``type=`` for a folder results go to: one that is a file is refused at parse
    time, not by the first write after minutes of work."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    return path


def bounded(cast, low: float, high: float | None = None):
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


# numpy's and torch's seed range: the argparse type= of every --seed, the CLI's and the recipes'
SEED = bounded(int, 0, 2**32 - 1)


def add_measurement_options(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options the measuring recipes share, with the CLI's ranges: the open-set bar, the
    seed, torch's CPU threads, and the folder the results go to (default ``results``)."""
    parser.add_argument("--max-false-accept", type=bounded(float, 0.0, 1.0),
                        default=DEFAULT_MAX_FALSE_ACCEPT)
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--threads", type=bounded(int, 1), default=1, help="torch CPU threads")
    parser.add_argument("--out", type=results_folder, default=results)


def _figure(value: float | None, digits: int = 3) -> str:
    """A measured figure for a report line; None (nothing to measure it on) reads "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _device(name: str) -> str:
    """Check the device exists before any data is read; the library says what is wrong."""
    from .train import pick_device

    try:
        pick_device(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def _loaded_on(name: str):
    """The torch device ``--device`` names (``auto``: a GPU when there is one)."""
    from .train import pick_device

    return pick_device(name)


def _commands(text: str) -> list[str]:
    """``--commands yes,no,up``: the words, or an error at parse time."""
    from .vocab import parse_commands

    try:
        return parse_commands(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _head_option(text: str) -> tuple[str, str, object]:
    """``--head-option speaker.layer=0``: (task, option, value); numbers and ``none`` are read
    as such. The head checks the value; the option name is checked here, at parse time."""
    from .model import HEAD_OPTIONS

    target, eq, raw = text.partition("=")
    task, dot, key = target.partition(".")
    if not (eq and dot and task and key):
        raise argparse.ArgumentTypeError(f"{text!r}: write TASK.OPTION=VALUE, e.g. speaker.layer=0")
    if key not in HEAD_OPTIONS - {"kind"}:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown head option {key!r}; choose from "
            f"{', '.join(sorted(HEAD_OPTIONS - {'kind'}))} (the kind comes from --task NAME:KIND)")
    value: object = raw
    if raw.lower() in ("none", "null"):
        value = None
    else:
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
    return task, key, value


def _speeds(text: str) -> tuple[int, ...]:
    """``--speaker-speeds 90,110``: the percentages, or an error at parse time."""
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write whole percentages, e.g. 90,110") from None


def _out_dir(text: str) -> Path:
    """Refuse an ``--out`` that is an existing file now, not after training."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    return path


def _train(args: argparse.Namespace) -> None:
    from .jobs import check_options, train_job

    specs = [spec.partition(":") for spec in args.task or ["command"]]
    names = [name for name, _, _ in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # one head per task: a second kind would silently replace the first
        raise ValueError(f"--task {', '.join(repeated)}: given more than once "
                         f"({', '.join(args.task)}); give each task once, NAME[:KIND]")
    if "command" not in names:
        specs.insert(0, ("command", "", ""))
    head_options = {name: {"kind": kind} for name, _, kind in specs if kind}
    for task, key, value in args.head_option or []:
        if task not in [name for name, _, _ in specs]:
            raise ValueError(f"--head-option {task}.{key}: {task!r} is not a task of this run "
                             "(--task NAME[:KIND])")
        head_options.setdefault(task, {})[key] = value
    check_options(args.strategy, k=args.k, epochs=args.epochs, keep=args.keep, layer=args.layer,
                  pooling=args.pooling, head_options=head_options, window=args.window,
                  encoder=args.encoder)
    summary = train_job(
        data=args.data, encoder=args.encoder, window=args.window, strategy=args.strategy,
        k=args.k, per_class_n=args.per_class, epochs=args.epochs, seed=args.seed, out=args.out,
        test_speakers=args.test_speaker, tasks=tuple(name for name, _, _ in specs),
        pooling=args.pooling, layer=args.layer, device=args.device, head_options=head_options,
        commands=args.commands, shots=args.shots, max_false_accept=args.max_false_accept,
        augment=args.augment, noise=args.noise, augment_copies=args.augment_copies,
        keep=args.keep, speaker_speeds=args.speaker_speeds, negatives=args.negatives or (),
        spell_others=args.spell_others,
    )
    test = summary.get("test")
    if test:
        print(f"held-out speakers {summary['test_speakers']}: accuracy {test['accuracy']:.4f}, "
              f"macro-F1 {test['macro_f1']:.4f} on {test['n']} clips")
        _print_open_set(test)
        _print_tasks(test.get("tasks", {}))
    elif summary.get("held_out_by_speaker"):
        held = summary["held_out_by_speaker"]
        each = ", ".join(f"{s} {a:.3f}" for s, a in held["per_speaker"].items())
        print(f"every speaker trained; as new voices (validation takes, each scored by a head "
              f"trained without its speaker): accuracy {held['accuracy']:.4f} on {held['n']} "
              f"clips ({each})")
    if summary["skipped"]:
        LOGGER.info("%d bad clip(s) skipped; listed in %s/train_summary.json",
                    len(summary["skipped"]), args.out)
    from .train import is_main_process

    if is_main_process():  # torchrun: rank 0 saved it; the other ranks only trained beside it
        print(f"model saved to {args.out} (trained in {summary['train_seconds']:.0f} s)")
        if args.strategy == "combined":
            _write_fast_path(args.out)


def _write_fast_path(model_dir: Path) -> None:
    """The combined system's int8 ONNX fast path beside it, when ONNX is installed here."""
    from .export import ExportError, fast_path_available, write_fast_path

    if not fast_path_available():
        LOGGER.info("no fast path: pip install onnx onnxruntime for the int8 ONNX one")
        return
    try:
        parity = write_fast_path(model_dir)
    except ExportError as err:
        LOGGER.warning("no fast path: %s", err)
        return
    except Exception as err:  # noqa: BLE001 (the model is saved; the fast path is optional)
        LOGGER.warning("no fast path: %s: %s", type(err).__name__, str(err)[:200])
        return
    print(f"fast path (int8 ONNX) written to {model_dir}/fast; {parity.line()}")


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
    """One line a task; the counts (n_known, n_unseen) say over which clips each figure is, and
    a figure that none of them could give is replaced by its ``note``."""
    for task, m in tasks.items():
        figures = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in m.items() if k not in ("kind", "n", "note")
                            and v is not None)
        note = f"  ({m['note']})" if m.get("note") else ""
        print(f"  {task} ({m['kind']}, {m['n']} labelled clips): {figures}{note}")


def _eval(args: argparse.Namespace) -> None:
    from .jobs import eval_job

    report = eval_job(args.model, args.data, args.report, device=args.device)
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
    from .audio import load as load_audio
    from .recognizer import load
    from .voiceprint import scorer_for

    system = load(args.model, _loaded_on(args.device))
    speakers = scorer_for(args.model, system) if args.json else None  # enrolled voiceprints
    failed = 0
    for path in args.files:
        try:
            wave = load_audio(path, system.sample_rate)  # decoded once for label and speaker
            pred = system.predict(wave, system.sample_rate)
            speaker = speakers.identify(wave) if speakers else None
        except AudioError as err:
            failed += 1
            print(json.dumps({"file": path, "error": str(err)}) if args.json else f"error: {err}",
                  file=sys.stdout if args.json else sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": path, **pred.to_dict()}
                             | ({"top": pred.top_dicts(args.top)} if args.top else {})
                             | ({"speaker": speaker} if speaker else {})))
        else:
            best = pred.top(args.top) if args.top else []
            others = [f"{t}={max(d, key=d.get)}" if d else t for t, d in pred.tasks.items()
                      if t != "command"]
            print("\t".join([path, pred.label, f"{pred.probability:.3f}",
                             *(f"{lab}:{p:.3f}" for lab, p in best), *others]))
    if failed:
        print(f"{failed} of {len(args.files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _enroll(args: argparse.Namespace) -> None:
    from .voiceprint import enroll

    prints = enroll(args.model, args.speaker, args.clips, device=_loaded_on(args.device),
                    cohort=args.cohort)
    print(f"enrolled {prints.names[-1]!r} from {len(args.clips)} clip(s) in {args.model}/voiceprints "
          f"({len(prints.names)} speaker(s); embeddings: {prints.source})")


def _eval_speakers(args: argparse.Namespace) -> None:
    from .voiceprint import eval_speakers

    report = eval_speakers(args.model, args.data, k=args.enroll, seed=args.seed,
                           device=_loaded_on(args.device), calibrate=args.calibrate,
                           cohort=args.cohort)
    if args.json:
        print(json.dumps(report))
        return

    print(f"{report['backend']}: EER text-dependent {_figure(report['eer_text_dependent'], 4)}, "
          f"text-independent {_figure(report['eer_text_independent'], 4)}, minDCF(0.01) "
          f"{_figure(report['min_dcf'], 4)}, identification {_figure(report['id_accuracy'], 4)} "
          f"({report['n_trials']} trials, {report['n_speakers']} speakers, k={report['k']})")


def _add_speaker_parsers(sub) -> None:
    n = sub.add_parser("enroll", help="add a speaker's voiceprint to a model folder")
    n.add_argument("model", type=Path, help=MODEL_HELP)
    n.add_argument("--speaker", required=True, help="the name predict --json reports")
    n.add_argument("clips", nargs="+", help="recordings of the speaker (3 or more is best)")
    n.add_argument("--cohort", type=Path, metavar="DIR",
                   help="background speakers whose mean embeddings become the voiceprints' "
                        "score-normalisation cohort (default: the model's own)")
    n.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    n.set_defaults(func=_enroll)
    v = sub.add_parser("eval-speakers", help="speaker verification EER, minDCF and "
                                             "identification on speakers the model never saw")
    v.add_argument("model", help="model folder, or gmm-ubm:BACKGROUND_DIR for the classic "
                                 "MFCC GMM-UBM fitted on that folder's clips")
    v.add_argument("--data", type=Path, required=True,
                   help="clips of speakers (Speech Commands layout, FSDD names, or a manifest)")
    v.add_argument("--enroll", type=bounded(int, 1), default=3, metavar="K",
                   help="enrolment clips per speaker (default %(default)s)")
    v.add_argument("--seed", type=SEED, nargs="+", default=[0],
                   help="enrolment draw(s); several: the figures are their means")
    v.add_argument("--calibrate", action="store_true",
                   help="store, in MODEL/voiceprints, the accept threshold that lets 1%% of "
                        "these trials' impostors through (calibrate on other speakers than "
                        "those you measure on)")
    v.add_argument("--cohort", type=Path, metavar="DIR",
                   help="background speakers (not the scored ones) to S-norm against, for "
                        "either backend; with --calibrate, stored with the threshold")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    v.set_defaults(func=_eval_speakers)


def _info(args: argparse.Namespace) -> None:
    from .info import collect, format_text

    info = collect()
    print(json.dumps(info) if args.json else format_text(info))


def _synth(args: argparse.Namespace) -> None:
    from .synth import SynthConfig, distractors, synthesise

    unknown = distractors(args.unknown_words, args.words, args.seed)
    config = SynthConfig(words=args.words, unknown_words=tuple(unknown), per_word=args.per_word,
                         unknown_clips=args.unknown_clips, seed=args.seed,
                         engines=args.engines, accents=not args.no_accents,
                         perturb=not args.no_perturb, augment=args.augment)
    result = synthesise(config, args.out, args.with_data or ())
    counts = ", ".join(f"{label} {n}" for label, n in result.labels.items())
    print(f"{result.n_clips} clips in {result.out} ({counts}); "
          f"train on them: speechxfer train --data {result.out}")


def _add_synth_parser(sub) -> None:
    from .synth import ENGINES, parse_words

    def words(text: str) -> tuple[str, ...]:
        try:
            return parse_words(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def engines(text: str) -> tuple[str, ...]:
        names = tuple(e.strip() for e in text.split(","))
        if not names or any(e not in ENGINES for e in names):
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(ENGINES)}")
        return names

    y = sub.add_parser("synth", help="synthesise a labelled dataset of words (espeak-ng, Piper)")
    y.add_argument("--words", type=words, required=True, metavar="WORD,WORD,...",
                   help='the command words, e.g. "yes,no,lights on" (a folder each)')
    y.add_argument("--unknown-words", metavar="FILE|N",
                   help="distractor words for _unknown_: a file (one a line) or N words of the "
                        "shipped list (default: none)")
    y.add_argument("--unknown-clips", type=bounded(int, 0), metavar="N",
                   help="_unknown_ clips in all (default: 2 x --per-word)")
    y.add_argument("--out", type=_out_dir, required=True,
                   help="folder for the clips (a folder per word) and their manifest")
    y.add_argument("--per-word", type=bounded(int, 1), default=20, help="clips per word")
    y.add_argument("--seed", type=SEED, default=0,
                   help="draws the voices, rates and distractors: the same seed, the same "
                        "clips (default %(default)s)")
    y.add_argument("--engines", type=engines, default=ENGINES, metavar="espeak,piper",
                   help="text-to-speech engines to voice the words (default: both)")
    y.add_argument("--no-accents", action="store_true",
                   help="espeak-ng's English voices only (no other languages' voices)")
    y.add_argument("--no-perturb", action="store_true",
                   help="every voice at its default rate and pitch, no vocal-tract warp")
    y.add_argument("--augment", action="store_true",
                   help="noise, simulated rooms and shifts on every clip (speechxfer.augment)")
    y.add_argument("--with-data", action="append", type=Path, metavar="PATH",
                   help="list this real dataset's clips in the manifest too (repeatable), so "
                        "--data OUT trains on synthetic and real clips together")
    y.set_defaults(func=_synth)


def _listen(args: argparse.Namespace) -> int:
    from .detect import Detector, detect_chunks
    from .recognizer import load
    from .stream import file_chunks, microphone_chunks

    filler_below = _filler_below(args)
    if args.file:
        rate, chunks = file_chunks(args.file)  # a bad file fails before the model loads
        system = load(args.model, _loaded_on(args.device))
    else:
        system = load(args.model, _loaded_on(args.device))
        rate = system.sample_rate
        chunks = microphone_chunks(rate)
        print("listening; Ctrl-C stops", file=sys.stderr)
    detector = Detector(system, args.threshold, rate, filler_margin=args.filler_margin,
                        filler_below=filler_below, pad_s=args.pad)
    interrupted = False
    try:
        for event in detect_chunks(detector, chunks):
            if args.json:
                print(json.dumps({"label": event.label, "probability": event.probability,
                                  "start": event.start, "end": event.end,
                                  "heard_at": event.heard_at}), flush=True)
            else:
                print(f"{event.start:7.2f}-{event.end:6.2f} s\t{event.label}\t"
                      f"{event.probability:.3f}", flush=True)
    except KeyboardInterrupt:  # how a microphone session ends; a file is left unfinished
        interrupted = bool(args.file)
    except AudioError as err:  # the events heard before it are printed: name the recording
        raise AudioError(args.file or "microphone input", err.problem) from None
    source = args.file or "microphone input"
    if detector.repaired:
        LOGGER.warning("%d non-finite sample(s) in %s set to 0", detector.repaired, source)
    if detector.overlong:
        LOGGER.info("%d utterance(s) in %s too long for a command", detector.overlong, source)
    return 130 if interrupted else 0


class _CommandParser(argparse.ArgumentParser):
    """A command's parser. With ``source`` set (listen, stream) it reads FILE wherever it stands
    among the options: argparse (3.11, 3.12.1, 3.13.0) gives the optional FILE nothing when an
    option comes between it and MODEL (`listen MODEL --json FILE`: "one of the arguments file
    --mic is required"). The intermixed parse, which takes FILE anywhere, refuses a positional
    in a mutually exclusive group, so the choice of FILE or --mic is checked here."""

    source: str | None = None  # "required" (listen) or "optional" (stream: no FILE, the mic)
    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self.source is None or self._inside:  # the intermixed parse calls back in here
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            parsed, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False
        if parsed.file is not None and parsed.mic:
            self.error("argument --mic: not allowed with argument file")
        # an unknown option before FILE leaves FILE among the extras: the caller names them
        if self.source == "required" and parsed.file is None and not parsed.mic and not extras:
            self.error("one of the arguments file --mic is required")
        return parsed, extras


def _add_listen_parser(sub, name: str = "listen") -> None:
    """``listen``, or ``stream``: the same command, where no FILE means the microphone."""
    n = sub.add_parser(name, help="the same as listen (no FILE: the microphone)" if name == "stream"
                       else "print each command heard in a long file or the microphone")
    n.source = "required" if name == "listen" else "optional"
    n.add_argument("model", type=Path, help=MODEL_HELP)
    n.add_argument("file", nargs="?", help="read this recording in 100-ms blocks")
    n.add_argument("--mic", action="store_true",
                   help="listen to the default microphone (pip install 'speechxfer[mic]')")
    n.add_argument("--threshold", type=bounded(float, 0.0, 1.0),
                   help="open-set bar on the command's probability (default: the model's own)")
    _add_filler_argument(n)
    _add_pad_argument(n)
    n.add_argument("--json", action="store_true", help="one JSON object per event")
    n.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    n.set_defaults(func=_listen)


def _eval_stream(args: argparse.Namespace) -> None:
    from .recognizer import load
    from .streameval import measure, plot_det

    filler_below = _filler_below(args)
    system = load(args.model, _loaded_on(args.device))
    report = measure(system, args.data, minutes=args.minutes, seed=args.seed, labels=args.labels,
                     threshold=args.threshold, target_fa=args.target_fa,
                     filler_margin=args.filler_margin, filler_below=filler_below,
                     pad_s=args.pad, talk=args.talk)
    report["model"] = str(Path(args.model).resolve())  # whose curve it is, for readers of several
    if args.json:
        print(json.dumps(report))
    else:
        _print_stream_report(report, args.target_fa)
    if args.plot:  # after the report: a plot that cannot be written loses no measurement
        plot_det(report, args.plot)


def _print_stream_report(report: dict, target_fa: float | None) -> None:
    fa = report["false_accepts_per_hour"]
    over = ", ".join(f"{n} on {kind}" for kind, n in sorted(report["false_accepts_over"].items()))
    print(f"{report['hours'] * 60:.1f} min, {report['n_commands']} commands: recall "
          f"{_figure(report['recall'])}, wrong label {report['wrong_label']}, false accepts "
          f"{report['false_accepts']} ({fa:.2f}/h{'; ' + over if over else ''}) at threshold "
          f"{report['threshold']:.3f}")
    for fa in report.get("false_accept_events", [])[:FA_LISTED]:
        print(f"  false accept at {fa['start']:.1f}-{fa['end']:.1f} s: {fa['label']!r} "
              f"{fa['probability']:.2f}, over {fa['over']!r}")
    if report["latency_s"] is not None:
        print(f"latency {report['latency_s']:.2f} s (median word end to event), real-time "
              f"factor {report['rtf']:.3f} ({report['rtf_cpu']:.3f} in CPU time) on "
              f"{report['threads']} thread(s)")
    if target_fa is not None:
        found = report["threshold_for"]
        print(f"threshold for <= {target_fa}/h on this stream: " + (
            f"{found['threshold']:.4f} (recall {_figure(found['recall'])}); use it with listen "
            f"--threshold" if found else "none (even the highest fires more often)"))


def _add_filler_argument(parser: argparse.ArgumentParser) -> None:
    from .detect import FILLER_BELOW

    parser.add_argument("--filler-margin", type=bounded(float, 0.0), metavar="NATS",
                        help="drop an unsure command when Whisper's own first word beats it by "
                             "more than this (default: off; detect.FILLER_MARGIN is calibrated); "
                             "an ensemble drops it only when every member's decoder does")
    parser.add_argument("--filler-below", type=bounded(float, 0.0, 1.0), metavar="P",
                        help="with --filler-margin: check commands accepted with a probability "
                             f"under this (default {FILLER_BELOW})")


def _filler_below(args: argparse.Namespace) -> float:
    """--filler-below tunes the filler check alone: without --filler-margin (the check off) it
    would be ignored in silence."""
    from .detect import FILLER_BELOW

    if args.filler_below is None:
        return FILLER_BELOW
    if args.filler_margin is None:
        raise ValueError("--filler-below needs --filler-margin (the filler check is off "
                         "without it)")
    return args.filler_below


def _add_pad_argument(parser: argparse.ArgumentParser) -> None:
    from .detect import PAD_S

    parser.add_argument("--pad", type=bounded(float, 0.0, 1.0), default=PAD_S, metavar="SECONDS",
                        help="audio before the speech onset the model also hears, where an "
                             "utterance outgrows the 1-s window (default %(default)s)")


def _add_eval_stream_parser(sub) -> None:
    v = sub.add_parser("eval-stream", help="recall and false accepts per hour on a long stream")
    v.add_argument("model", type=Path, help=MODEL_HELP)
    v.add_argument("--data", type=Path, required=True,
                   help="dataset folder to build the stream from (Speech Commands layout), or "
                        "with --labels a long recording")
    v.add_argument("--labels", type=Path, metavar="CSV",
                   help="the recording's words: start,end,label rows (seconds)")
    v.add_argument("--minutes", type=bounded(float, 0.01), default=30.0,
                   help="length of the built stream (default %(default)s)")
    v.add_argument("--talk", type=Path, metavar="DIR",
                   help="mix these recordings of running speech (any layout, e.g. sentences from "
                        "speechxfer synth) into the built stream: an event on them is a false "
                        "accept")
    v.add_argument("--seed", type=SEED, default=0,
                   help="draws the built stream's clips and gaps (default %(default)s)")
    v.add_argument("--threshold", type=bounded(float, 0.0, 1.0),
                   help="open-set bar (default: the model's own)")
    v.add_argument("--target-fa", type=bounded(float, 0.0), metavar="PER_HOUR",
                   help="also report a threshold with at most this many false accepts per hour "
                        "on this stream, midway in the gap above the last curve point with more "
                        "(calibrate on your training speakers or room)")
    _add_filler_argument(v)
    _add_pad_argument(v)
    v.add_argument("--json", action="store_true", help="print one JSON object (with the curve)")
    v.add_argument("--plot", type=Path, metavar="FILE", help="draw the DET curve into FILE (png)")
    v.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    v.set_defaults(func=_eval_stream)


def _serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve  # before the model loads: the extra may be missing
    except ImportError as err:
        print(f"speechxfer serve: error: {err}", file=sys.stderr)
        return 2
    serve(args.model, args.host, args.port, device=_loaded_on(args.device),
          log_level="warning" if args.verbosity == QUIET else "info")
    return 0


def _add_serve_parser(sub) -> None:
    v = sub.add_parser("serve", help="HTTP API, WebSocket and a microphone page for a model "
                                     "(pip install 'speechxfer[serve]')")
    v.add_argument("model", type=Path, help=MODEL_HELP)
    v.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s: this machine only)")
    v.add_argument("--port", type=bounded(int, 0, 65535), default=8000,
                   help="TCP port to listen on (default %(default)s)")
    v.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    v.set_defaults(func=_serve)


def _ensemble(args: argparse.Namespace) -> None:
    from .ensemble import EnsembleRecognizer

    system = EnsembleRecognizer.of_folders(args.models, args.threshold)
    system.save(args.out)
    print(f"ensemble of {len(args.models)} systems saved to {args.out} "
          f"(threshold {_figure(system.threshold)})")


def _add_ensemble_parser(sub) -> None:
    x = sub.add_parser("ensemble", help="one model from saved ones with the same labels: the "
                                        "geometric mean of their probabilities")
    x.add_argument("models", type=Path, nargs="+", help="two or more model folders")
    x.add_argument("--out", type=_out_dir, required=True, help="folder for the ensemble model")
    x.add_argument("--threshold", type=bounded(float, 0.0, 1.0),
                   help="open-set bar (default: the strictest member's)")
    x.set_defaults(func=_ensemble)


def _export(args: argparse.Namespace) -> None:
    from .export import export_folder, write_fast_path

    if args.fast and args.out is not None:  # else --out would be ignored with exit 0
        raise ValueError(f"--fast writes {args.model}/fast, not --out {args.out}: give one of them")
    if args.fast:  # an ExportError (a ValueError) here is the command's error
        parity = write_fast_path(args.model, args.data, args.check_clips)
        print(f"fast path (int8 ONNX) written to {args.model}/fast; {parity.line()}")
        return
    if args.out is None:
        raise ValueError("--out is required (or --fast)")
    out, parity = export_folder(args.model, args.out, args.int8, args.data, args.check_clips)
    print(f"exported {args.model} to {out} ({'int8' if args.int8 else 'fp32'} ONNX)")
    print(parity.line() if parity else "parity: not checked (no --data and the training data "
                                       "is not here)")


def _add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="an ONNX model folder that load_model runs with ONNX "
                                      "Runtime (neural and combined systems)")
    x.add_argument("model", type=Path, help=MODEL_HELP)
    x.add_argument("--format", choices=("onnx",), default="onnx",
                   help="the only format so far (default %(default)s)")
    x.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the weights")
    x.add_argument("--out", type=_out_dir, help="folder for the ONNX model (or give --fast)")
    x.add_argument("--fast", action="store_true",
                   help="write the combined model's fast path into MODEL/fast instead (what "
                        "train writes: int8, checked on the training speakers' clips)")
    x.add_argument("--data", type=Path,
                   help="clips for the parity check (default: the model's training data)")
    x.add_argument("--check-clips", type=bounded(int, 1), default=100, metavar="N",
                   help="clips drawn for the parity check (default %(default)s)")
    x.set_defaults(func=_export)


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    """-q/-v, accepted before the command and after it (there the default must not override)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=QUIET,
                       default=default, help="results and errors only: no progress, no epochs")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=VERBOSE,
                       default=default, help="more detail (e.g. per-epoch timing)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechxfer", description="Speech-command recognition by transfer learning from "
        "Whisper: train a model on labelled clips, score it, run it on files, a microphone or "
        "over HTTP. speechxfer COMMAND --help explains a command and its options.",
        epilog="exit status: 0 done; 1 predict could not read some files (the others are "
        "labelled), or the toolkit cannot be imported; 2 a usage error or bad input (one "
        "line naming the file and the problem); 130 interrupted (Ctrl-C).")
    parser.add_argument("--version", action="version", version=f"speechxfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    t = sub.add_parser("train", help="fine-tune an encoder + head, evaluate, save the model")
    t.add_argument("--data", type=Path,
                   help="dataset folder or manifest (default: the bundled digits, data/digits.csv)")
    t.add_argument("--encoder", default="whisper-tiny.en",
                   help="encoder to transfer from (default %(default)s): whisper-base, "
                        "wav2vec2:DIR or hubert:DIR (a local checkpoint), or ds-cnn / raw-cnn "
                        "(small CNNs trained from scratch); speechxfer info lists the "
                        "installed weights")
    t.add_argument("--window",
                   help="Whisper input: 'clip' (positions sliced to the clip) or a fixed padded "
                        "window 'Ns', 1 <= N <= 30 ('30s' is Whisper's own); default 2s")
    t.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=tuple(JOBS), metavar="NAME",
                   help=" | ".join(JOBS) + " (gmm-hmm, dtw and svm: classic MFCC pipelines; "
                        "--task beyond command needs a head: a neural strategy or combined)")
    t.add_argument("--k", type=bounded(int, 1), default=2,
                   help="blocks tuned (top-k) or re-initialised")
    t.add_argument("--per-class", type=bounded(int, 1), help="keep N clips per label per speaker")
    t.add_argument("--epochs", type=bounded(int, 1),
                   help="default: 30 for a head on a frozen encoder, 4 when encoder blocks train")
    t.add_argument("--seed", type=SEED, default=0,
                   help="draws the validation speakers, clips kept and initial weights: the "
                        "same seed, the same model (default %(default)s)")
    t.add_argument("--out", type=_out_dir, default=Path("runs/default"),
                   help="model folder to write (default %(default)s); a run interrupted there "
                        "resumes from its last checkpoint when started again with the same options")
    t.add_argument("--test-speaker", action="append",
                   help="hold out this speaker for testing (repeatable; default: the data's "
                        "own test list, else none: every speaker trains)")
    t.add_argument("--task", action="append",
                   help="task to learn, NAME[:single|multi|embedding] (repeatable; command is "
                        "always learned)")
    t.add_argument("--pooling", default="mean", choices=("mean", "attentive"),
                   help="how the heads pool the encoder's frames into one vector: their mean, "
                        "or a learned attention over them (default %(default)s)")
    t.add_argument("--layer", type=int, help="use one hidden state instead of a learned mix")
    t.add_argument("--head-option", type=_head_option, action="append", metavar="TASK.OPTION=V",
                   help="one task's head option over the shared ones (repeatable), e.g. "
                        "speaker.layer=0: the speaker head reads hidden state 0 while the "
                        "command head keeps the learned mix")
    t.add_argument("--speaker-speeds", type=_speeds, default=(), metavar="P,P,...",
                   help="for an embedding task: a copy of every training clip at each speed "
                        "(percent), its voice trained as a new speaker (x-vector style), e.g. "
                        "90,110")
    t.add_argument("--keep", choices=KEEP, default="best",
                   help="best: the epoch of best command accuracy on the validation speakers, "
                        "stopping when it stalls (default); last: train every epoch, keep the "
                        "last (a speaker model: command accuracy does not measure voices)")
    t.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    t.add_argument("--commands", type=_commands, metavar="WORD,WORD,...",
                   help="these words are the classes; every other word becomes _unknown_, the "
                        "clips of _silence_/ become _silence_ (default: every folder a label)")
    t.add_argument("--negatives", type=Path, action="append", metavar="PATH",
                   help="with --commands: every clip of this dataset (any layout, repeatable) "
                        "trains as _unknown_: more 'none of these' than the data's other words")
    t.add_argument("--spell-others", action="store_true",
                   help="with --commands, zero-shot and combined: Whisper's decoder also spells "
                        "the other words the training speakers said; one scoring above every "
                        "command is _unknown_")
    t.add_argument("--shots", type=bounded(int, 1), metavar="N",
                   help="keep N training clips per command in total, from as many speakers as "
                        "possible (unknown and silence clips are kept)")
    t.add_argument("--max-false-accept", type=bounded(float, 0.0, 1.0), metavar="RATE",
                   help="rejection threshold: at most this fraction of the validation speakers' "
                        "unknown words and silence taken for a command (with _unknown_/_silence_"
                        f" labels; default {DEFAULT_MAX_FALSE_ACCEPT})")
    t.add_argument("--augment", action="store_true",
                   help="train on seeded augmented copies too: speed, shift, simulated rooms, "
                        "noise from the training _silence_ clips, --noise and synthetic")
    t.add_argument("--noise", type=Path, metavar="DIR",
                   help="with --augment: also mix in the audio files of this folder")
    t.add_argument("--augment-copies", type=bounded(int, 1), metavar="K",
                   help=f"with --augment: augmented copies per training clip "
                        f"(default {DEFAULT_AUGMENT_COPIES})")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="score every clip under a dataset with a saved model")
    e.add_argument("model", type=Path, help=MODEL_HELP)
    e.add_argument("--data", type=Path, required=True,
                   help="labelled clips: a dataset folder or a .csv/.jsonl manifest")
    e.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (diagnostics go to stderr)")
    e.add_argument("--report", type=_out_dir, metavar="DIR",
                   help="write eval_report.json/.md/_confusion.png into DIR (default: none)")
    e.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="label and probability for each file")
    p.add_argument("model", type=Path, help=MODEL_HELP)
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ...); one line each")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--top", type=bounded(int, 1), metavar="K",
                   help="also the K most probable labels, best first, as LABEL:PROBABILITY "
                        "columns after the probability (--json: a \"top\" list)")
    p.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_predict)

    _add_listen_parser(sub, "stream")

    i = sub.add_parser("info", help="versions, devices, installed weights: paste into bug reports")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_info)

    _add_synth_parser(sub)
    _add_listen_parser(sub)
    _add_eval_stream_parser(sub)
    _add_serve_parser(sub)
    _add_export_parser(sub)
    _add_ensemble_parser(sub)
    _add_speaker_parsers(sub)
    _add_verbosity(parser, NORMAL)
    for command in sub.choices.values():
        _add_verbosity(command, argparse.SUPPRESS)
    for listed in sub._choices_actions:  # COMMAND --help opens with the line the list shows
        sub.choices[listed.dest].description = listed.help
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.verbosity)
    try:
        return args.func(args) or 0
    except COMMAND_ERRORS as err:
        print(f"speechxfer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; folders are only swapped whole
        resume = (" (run it again with the same options to resume from its last checkpoint)"
                  if args.command == "train" else "")
        print(f"speechxfer {args.command}: interrupted; output folders are as they were{resume}",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `speechxfer predict m *.wav | head`: the reader has had enough
        try:  # and Python's last flush of stdout at exit must not fail on it again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout with no file behind it (tests, embedding)
            pass
        return 141  # what a shell reports for a writer a closed pipe stopped (128 + SIGPIPE)
