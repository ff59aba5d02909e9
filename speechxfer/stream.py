"""Where a stream's samples come from: a recording read lazily in blocks, or the microphone.

Both give blocks of float32 samples for ``detect.Detector`` (which takes any chunk length and
rate), and both fail before any model runs: a missing or unreadable file is an ``AudioError``
naming it, a missing microphone package or device a ``MicrophoneError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import SAMPLE_RATE, AudioError, check_rate, unreadable, wav_cut_short


class MicrophoneError(RuntimeError):
    """No microphone input: the optional package, PortAudio or an input device is missing."""


def file_length(path: str | Path) -> tuple[int, int]:
    """A recording's sample rate and length in frames, from its header alone: a missing, empty
    or non-audio file is an ``AudioError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "not a file" if path.exists() else "file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise unreadable(path, err) from None
    rate = check_rate(info.samplerate, str(path))
    if info.frames <= 0:
        raise AudioError(path, "empty audio (no samples)")
    if (problem := wav_cut_short(str(path))) is not None:  # streamed in part, with no word
        raise AudioError(path, problem)
    return rate, info.frames


def file_chunks(path: str | Path, block_s: float = 0.1) -> tuple[int, Iterator[np.ndarray]]:
    """A recording's sample rate and its blocks, read lazily so any length streams.

    The header is checked first (``file_length``), so a bad file fails before any model runs.
    """
    path = Path(path)
    rate, _ = file_length(path)

    def blocks() -> Iterator[np.ndarray]:
        try:  # [frames, channels] always: a block shorter than its channel count stays right
            for block in sf.blocks(str(path), blocksize=max(1, int(rate * block_s)),
                                   dtype="float32", always_2d=True):
                yield block.mean(axis=1)
        except (sf.LibsndfileError, RuntimeError) as err:  # a file damaged past its header
            raise AudioError(path, f"read failed ({err})") from None

    return rate, blocks()


def microphone_chunks(sample_rate: int = SAMPLE_RATE, block_s: float = 0.1) -> Iterator[np.ndarray]:
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
