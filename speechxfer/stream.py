"""Streaming recognition: cut a live signal into utterances and label each one.

Commands are short words separated by pauses, so the stream is segmented by energy: a segment
opens when a 20-ms frame rises ``START_DB`` above the running noise floor, closes after
``END_SILENCE_S`` of quiet, and is then classified whole by any ``Recognizer``. This keeps every
model call on a complete word, the way the models were trained, instead of sliding a window over
half-words.

A sound that runs ``MAX_SEGMENT_S`` without a pause (a fan, a tone, music) is longer than any
command: it is dropped and the noise floor is raised to its level, so it stops opening segments
instead of yielding a false event every few seconds. Non-finite samples (a NaN or Inf from a
broken driver or file) are set to zero and counted, so one bad sample neither poisons the noise
floor nor aborts the stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .audio import AudioError, as_mono, resample
from .model import Recognizer
from .vocab import is_command

FRAME_S = 0.02  # analysis frame length, seconds
START_DB = 12.0  # frame energy above the noise floor that opens a segment, dB
END_SILENCE_S = 0.3  # quiet that closes a segment, seconds
MIN_SEGMENT_S = 0.12  # shorter bursts are clicks, not words
MAX_SEGMENT_S = 2.5  # a sound this long without a pause is background, not a command
PRE_ROLL_S = 0.1  # audio kept before the onset so the word's start is not clipped
FLOOR_ADAPT = 0.05  # how fast the noise floor rises with quiet frames (per frame)
FLOOR_FALL = 0.3  # and how fast it falls: fast, so words right after a loud sound stops are heard
ABSOLUTE_FLOOR = 1e-4  # RMS treated as silence however quiet the line is


class MicrophoneError(RuntimeError):
    """No microphone input: the optional package, PortAudio or an input device is missing."""


@dataclass
class Event:
    """One recognised utterance: its label, probability and position in the stream (seconds)."""

    label: str
    probability: float
    start: float
    end: float


class CommandStream:
    """Feed chunks of audio as they arrive; receive an ``Event`` for each command heard.

    ``threshold``: utterances whose best probability is below it are dropped (not a command).
    """

    def __init__(self, recognizer: Recognizer, sample_rate: int, threshold: float = 0.5):
        self.recognizer = recognizer
        self.input_rate = sample_rate
        self.rate = recognizer.sample_rate
        self.threshold = threshold
        self.frame = int(FRAME_S * self.rate)
        self._pending = torch.zeros(0)
        self._history: list[torch.Tensor] = []  # recent quiet frames, for the pre-roll
        self._segment: list[torch.Tensor] = []
        self._quiet = 0
        self._floor: float | None = None
        self._time = 0  # samples consumed at the model rate
        self._start = 0
        self.repaired = 0  # non-finite input samples set to zero
        self.dropped = 0  # sustained sounds taken as background rather than commands

    def feed(self, samples: np.ndarray | torch.Tensor) -> list[Event]:
        """Process one chunk (any length, at the stream's sample rate); return finished events."""
        if np.size(samples) == 0:
            return []
        chunk = as_mono(samples, "<stream>")
        bad = ~torch.isfinite(chunk)
        if bad.any():  # before resampling, which would smear a NaN over its neighbours
            self.repaired += int(bad.sum())
            chunk = chunk.masked_fill(bad, 0.0)
        chunk = resample(chunk, self.input_rate, self.rate)
        self._pending = torch.cat([self._pending, chunk])
        events = []
        while self._pending.numel() >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            event = self._step(frame)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[Event]:
        """Classify whatever segment is still open (end of a file or of the session)."""
        event = self._close() if self._segment else None
        return [event] if event is not None else []

    def _step(self, frame: torch.Tensor) -> Event | None:
        rms = max(float(frame.double().pow(2).mean().sqrt()), ABSOLUTE_FLOOR)  # no float32 overflow
        self._floor = rms if self._floor is None else self._floor
        loud = 20 * np.log10(rms / self._floor) > START_DB
        self._time += frame.numel()
        if not self._segment:
            if loud:
                self._segment = [*self._history, frame]
                self._start = self._time - sum(f.numel() for f in self._segment)
                self._quiet = 0
            else:
                self._floor += (FLOOR_FALL if rms < self._floor else FLOOR_ADAPT) * (rms - self._floor)
                self._history = (self._history + [frame])[-int(PRE_ROLL_S / FRAME_S) :]
            return None
        self._segment.append(frame)
        self._quiet = 0 if loud else self._quiet + 1
        length = sum(f.numel() for f in self._segment) / self.rate
        if self._quiet * FRAME_S >= END_SILENCE_S:
            return self._close()
        if length >= MAX_SEGMENT_S:
            self._drop_sustained()
        return None

    def _drop_sustained(self) -> None:
        """Take a segment with no pause as background: its level becomes the noise floor."""
        levels = [float(f.double().pow(2).mean().sqrt()) for f in self._segment]
        self._floor = max(float(np.median(levels)), ABSOLUTE_FLOOR)
        self._segment, self._history = [], []
        self.dropped += 1

    def _close(self) -> Event | None:
        wave = torch.cat(self._segment)
        self._segment, self._history = [], []
        voiced = wave.numel() / self.rate - self._quiet * FRAME_S
        if voiced < MIN_SEGMENT_S:
            return None
        prediction = self.recognizer.predict_batch([wave], sample_rate=self.rate)[0]
        if prediction.probability < self.threshold or not is_command(prediction.label):
            return None
        start = self._start / self.rate
        return Event(prediction.label, prediction.probability, start, start + wave.numel() / self.rate)


def stream_chunks(stream: CommandStream, chunks: Iterable[np.ndarray]) -> Iterator[Event]:
    """Run a stream over an iterable of chunks (a file read in blocks, a microphone queue)."""
    for chunk in chunks:
        yield from stream.feed(chunk)
    yield from stream.flush()


def file_chunks(path: str | Path, block_s: float = 0.1) -> tuple[int, Iterator[np.ndarray]]:
    """A recording's sample rate and its blocks, read lazily so any length streams.

    The header is checked first, so a missing, empty or non-audio file is an ``AudioError``
    naming it before any model runs.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "not a file" if path.exists() else "file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(path, f"not readable as audio ({err})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(path, "empty audio (no samples)")

    def blocks() -> Iterator[np.ndarray]:
        try:
            yield from sf.blocks(str(path), blocksize=max(1, int(info.samplerate * block_s)),
                                 dtype="float32")
        except (sf.LibsndfileError, RuntimeError) as err:  # a file damaged past its header
            raise AudioError(path, f"read failed ({err})") from None

    return info.samplerate, blocks()


def microphone_chunks(sample_rate: int = 16_000, block_s: float = 0.1) -> Iterator[np.ndarray]:
    """Blocks of mono float32 audio from the default input device (needs ``sounddevice``).

    The device is opened here, not on the first block, so a missing one fails before listening.
    """
    try:
        import sounddevice
    except (ImportError, OSError) as err:  # optional: servers and CI have no microphone
        raise MicrophoneError(f"microphone input needs: pip install 'speechxfer[mic]' ({err})") from err
    blocksize = int(sample_rate * block_s)
    try:
        mic = sounddevice.InputStream(samplerate=sample_rate, channels=1, dtype="float32",
                                      blocksize=blocksize)
    except sounddevice.PortAudioError as err:
        raise MicrophoneError(f"no microphone input ({err})") from err

    def blocks() -> Iterator[np.ndarray]:
        with mic:
            while True:
                block, _ = mic.read(blocksize)
                yield block[:, 0]

    return blocks()
