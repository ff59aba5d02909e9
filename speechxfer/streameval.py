"""Detection measured on long streams, the way the wake-word field measures it: how many real
commands are caught (recall), how often the detector fires when no command was given (false
accepts per hour), how late, and at what cost (real-time factor).

A stream is built from a dataset folder (Speech Commands layout, ``_silence_/`` for noise): every
clip is placed once, in a seeded order (reshuffled and reused only when the stream outlasts
the data), at a random gain, with a random gap before it, over a quiet bed of the folder's own
noise. So the command words, the other words and the noise clips come in the proportions the
data holds, each word's span (its voiced part) is known, and the same seed gives the same
stream. ``talk`` adds recordings of running speech (sentences, e.g. from ``speechxfer synth``)
to the clips: people talking near the app, where an event is a false accept too. A real
recording can be scored instead, with its words listed in a CSV of ``start,end,label``
(seconds).

Scoring: an event matches a command whose span, widened by ``TOLERANCE_S`` on both sides,
overlaps it. The first event with the command's label is a hit; an event whose label is wrong
counts as ``wrong_label``; an event over no command, or a repeat on a command already hit, is a
false accept (the app would act twice).
"""

from __future__ import annotations

import bisect
import csv
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .audio import AudioError, Clip, is_audio_name, load
from .detect import FILLER_BELOW, PAD_S, VAD_RATE, Detection, Detector, Segment, detect_chunks
from .log import LOGGER, progress
from .stream import file_chunks, file_length
from .vocab import SILENCE, is_command, load_with_silence, nfc, written_otherwise

if TYPE_CHECKING:
    from speechxfer import Recognizer

TOLERANCE_S = 0.5  # an event this close to a command's span is about that command
RATE = 16_000
GAP_S = (1.0, 6.0)  # pause before each clip, uniform: about one clip per 4.5 s
GAIN_DB = (-6.0, 6.0)  # each clip's level against its recording, uniform
BED_DB = (-50.0, -40.0)  # the room between clips: noise clips at this RMS (dBFS), uniform
SPAN_DB = 20.0  # a word's span: its 10-ms frames within this much of its loudest frame
CHUNK_S = 0.1  # the detector is fed blocks of this length, as a microphone callback would
TALK = "_talk_"  # the label of a talk recording's span: speech that is no command
BUILD_BYTES = 16  # memory per sample of a stream being built: its float64 bed, the float32
# stream and the clips placed on it


class LabelFileError(ValueError):
    """A label file that cannot be read; the message names the file and the row."""


class PlotError(ValueError):
    """A DET plot that cannot be written; the message names the file."""


@dataclass(frozen=True)
class Span:
    """A stretch of the stream holding one word (or a noise clip: label ``_silence_``)."""

    start: float
    end: float
    label: str


@dataclass
class BuiltStream:
    audio: np.ndarray  # mono float32 at ``rate``
    rate: int
    spans: list[Span]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)

    @property
    def hours(self) -> float:
        return len(self.audio) / self.rate / 3600


def _word_span(wave: np.ndarray, rate: int) -> tuple[int, int]:
    """First and last sample of the voiced part of a clip: its 10-ms frames within ``SPAN_DB``
    of its loudest one (the clips are 1 s, the word is somewhere inside)."""
    hop = rate // 100
    n = len(wave) // hop
    if n == 0:
        return 0, len(wave)
    rms = np.sqrt((wave[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-SPAN_DB / 20))
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def talk_files(folder: str | Path) -> list[Path]:
    """Every audio file under ``folder``, at any depth: recordings of talk, in any layout
    (hidden files and folders, such as macOS's ``._NAME.wav`` litter, are no recordings)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(folder, "talk must be a folder of recordings")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_audio_name(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise AudioError(folder, "no audio files under the talk folder")
    return files


def build_stream(data: str | Path, minutes: float, seed: int = 0,
                 talk: str | Path | None = None) -> BuiltStream:
    """A ``minutes``-long stream from the clips of ``data`` and the recordings under ``talk``
    (see the module docstring); one too long to build in the memory available is a ValueError,
    not a machine out of memory."""
    if not 0 < minutes < math.inf:  # int() of inf or NaN: a bare OverflowError from eval-stream
        raise ValueError(f"minutes must be a positive finite number, got {minutes}")
    total = int(minutes * 60 * RATE)
    free = _available_memory()
    if free is not None and total * BUILD_BYTES > free:
        raise ValueError(f"{data}: a {minutes:g}-min stream needs about "
                         f"{total * BUILD_BYTES / 2**30:.1f} GiB of memory to build, "
                         f"{free / 2**30:.1f} GiB is available: build a shorter one")
    dataset = load_with_silence(data)
    rng = np.random.default_rng(seed)
    clips = sorted(dataset.clips, key=lambda c: str(c.path))
    if talk is not None:
        clips += [Clip(p, {"command": TALK}) for p in talk_files(talk)]
    skipped = list(dataset.skipped)
    waves: dict[int, np.ndarray] = {}
    for i, clip in enumerate(clips):
        try:
            waves[i] = load(clip.path, RATE).numpy()
        except AudioError as err:  # a bad clip is left out and reported, the stream goes on
            skipped.append((str(clip.path), str(err)))
    for file, problem in skipped:  # as training does: left out, and said so
        LOGGER.warning("skipped %s: %s", file, problem)
    usable = [i for i in waves if clips[i].label is not None]
    if not usable:
        raise AudioError(data, "no usable labelled clips to build a stream from")
    if talk is not None and not any(clips[i].label == TALK for i in usable):
        # else the report would name a talk folder whose recordings it never heard
        raise AudioError(talk, "no readable recording under the talk folder")
    noise = [i for i in usable if clips[i].label == SILENCE]
    pieces: list[tuple[int, np.ndarray]] = []
    spans: list[Span] = []
    at, order = 0, []
    while True:
        if not order:
            order = list(rng.permutation(usable))
        i = order.pop()
        at += int(rng.uniform(*GAP_S) * RATE)
        wave = waves[i] * 10 ** (rng.uniform(*GAIN_DB) / 20)
        if at + len(wave) > total:
            break
        a, b = _word_span(waves[i], RATE)
        pieces.append((at, wave))
        spans.append(Span((at + a) / RATE, (at + b) / RATE, clips[i].label))
        at += len(wave)
    if not spans:  # a report of no clip would read as a stream without a false accept
        raise ValueError(f"{data}: a {minutes:g}-min stream is too short to hold a clip; "
                         "build a longer one")
    audio = _bed([waves[i] for i in noise], total, rng)
    for at, wave in pieces:
        audio[at: at + len(wave)] += wave
    np.clip(audio, -1.0, 1.0, out=audio)
    return BuiltStream(audio.astype(np.float32), RATE, spans, skipped)


def _available_memory() -> int | None:
    """Bytes the system can still give (Linux's MemAvailable); None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _bed(noises: list[np.ndarray], total: int, rng: np.random.Generator) -> np.ndarray:
    """The quiet room under the whole stream: noise clips end to end at a low random level (or
    faint white noise when the folder has none), so no stretch is digital silence."""
    bed = np.zeros(total, np.float64)
    at = 0
    while at < total:
        if noises:
            clip = noises[int(rng.integers(len(noises)))].astype(np.float64)
        else:
            clip = rng.standard_normal(RATE)
        rms = math.sqrt(float(np.mean(clip ** 2))) or 1.0
        part = clip[: total - at] * (10 ** (rng.uniform(*BED_DB) / 20) / rms)
        bed[at: at + len(part)] = part
        at += len(part)
    return bed


def read_labels(path: str | Path, seconds: float | None = None) -> list[Span]:
    """The words of a real recording: a CSV of ``start,end,label`` (seconds; a header row
    ``start,end,label`` is optional). A bad row is a ``LabelFileError`` naming the file and row:
    so is a row starting at or after ``seconds`` (the recording's length: labels of another
    recording, or not in seconds) and a span overlapping another of its label (a row listed
    twice): either would count a command that was never said as missed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise LabelFileError(f"{path}: cannot read the label file ({err})") from None
    spans, rows = [], []
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row]
        if n == 1 and [c.lower() for c in cells] == ["start", "end", "label"]:
            continue
        if len(cells) != 3:
            raise LabelFileError(f"{path}: row {n}: expected start,end,label, got {len(cells)} "
                                 f"field(s): {','.join(row)!r}")
        try:
            start, end = float(cells[0]), float(cells[1])
        except ValueError:
            raise LabelFileError(f"{path}: row {n}: start and end must be seconds, got "
                                 f"{cells[0]!r}, {cells[1]!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise LabelFileError(f"{path}: row {n}: need 0 <= start <= end, got {start}, {end}")
        if not cells[2]:
            raise LabelFileError(f"{path}: row {n}: empty label")
        if seconds is not None and start >= seconds:
            raise LabelFileError(f"{path}: row {n}: starts at {start} s, not before the end of "
                                 f"the recording ({seconds:.3f} s): labels of another recording, "
                                 "or not in seconds?")
        spans.append(Span(start, end, nfc(cells[2])))  # as the data's labels (data.nfc)
        rows.append(n)
    if not spans:
        raise LabelFileError(f"{path}: no labelled rows")
    by_label = sorted(zip(spans, rows), key=lambda sr: (sr[0].label, sr[0].start))
    for (a, m), (b, n) in pairwise(by_label):
        if a.label == b.label and (b.start < a.end or b.start == a.start):
            raise LabelFileError(f"{path}: rows {m} and {n}: two {a.label!r} spans overlap "
                                 f"({a.start}-{a.end} s, {b.start}-{b.end} s): a row listed twice?")
    return sorted(spans, key=lambda s: s.start)


def check_label_names(spans: list[Span], labels: list[str], path: str | Path) -> None:
    """A ``LabelFileError`` for a label written otherwise than the model's command it names
    ("Yes", " yes" for "yes"): its spans would not count as commands, so every event on them
    would read as a false accept and recall would leave them out."""
    commands = [lab for lab in labels if is_command(lab)]
    for span in spans:
        if same := written_otherwise(span.label, commands):
            raise LabelFileError(f"{path}: label {span.label!r} (at {span.start} s) is the "
                                 f"model's command {same!r} written otherwise; write it as "
                                 "the model does")


def span_kind(label: str, commands: set[str]) -> str:
    """What a span holds, for the report: a command, another word, talk or noise (silence)."""
    return ("command" if label in commands else "silence" if label == SILENCE
            else "talk" if label == TALK else "other word")


def score_events(events: Iterable[Detection | Segment], spans: list[Span], commands: set[str],
                 hours: float, tolerance: float = TOLERANCE_S) -> dict:
    """recall, wrong-label events and false accepts per hour of ``events`` against the command
    spans among ``spans`` (labels not in ``commands`` are words the model need not catch);
    ``false_accepts_over`` says what each false accept fired on: a span's kind, ``repeat`` (a
    command already caught) or ``nothing`` (the room between clips); ``false_accept_events``
    lists each (its times, label and probability, and ``over``: the word, ``_silence_`` or
    ``_talk_`` under it, ``repeat`` or ``nothing``), so a report says what to fix."""
    targets = sorted((s for s in spans if s.label in commands), key=lambda s: s.start)
    others = sorted((s for s in spans if s.label not in commands), key=lambda s: s.start)
    other_starts = [s.start - tolerance for s in others]
    over: Counter = Counter()
    listed: list[dict] = []
    starts = [s.start - tolerance for s in targets]
    longest = max((s.end - s.start for s in targets), default=0.0) + 2 * tolerance
    hit: set[int] = set()
    hits = wrong = false = 0
    latencies = []
    for e in sorted(events, key=lambda e: e.start):
        near, i = [], bisect.bisect_right(starts, e.end) - 1
        while i >= 0 and starts[i] + longest >= e.start:  # only spans that can reach the event
            if targets[i].end + tolerance >= e.start:
                near.append(i)
            i -= 1
        right = [i for i in near if targets[i].label == e.label and i not in hit]
        if right:
            i = min(right, key=lambda i: abs(targets[i].end - e.end))
            hit.add(i)
            hits += 1
            latencies.append(e.heard_at + e.compute_s - targets[i].end)
        elif any(i not in hit for i in near):
            wrong += 1
        else:
            false += 1
            j = bisect.bisect_right(other_starts, e.end)
            under = [o for o in others[max(0, j - 3): j] if o.end + tolerance >= e.start]
            if near:  # every command under it was caught already
                what = "repeat"
                over["repeat"] += 1
            else:
                what = under[-1].label if under else "nothing"
                over[span_kind(what, commands) if under else "nothing"] += 1
            listed.append({"start": round(e.start, 3), "end": round(e.end, 3), "label": e.label,
                           "probability": round(float(e.probability), 4), "over": what})
    n = len(targets)
    return {
        "recall": hits / n if n else None,
        "n_commands": n,
        "hits": hits,
        "wrong_label": wrong,
        "false_accepts": false,
        "false_accepts_per_hour": false / hours if hours > 0 else None,
        "false_accepts_over": dict(over),
        "false_accept_events": listed,
        "latency_s": float(np.median(latencies)) if latencies else None,
        "latency_p90_s": float(np.percentile(latencies, 90)) if latencies else None,
    }


def det_curve(segments: list[Segment], spans: list[Span], commands: set[str],
              hours: float) -> list[dict]:
    """Miss rate and false accepts per hour at every threshold where the events change."""
    scores = sorted({s.score for s in segments if s.score > 0})
    points = []
    for t in [0.0, *scores, math.nextafter(scores[-1], math.inf) if scores else 1.0]:
        r = score_events([s for s in segments if s.score >= t], spans, commands, hours)
        points.append({"threshold": t, "miss_rate": 1 - r["recall"] if r["recall"] is not None
                       else None, "false_accepts_per_hour": r["false_accepts_per_hour"]})
    return points


def threshold_for(curve: list[dict], max_false_accepts_per_hour: float) -> dict | None:
    """A stream threshold with at most that many false accepts per hour on a DET curve, and the
    recall there: to calibrate on a stream of the training speakers (or a recording of the
    user's room), then pass to ``Detector`` / ``listen --threshold``. Every threshold between
    the last curve point that fires too often and the first that does not gives the same
    events; the middle of that gap is returned, the margin new audio needs either way."""
    curve = sorted(curve, key=lambda p: p["threshold"])
    for before, point in zip([None, *curve], curve):
        fa = point["false_accepts_per_hour"]
        if fa is not None and fa <= max_false_accepts_per_hour:
            low = before["threshold"] if before is not None else point["threshold"]
            return {"max_false_accepts_per_hour": max_false_accepts_per_hour,
                    "threshold": (low + point["threshold"]) / 2,
                    "recall": None if point["miss_rate"] is None else 1 - point["miss_rate"]}
    return None


def _blocks(audio: np.ndarray, rate: int) -> Iterable[np.ndarray]:
    step = max(1, int(CHUNK_S * rate))
    return (audio[i: i + step] for i in range(0, len(audio), step))


def evaluate_stream(model: Recognizer, spans: list[Span], *, audio: np.ndarray | None = None,
                    rate: int = RATE, recording: str | Path | None = None,
                    threshold: float | None = None, **detector_options) -> dict:
    """Run a ``Detector`` over a built stream (``audio``) or a recording file in 0.1-s blocks and
    score it; ``det`` holds the curve over thresholds."""
    if recording is not None:
        rate, chunks = file_chunks(recording, CHUNK_S)
        samples = file_length(recording)[1]
    else:
        chunks, samples = _blocks(audio, rate), len(audio)
    commands = {lab for lab in model.labels if is_command(lab)}
    if not any(s.label in commands for s in spans):  # other names ("seven" for "7"), or none
        LOGGER.warning("no word of the stream is a command of the model (%s): no recall, and "
                       "every event is a false accept", ", ".join(sorted(commands)))
    detector = Detector(model, threshold, rate, record=True, **detector_options)
    blocks = progress(chunks, "streaming", total=math.ceil(samples / max(1, int(CHUNK_S * rate))))
    events = list(detect_chunks(detector, blocks))
    hours = detector.seconds / 3600
    report = score_events(events, spans, commands, hours)
    seconds = detector.seconds or 1.0
    kinds = Counter(span_kind(s.label, commands) for s in spans)
    report.update({
        "rtf": detector.compute_s / seconds,
        "rtf_cpu": detector.cpu_s / seconds,
        "vad_rtf": detector.vad_s / seconds,
        "model_rtf": detector.model_s / seconds,
        "hours": hours,
        "threshold": detector.threshold,
        "threads": torch.get_num_threads(),
        "n_events": len(events),
        "n_utterances": len(detector.segments),
        "overlong_utterances": detector.overlong,
        "pad_s": detector.pad / VAD_RATE,
        "filler_margin": detector.filler_margin,
        "filler_below": detector.filler_below,
        "filler_checks": detector.filler_checks,
        "filler_dropped": detector.filler_dropped,
        "repaired_samples": detector.repaired,
        "spans": dict(kinds),
        "det": det_curve(detector.segments, spans, commands, hours),
    })
    return report


def plot_det(report: dict, path: str | Path, title: str = "") -> None:
    """Miss rate against false accepts per hour over thresholds; the default threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in report["det"] if p["miss_rate"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([p["false_accepts_per_hour"] for p in points], [p["miss_rate"] for p in points],
            drawstyle="steps-post", label="over thresholds")
    if report["recall"] is not None:
        ax.plot([report["false_accepts_per_hour"]], [1 - report["recall"]], "o",
                label=f"threshold {report['threshold']:.3f}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"DET curve ({report['hours'] * 60:.0f} min stream)")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as err:  # no such folder, no permission, an unknown format
        raise PlotError(f"{path}: cannot write the plot ({err})") from None
    finally:
        plt.close(fig)


def measure(model: Recognizer, data: str | Path, *, minutes: float = 30.0, seed: int = 0,
            labels: str | Path | None = None, threshold: float | None = None,
            target_fa: float | None = None, filler_margin: float | None = None,
            filler_below: float = FILLER_BELOW, pad_s: float = PAD_S,
            talk: str | Path | None = None) -> dict:
    """What ``speechxfer eval-stream`` reports: a stream built from the folder ``data`` (and the
    recordings under ``talk``), or, with ``labels`` (a CSV of start,end,label), the recording
    ``data`` scored against it;
    with ``target_fa``, also ``threshold_for`` that many false accepts per hour;
    ``filler_margin``, ``filler_below``: the detector's filler check (margin None: off);
    ``pad_s``: the detector's."""
    data = Path(data)
    if labels is not None:
        if talk is not None:
            raise ValueError("talk is mixed into a built stream; a recording has its own")
        if not data.is_file():
            raise AudioError(data, "with a label file, --data must be the recording (a file)")
        rate, frames = file_length(data)
        spans = read_labels(labels, frames / rate)
        check_label_names(spans, model.labels, labels)
        report = evaluate_stream(model, spans, recording=data,
                                 threshold=threshold, filler_margin=filler_margin,
                                 filler_below=filler_below, pad_s=pad_s)
        report["stream"] = {"recording": str(data), "labels": str(labels)}
    else:
        report = _measure_built(model, data, minutes, seed, threshold, filler_margin,
                                filler_below, pad_s, talk)
    if target_fa is not None:
        report["threshold_for"] = threshold_for(report["det"], target_fa)
    return report


def _measure_built(model: Recognizer, data: Path, minutes: float, seed: int,
                   threshold: float | None, filler_margin: float | None, filler_below: float,
                   pad_s: float, talk: str | Path | None) -> dict:
    if not data.is_dir():
        raise AudioError(data, "not a dataset folder (give --labels to score a recording)")
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    built = build_stream(data, minutes, seed, talk)
    report = evaluate_stream(model, built.spans, audio=built.audio, rate=built.rate,
                             threshold=threshold, filler_margin=filler_margin,
                             filler_below=filler_below, pad_s=pad_s)
    report["stream"] = {"data": str(data), "minutes": minutes, "seed": seed,
                        "talk": None if talk is None else str(talk),
                        "skipped": [{"file": f, "problem": p} for f, p in built.skipped]}
    return report
