"""Listening for commands in a live stream: a voice-activity detector cuts utterances, the model
labels each one, and the open-set rule decides whether it was a command at all.

Why this shape:
- A learned voice-activity detector (silero-vad's model, shipped inside its wheel and run with
  torch, so nothing is fetched at run time) opens an utterance on speech, not on loudness: a door,
  a tap or music that an energy rule takes for a word never reaches the classifier.
- Every utterance is classified whole, in a window of at least ``clip_s`` (the 1-s clips the
  models were trained on), so the model always sees a complete word as in training; the window
  never reaches back into the previous utterance, whose word would otherwise be heard twice
  (a breath after "yes" would fire "yes" again).
- An utterance longer than ``max_utterance_s`` is talk, not a command word, and yields no event.
- The model's own open-set decision applies (``openset.acceptance``: the best command must reach
  the threshold calibrated at training and beat ``_unknown_`` and ``_silence_``); opt-in, a
  second opinion from Whisper's decoder on unsure commands (``decoder.filler``).
- Everything runs on a fixed grid (resampling blocks, 32-ms VAD frames), so the events do not
  depend on how the input was chunked: a microphone callback and one whole file agree exactly.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchaudio

from .audio import as_mono, check_peak, check_rate, effective_rate, resample
from .decoder.filler import EveryDecoder, FillerRatio
from .ensemble import EnsembleRecognizer
from .openset import acceptance

if TYPE_CHECKING:
    from speechxfer import Recognizer

VAD_RATE = 16_000  # the detector's internal rate: silero's and the Whisper encoders'
VAD_FRAME = 512  # silero's frame at 16 kHz (32 ms)
VAD_THRESHOLD = 0.5  # speech probability that opens an utterance (silero's default)
VAD_HYSTERESIS = 0.15  # it stays open down to VAD_THRESHOLD - this (silero's rule)
VAD_OFF_FLOOR = 0.01  # but never below this (silero's too): at 0 no pause would ever end it
VAD_RESET_S = 2.0  # silero's state is reset this often between utterances (see SileroVAD)
MIN_SILENCE_S = 0.25  # a pause this long ends an utterance; shorter ones are inside a word ("st-op")
MIN_SPEECH_S = 0.1  # shorter speech is a click or a breath
MAX_UTTERANCE_S = 1.5  # longer speech is talk, not a command word: no event
CLIP_S = 1.0  # the model sees at least this much audio around the utterance, as in training
PAD_S = 0.1  # and at least this much before the speech onset
RESAMPLE_BLOCK_S = 0.1  # input resampled in blocks of this length (a fixed grid)
DEFAULT_THRESHOLD = 0.5  # for a model saved without a calibrated threshold
# The filler check (``decoder.filler``), opt-in: an utterance the model gives a command with
# probability under FILLER_BELOW is dropped when Whisper's own first word beats the command's by
# more than the margin (nats). Confident decisions stand: a margin alone would also drop real
# commands Whisper mishears ("yes" written " yeah", "stop" written " start"). FILLER_MARGIN was
# chosen on streams of training-group speakers held out of a model; it is not the default
# because on the test speakers it cost more recall than it saved false accepts (README
# "Measured (issue 10)").
FILLER_MARGIN = 1.0
FILLER_BELOW = 0.9


@dataclass
class Detection:
    """A command heard: its label and probability, where its speech lies in the stream
    (``start``, ``end``, seconds), ``heard_at`` (stream seconds at which it was returned) and
    ``compute_s`` (wall seconds the model took on the utterance)."""

    label: str
    probability: float
    start: float
    end: float
    heard_at: float = 0.0
    compute_s: float = 0.0


@dataclass
class Segment:
    """One classified utterance, accepted or not: its best command and that command's
    acceptance score (0 where ``_unknown_``/``_silence_`` is more probable, or where the filler
    check dropped it)."""

    label: str
    probability: float
    score: float
    start: float
    end: float
    heard_at: float
    compute_s: float
    filler: float | None = None  # the filler check's ratio, where it ran

    def event(self) -> Detection:
        return Detection(self.label, self.probability, self.start, self.end, self.heard_at,
                         self.compute_s)


class SileroVAD:
    """Speech probability of each 32-ms frame of 16-kHz audio, from silero-vad's TorchScript
    model inside the installed wheel (no download). Stateful: frames must come in order.

    Its recurrent state drifts on a never-ending stream (silero-vad issue 725): after a minute
    of a built stream many of its words would fall under the speech threshold, where a reset
    right before each word keeps them above it. So the detector resets it every ``VAD_RESET_S``
    while no utterance is open.
    """

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        try:
            import silero_vad
        except ImportError as err:  # a declared dependency; only a broken install lacks it
            raise ImportError(f"voice activity detection needs the silero-vad package ({err})") \
                from err
        finally:
            torch.set_num_threads(threads)  # importing silero_vad sets torch to one thread
        with warnings.catch_warnings():  # its loader's deprecated importlib/jit calls
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = silero_vad.load_silero_vad()

    def reset(self) -> None:
        self.model.reset_states()

    def __call__(self, frame: torch.Tensor) -> float:
        with one_thread(), torch.inference_mode():
            return float(self.model(frame, VAD_RATE))


@contextmanager
def one_thread(threads: int = 1) -> Iterator[None]:
    """Run torch on ``threads`` threads inside the block. The stream's own work (32-ms VAD
    frames, 0.1-s resampling blocks) is too small to split: on a busy machine threads waiting
    on each other would make a VAD frame cost many times its single-thread time."""
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StreamResampler:
    """torchaudio's sinc resampling, chunk by chunk, with exactly the output ``audio.resample``
    gives the whole signal: the kernel runs over fixed blocks with the neighbouring samples as
    context, so chunk boundaries never show in the output."""

    def __init__(self, rate: int, target: int):
        self.rate, self.target = effective_rate(rate, target), target  # as audio.resample
        self.identity = self.rate == target
        if self.identity:
            return
        t = torchaudio.transforms.Resample(self.rate, target)
        g = math.gcd(self.rate, target)
        self.orig, self.new = self.rate // g, target // g
        self.kernel, self.width = t.kernel[:, 0, :].T.contiguous(), t.width  # [taps, new]
        self.frames = max(1, round(RESAMPLE_BLOCK_S * self.rate / self.orig))  # per conv call
        self.block = (self.frames - 1) * self.orig + self.kernel.shape[0]  # input per conv call
        self._buffer = torch.zeros(self.width)  # the zero padding torchaudio puts in front
        self._n_in = 0
        self._n_out = 0

    def _run(self, frames: int) -> torch.Tensor:
        """torchaudio's strided convolution, as one matrix product (cheaper on small blocks)."""
        taps = self.kernel.shape[0]
        x = self._buffer[: (frames - 1) * self.orig + taps]
        out = x.unfold(0, taps, self.orig) @ self.kernel
        self._buffer = self._buffer[frames * self.orig:]
        return out.reshape(-1)

    def feed(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return chunk
        self._n_in += chunk.numel()
        self._buffer = torch.cat([self._buffer, chunk])
        outs = []
        while self._buffer.numel() >= self.block:
            outs.append(self._run(self.frames))
        out = torch.cat(outs) if outs else torch.zeros(0)
        self._n_out += out.numel()
        return out

    def flush(self) -> torch.Tensor:
        """The last samples: the zero padding torchaudio puts after the signal, then trimmed to
        its output length."""
        if self.identity:
            return torch.zeros(0)
        total = math.ceil(self.new * self._n_in / self.orig)
        outs, produced = [], self._n_out
        while produced < total:
            short = self.block - self._buffer.numel()
            if short > 0:
                self._buffer = torch.cat([self._buffer, torch.zeros(short)])
            outs.append(self._run(self.frames))
            produced += outs[-1].numel()
        out = torch.cat(outs)[: total - self._n_out] if outs else torch.zeros(0)
        self._n_out += out.numel()
        return out


class Detector:
    """Feed chunks of samples (any length, at ``sample_rate``); get a ``Detection`` for each
    command as soon as its utterance has ended.

    ``threshold``: the open-set bar on the best command's probability; default the threshold
    calibrated and stored with the model (``DEFAULT_THRESHOLD`` if it has none).
    ``record=True`` keeps every classified utterance in ``segments`` (accepted or not), which
    is what a curve over thresholds needs. ``vad``: any callable giving a speech probability per
    512-sample 16-kHz frame, with ``reset()``; default ``SileroVAD``.
    ``filler_margin``: the filler check's margin (``FILLER_MARGIN`` is the calibrated one; None,
    the default: no check), run on models with a Whisper decoder (zero-shot, generative,
    combined, or an ensemble of them: ``filler_check``) for utterances whose acceptance score
    is under ``filler_below``.
    """

    def __init__(
        self,
        model: Recognizer,
        threshold: float | None = None,
        sample_rate: int = VAD_RATE,
        *,
        vad: Callable[[torch.Tensor], float] | None = None,
        vad_threshold: float = VAD_THRESHOLD,
        min_silence_s: float = MIN_SILENCE_S,
        min_speech_s: float = MIN_SPEECH_S,
        max_utterance_s: float = MAX_UTTERANCE_S,
        clip_s: float = CLIP_S,
        pad_s: float = PAD_S,
        record: bool = False,
        filler_margin: float | None = None,
        filler_below: float = FILLER_BELOW,
    ):
        if threshold is None:
            threshold = model.threshold if model.threshold is not None else DEFAULT_THRESHOLD
        if not 0.0 <= threshold <= 1.0 + 1e-9:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model, self.threshold, self.record = model, float(threshold), record
        if filler_margin is not None and not 0.0 <= filler_margin < math.inf:
            raise ValueError(f"filler_margin must be a non-negative number, got {filler_margin}")
        if not 0.0 < filler_below <= 1.0:
            raise ValueError(f"filler_below must be in (0, 1], got {filler_below}")
        if not 0.0 <= pad_s < math.inf:  # a negative pad would cut the word's onset off
            raise ValueError(f"pad_s must be a non-negative number of seconds, got {pad_s}")
        if not 0.0 < vad_threshold <= 1.0:  # above 1 no speech would ever open an utterance
            raise ValueError(f"vad_threshold must be in (0, 1], got {vad_threshold}")
        self.filler = None if filler_margin is None else filler_check(model)
        if filler_margin is not None and self.filler is None:
            raise ValueError(f"filler_margin: the filler check needs a model with a Whisper "
                             f"decoder (zero-shot, generative, combined, or an ensemble with "
                             f"one), not {getattr(model, 'model_kind', type(model).__name__)!r}")
        self.filler_margin, self.filler_below = filler_margin, filler_below
        self.filler_checks = 0  # utterances the filler check ran on
        self.filler_dropped = 0  # and dropped
        self.model_threads = torch.get_num_threads()  # the model may use them; the rest runs on one
        self.input_rate = check_rate(sample_rate, "<stream>")
        self.vad = vad if vad is not None else SileroVAD()
        self.vad_on = vad_threshold
        self.vad_off = max(vad_threshold - VAD_HYSTERESIS, VAD_OFF_FLOOR)
        frame_s = VAD_FRAME / VAD_RATE
        self.min_quiet = max(1, round(min_silence_s / frame_s))  # frames
        self.min_speech = min_speech_s * VAD_RATE  # samples
        self.max_utterance = max_utterance_s * VAD_RATE
        self.clip, self.pad = round(clip_s * VAD_RATE), round(pad_s * VAD_RATE)
        self._keep = round((max_utterance_s + clip_s + pad_s + 1.0) * VAD_RATE)  # audio history
        self._reset_every = max(1, round(VAD_RESET_S / frame_s))  # frames
        self._begin(0)
        self.segments: list[Segment] = []
        self.repaired = 0  # non-finite input samples set to zero
        self.overlong = 0  # utterances too long for a command: no event
        self.samples_in = 0  # input samples seen
        self.vad_s = 0.0  # wall seconds in the VAD
        self.model_s = 0.0  # and in the model
        self.compute_s = 0.0  # all processing, feed and flush
        self.cpu_s = 0.0  # the same in CPU seconds of this process: a busy machine's wall clock
        # counts the time other programs held the cores

    def _begin(self, at: int) -> None:
        """Start a stream at index ``at`` (at VAD_RATE) as a new detector would: after ``flush``
        the resampler holds its end padding and the VAD frame grid is off by the last partial
        frame, so a next stream fed on would get shifted times and other probabilities."""
        self._resampler = StreamResampler(self.input_rate, VAD_RATE)
        self.vad.reset()
        self._audio = torch.zeros(0)  # the last samples at VAD_RATE
        self._audio_start = at  # their index in the stream
        self._pending = 0  # samples of _audio not yet run through the VAD
        self._speech_start: int | None = None
        self._speech_end = at
        self._last_end = at  # where the previous utterance's speech ended: no window reaches it
        self._quiet = 0
        self._overlong = False
        self._since_reset = 0

    @property
    def seconds(self) -> float:
        """Stream time consumed so far."""
        return self.samples_in / self.input_rate

    def feed(self, samples: np.ndarray | torch.Tensor) -> list[Detection]:
        """Process one chunk; return the commands whose utterances ended in it."""
        if np.size(samples) == 0:
            return []
        began, cpu = time.perf_counter(), time.process_time()
        chunk = as_mono(samples, "<stream>")
        bad = ~torch.isfinite(chunk)
        if bad.any():  # before resampling, which would smear a NaN over its neighbours
            self.repaired += int(bad.sum())
            chunk = chunk.masked_fill(bad, 0.0)
        check_peak(float(chunk.abs().max()), "<stream>")  # unscaled integer PCM: refuse, not guess
        self.samples_in += chunk.numel()
        with one_thread():
            events = self._push(self._resampler.feed(chunk))
        self.compute_s += time.perf_counter() - began
        self.cpu_s += time.process_time() - cpu
        return events

    def flush(self) -> list[Detection]:
        """End of the stream: run what is buffered and close an utterance still open. A chunk
        fed after it starts a new stream, timed on from ``seconds``."""
        began, cpu = time.perf_counter(), time.process_time()
        with one_thread():
            events = self._push(self._resampler.flush())
            if self._pending:  # the last partial frame, zero-padded as silence
                events += self._push(torch.zeros(VAD_FRAME - self._pending))
            if self._speech_start is not None:
                events += self._close(self._audio_start + self._audio.numel())
            self._begin(round(self.samples_in * VAD_RATE / self.input_rate))
        self.compute_s += time.perf_counter() - began
        self.cpu_s += time.process_time() - cpu
        return events

    def _push(self, audio: torch.Tensor) -> list[Detection]:
        self._audio = torch.cat([self._audio, audio])
        self._pending += audio.numel()
        events = []
        while self._pending >= VAD_FRAME:
            at = self._audio.numel() - self._pending
            frame = self._audio[at: at + VAD_FRAME]
            self._pending -= VAD_FRAME
            began = time.perf_counter()
            p = self.vad(frame)
            self.vad_s += time.perf_counter() - began
            end = self._audio_start + at + VAD_FRAME  # stream index after this frame
            events += self._step(p, end)
        drop = self._audio.numel() - self._pending - self._keep
        if drop > 0:
            self._audio, self._audio_start = self._audio[drop:], self._audio_start + drop
        return events

    def _step(self, p: float, end: int) -> list[Detection]:
        self._since_reset += 1
        if self._speech_start is None:
            if self._since_reset >= self._reset_every:  # on the frame grid: chunking-proof
                self.vad.reset()
                self._since_reset = 0
            if p >= self.vad_on:
                self._speech_start, self._speech_end = end - VAD_FRAME, end
                self._quiet, self._overlong = 0, False
            return []
        if p >= self.vad_off:
            self._speech_end, self._quiet = end, 0
        else:
            self._quiet += 1
        if self._speech_end - self._speech_start > self.max_utterance:
            self._overlong = True  # wait for the pause that ends it; then drop it
        if self._quiet >= self.min_quiet:
            return self._close(end)
        return []

    def _close(self, now: int) -> list[Detection]:
        start, end = self._speech_start, self._speech_end
        overlong, previous = self._overlong, self._last_end
        self._speech_start, self._quiet, self._overlong = None, 0, False
        if overlong:
            self.overlong += 1
            self._last_end = end
            return []
        if end - start < self.min_speech:
            return []
        self._last_end = end
        a = max(self._audio_start, previous, min(start - self.pad, now - self.clip))
        wave = self._audio[a - self._audio_start: now - self._audio_start]
        segment = self._classify(wave, start / VAD_RATE, end / VAD_RATE, now / VAD_RATE)
        if self.record:
            self.segments.append(segment)
        return [segment.event()] if segment.score >= self.threshold else []

    def _classify(self, wave: torch.Tensor, start: float, end: float, now: float) -> Segment:
        began = time.perf_counter()
        with one_thread(self.model_threads):
            wave = resample(wave, VAD_RATE, self.model.sample_rate)
            probs = np.asarray(self.model.predict_proba([wave]))
            best, score = acceptance(self.model.labels, probs)
            i, score = int(best[0]), float(score[0])
            label, ratio = self.model.labels[i], None
            if self.filler is not None and 0.0 < score < self.filler_below:
                ratio = float(self.filler.ratio([wave], [label])[0])
                self.filler_checks += 1
                if ratio < -self.filler_margin:
                    score = 0.0
                    self.filler_dropped += 1
        spent = time.perf_counter() - began
        self.model_s += spent
        return Segment(label, float(probs[0, i]), score, start, end, now, spent, ratio)


def filler_check(model: Recognizer) -> FillerRatio | EveryDecoder | None:
    """The filler check of a model: its Whisper decoder's; for an ensemble, every member
    decoder's (``EveryDecoder``: dropped only when all contradict); None where none has one."""
    if isinstance(model, EnsembleRecognizer):
        checks = [c for c in map(filler_check, model.members) if c is not None]
        return EveryDecoder(checks) if checks else None
    return FillerRatio.of(model)


def detect_chunks(detector: Detector, chunks: Iterable[np.ndarray]) -> Iterator[Detection]:
    """Run a detector over an iterable of chunks (a file read in blocks, a microphone queue)."""
    for chunk in chunks:
        yield from detector.feed(chunk)
    yield from detector.flush()
