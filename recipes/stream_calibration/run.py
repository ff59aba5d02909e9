"""A stream threshold for new voices, calibrated by cross-fitting on speakers the test never meets.

A detector's threshold decides its false accepts per hour, and a threshold read off a stream of
the training speakers says nothing (the model learnt their words), while one read off the test
speakers' streams is tuned on the test. This recipe calibrates it on every other speaker: the
Speech Commands recipe's speaker groups 0 and 1 stay the test speakers (in no stream here); each
calibration fold is a pair of the other groups, whose members are trained holding out groups 0, 1
and the pair (``speechxfer train --test-speaker ...``), ensembled when there are several, and
scored on 30-min streams built from the pair's clips (``speechxfer eval-stream --json``). Then
``benchmarks/stream_thresholds.py --cross-fit`` reads all the folds' curves as one system: the
threshold with the highest mean recall within the false-accept limits.

    python recipes/stream_calibration/run.py [--work runs/stream_calibration] [--seeds 0 1]
        [--encoders whisper-tiny.en whisper-base] [--folds 2,3 4,5 6,7 8,9] [--per-stream 1 --total 4]
        [--negatives data/fsdd]

Every member spells the other words (``--spell-others``), as the README's stream system does.
Streams run on one thread under torch (``SPEECHXFER_TORCH=1``, the systems as trained). A rerun
keeps finished folds and reports (a fold folder trained on other data, speakers or options is
an error); folders and reports are named by the encoders, the ensemble's threshold, the minutes
and the seed.
Writes results/results.md (the reading) and results/results.json next to this file, named by
every non-default option (``results_data-..._seeds-0-1-2.json``), so a variant never replaces
the default figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from speechxfer.audio import Clip
from speechxfer.cli import SEED, bounded
from speechxfer.cli import main as cli
from speechxfer.data import DatasetError
from speechxfer.jobs import finished_run
from speechxfer.log import run_script
from speechxfer.vocab import load_with_silence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
READER = ROOT / "benchmarks" / "stream_thresholds.py"
GROUPS = ROOT / "recipes" / "speech_commands" / "results" / "results.json"
COMMANDS = "yes,no,up,down,left,right,on,off,stop,go"
TEST_GROUPS = (0, 1)


def member(args: argparse.Namespace, encoder: str, name: str, held: list[str]) -> Path:
    """A fold's member: ``speechxfer train`` spelling the other words, holding out ``held``,
    unless it finished in ``--work`` before (``jobs.finished_run``)."""
    folder = args.work / f"{encoder}_cv{name}"
    wanted = {"data": args.data, "test_speakers": held, "encoder": encoder,
              "strategy": "combined", "commands": COMMANDS.split(","), "spell_others": True,
              "negatives": [str(p.resolve()) for p in args.negatives] or None}
    if finished_run(folder, wanted) is None and cli(
            ["train", "--data", str(args.data), "--commands", COMMANDS, "--spell-others",
             "--encoder", encoder, *(a for s in held for a in ("--test-speaker", s)),
             *(a for p in args.negatives for a in ("--negatives", str(p))),
             "--out", str(folder)]) != 0:
        raise SystemExit(f"training {folder} failed")
    return folder


def stream_folder(clips: list[Clip], speakers: set[str], folder: Path) -> Path:
    """The speakers' clips (of ``load_with_silence``: ``_silence_`` clips with their
    pseudo-speaker, as in training) as symlinks in word folders: the data a fold's streams are
    built from."""
    for clip in clips:
        if clip.speaker in speakers:
            link = folder / clip.path.parent.name / clip.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(clip.path.resolve())
    return folder


def made_after(path: Path, models: list[Path]) -> bool:
    """``path`` exists and was written after every model folder's config.json: an ensemble or a
    stream report of a member trained again since (a refused folder removed) is stale."""
    return path.exists() and all(path.stat().st_mtime >= (m / "config.json").stat().st_mtime
                                 for m in models)


def stream_report(system: Path, data: Path, minutes: float, seed: int, out: Path) -> Path:
    """``speechxfer eval-stream --json`` into ``out`` (kept from an earlier run of this system)."""
    if made_after(out, [system]):
        return out
    print(f"{system.name}: a {minutes:g}-min stream of {data}, seed {seed} (a few minutes)",
          flush=True)  # a line per stream: the eval-stream output is kept for the reading
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECHXFER_TORCH": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "speechxfer", "eval-stream", str(system),
                           "--data", str(data), "--minutes", str(minutes), "--seed", str(seed),
                           "--json"], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eval-stream {system} on {data} failed: {done.stderr.strip()[-400:]}")
    out.write_text(done.stdout)
    return out


def folder_name(path: Path) -> str:
    """A dataset folder as a results name shows it: a bundled one (``data/fsdd``) by its name,
    any other by its name and a digest of its resolved path, so that two folders named alike
    (``data/fsdd``, ``/elsewhere/fsdd``) never write over each other's results."""
    resolved = path.resolve()
    if resolved.parent == ROOT / "data":
        return resolved.name
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def results_suffix(args: argparse.Namespace, defaults: dict) -> str:
    """``_option-value`` for every option that differs from its default, so a variant's results
    never replace the default run's (``--work`` changes no figure)."""
    def shown(value: object) -> str:
        items = value if isinstance(value, list | tuple) else [value]
        text = "-".join(",".join(map(str, v)) if isinstance(v, tuple) else
                        folder_name(v) if isinstance(v, Path) else f"{v:g}" if isinstance(v, float)
                        else str(v) for v in items)
        return re.sub(r"[^\w.,+-]", "_", text)
    return "".join(f"_{key.replace('_', '-')}-{shown(getattr(args, key))}"
                   for key in defaults if key != "work" and getattr(args, key) != defaults[key])


def pair(text: str) -> tuple[int, ...]:
    """``2,3`` -> (2, 3): the speaker groups of one calibration fold."""
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"a fold is group numbers joined by commas, got {text!r}")
    return tuple(int(g) for g in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (their defaults are the README's run)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "speech_commands")
    parser.add_argument("--work", type=Path, default=Path("runs/stream_calibration"))
    parser.add_argument("--encoders", nargs="+", default=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--folds", nargs="+", type=pair, default=[(2, 3), (4, 5), (6, 7), (8, 9)])
    # the ranges of eval-stream, ensemble and the reader: refused now, not after the training
    parser.add_argument("--seeds", nargs="+", type=SEED, default=[0, 1])
    parser.add_argument("--minutes", type=bounded(float, 0.01), default=30.0)
    parser.add_argument("--ensemble-threshold", type=bounded(float, 0.0, 1.0), default=0.65,
                        help="stored in each fold's ensemble; the curves cover every threshold")
    parser.add_argument("--negatives", type=Path, nargs="+", default=[], metavar="PATH",
                        help="datasets every member also trains on as _unknown_ (train --negatives)")
    parser.add_argument("--per-stream", type=bounded(int, 0), default=1,
                        help="false accepts on any stream")
    parser.add_argument("--total", type=bounded(int, 0), default=4,
                        help="false accepts over all streams")
    return parser


def defaults_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Every option's default, for ``results_suffix``."""
    return {key: parser.get_default(key) for key in vars(args)}


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    defaults = defaults_of(parser, args)
    groups = json.loads(GROUPS.read_text())["meta"]["speaker_groups"]
    used = [g for fold in args.folds for g in fold]
    if any(g in TEST_GROUPS or not 0 <= g < len(groups) for g in used) or len(set(used)) < len(used):
        parser.error(f"--folds: each of groups 2-{len(groups) - 1} at most once (0 and 1 are "
                     "the test speakers')")
    test = [s for g in TEST_GROUPS for s in groups[g]]
    try:
        clips = load_with_silence(args.data).clips  # once: every fold's streams draw on them
    except DatasetError as err:
        parser.error(f"--data: {err}")
    reports = []
    for fold in args.folds:
        name = "".join(map(str, fold))
        speakers = [s for g in fold for s in groups[g]]
        held = test + speakers
        try:
            members = [member(args, encoder, name, held) for encoder in args.encoders]
        except ValueError as err:  # a fold folder trained otherwise (finished_run)
            raise SystemExit(str(err)) from None
        system = members[0]
        if len(members) > 1:
            system = args.work / f"ensemble_{'+'.join(args.encoders)}_{args.ensemble_threshold:g}_cv{name}"
            if not made_after(system / "config.json", members) and cli(
                    ["ensemble", *map(str, members), "--threshold",
                     str(args.ensemble_threshold), "--out", str(system)]) != 0:
                raise SystemExit(f"ensembling {system} failed")
        data = stream_folder(clips, set(speakers), args.work / "streams" / name)
        reports += [stream_report(system, data, args.minutes, seed,
                                  args.work / f"report_{system.name}_{args.minutes:g}min_seed{seed}.json")
                    for seed in args.seeds]
    reading = subprocess.run([sys.executable, str(READER), *map(str, reports), "--cross-fit",
                              "--per-stream", str(args.per_stream), "--total", str(args.total)],
                             capture_output=True, text=True, check=False)
    if reading.returncode != 0:
        raise SystemExit(f"reading the curves failed: {reading.stderr.strip()}")
    best = re.search(r"threshold (\d\.\d+), mean recall (\d\.\d+)", reading.stdout)
    results = {"encoders": args.encoders, "folds": args.folds, "seeds": args.seeds,
               "minutes": args.minutes, "per_stream": args.per_stream, "total": args.total,
               "data": str(args.data.resolve()),
               "negatives": [str(p.resolve()) for p in args.negatives],
               "threshold": float(best[1]) if best else None,
               "mean_recall": float(best[2]) if best else None,
               "reports": [str(r) for r in reports]}
    suffix = results_suffix(args, defaults)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    head = (f"Cross-fitted calibration: {' + '.join(args.encoders)}, spelling the other words; "
            f"folds {', '.join('+'.join(map(str, f)) for f in args.folds)}; seeds "
            f"{', '.join(map(str, args.seeds))}; {args.minutes:g}-min streams; at most "
            f"{args.per_stream} false accept(s) per stream and {args.total} in all")
    text = f"{head}\n\n```\n{reading.stdout.strip()}\n```\n"
    (HERE / "results" / f"results{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run_script(main)
