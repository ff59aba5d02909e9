"""Every audio I/O rule in one place: reading, down-mixing, resampling, crop/pad.

Policy (documented in the README):
- any format soundfile reads (WAV, FLAC, OGG, ...); multi-channel audio is averaged to mono;
- raw samples may be float (full scale 1) or integer PCM (int8, uint8, int16, int32), scaled to
  [-1, 1] by soundfile's conventions, so an int16 array means what the same WAV file means;
- resampled with torchaudio to the rate the encoder was trained at;
- clips longer than ``MAX_SECONDS`` are rejected rather than silently truncated: a command
  recogniser fed a 40-s recording is almost always a mistake worth reporting; a file's length
  is checked from its header, before anything is decoded;
- a file cut short (a WAV's data chunk, or an MP3's Xing/Info frame count, announcing more than
  the file holds) is rejected rather than read in part; streaming placeholders are not sizes;
- for batching, clips are right-padded with zeros and their true lengths travel alongside,
  so pooling only sees real audio; ``crop_or_pad`` centre-crops when a fixed length is asked.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000  # Hz, the rate Whisper, wav2vec2 and HuBERT were trained at
MAX_SECONDS = 30.0  # longest clip accepted: Whisper's whole context window
MIN_SECONDS = 0.05  # shorter clips hold no word
SILENCE_PEAK = 1e-4  # peak amplitude (full scale = 1) under which a clip counts as silent
# peak amplitude over which float samples are integer PCM that was never scaled (int16 speech
# cast to float peaks in the thousands); float audio, even loudness-normalised, stays far under
MAX_PEAK = 100.0
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
# recordings soundfile cannot decode (phones, browsers, video): a dataset still lists them, so
# reading reports each with how to convert it, not a class recorded on a phone left out unsaid
UNDECODED_SUFFIXES = (".m4a", ".aac", ".mp4", ".webm", ".3gp", ".amr", ".wma", ".mov", ".mkv",
                      ".mka")
MAX_SAMPLE_RATE = 768_000  # Hz, the highest rate audio hardware records at
# An exact sinc resampler's kernel is (rate / gcd) x (target / gcd): an odd rate such as 44101 Hz
# would need gigabytes, so past this size the rate is rounded to a multiple of RATE_STEP first.
MAX_RESAMPLE_RATIO_PRODUCT = 10_000_000
RATE_STEP = 50  # Hz
# a WAV chunk size from here up is a streaming writer's "unknown length" (ffmpeg 0xFFFFFFFF,
# arecord 0x7FFFFFFF, sox 0x7FFFF000), not a clip's finalised size (2 GiB of audio)
WAV_PLACEHOLDER = 0x7F000000
# a header may overstate its audio by a few bytes (writers that miscount another chunk): a file
# short by less than this is read as it is; a clip cut mid-word loses far more
CUT_TOLERANCE_S = 0.02
READ_BLOCK = 1 << 20  # samples decoded at a time (all channels), down-mixed before the next
# integer PCM -> (offset, full scale), as soundfile reads WAV; 8-bit WAV is unsigned
PCM_SCALE = {
    np.dtype(np.int8): (0, 2**7), np.dtype(np.uint8): (2**7, 2**7),
    np.dtype(np.int16): (0, 2**15), np.dtype(np.int32): (0, 2**31),
}


T = TypeVar("T")


class AudioError(ValueError):
    """A clip that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Clip:
    """One recording with whatever labels are known for it (task name -> value); ``word``:
    what was said when the command label no longer names it (another word as ``_unknown_``)."""

    path: Path
    labels: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None
    word: str | None = None

    @property
    def label(self) -> str | None:
        """The command label, the task every dataset has."""
        return self.labels.get("command")


def is_audio_name(path: Path) -> bool:
    """A name a dataset reads as a recording: an audio suffix (any case), or one soundfile cannot
    decode (reading reports it), and not hidden: macOS writes a ``._NAME.wav`` (AppleDouble, no
    audio) beside every file copied to a USB stick or network share."""
    suffix = path.suffix.lower()
    return not path.name.startswith(".") and suffix in AUDIO_SUFFIXES + UNDECODED_SUFFIXES


def audio_files(folder: Path) -> list[Path]:
    """The entries of ``folder`` named as audio (``is_audio_name``), sorted, broken links
    included: reading reports those (left out here, a dangling or looping symlink's clip would
    vanish from a run without a word)."""
    return sorted(p for p in folder.iterdir() if not p.is_dir() and is_audio_name(p))


def as_mono(samples: np.ndarray | torch.Tensor, source: str = "<samples>") -> torch.Tensor:
    """Samples as [time] or [time, channels] (or [channels, time]) -> mono float32 tensor.

    The one entry point for raw samples (the API and the stream), so integer PCM is scaled here.
    """
    wave = torch.from_numpy(_as_float32(samples, source))
    if wave.numel() == 0:
        raise AudioError(source, "empty audio (no samples)")
    if wave.ndim == 2:
        # soundfile gives [time, channels]; treat the shorter axis as channels
        wave = wave.mean(dim=1) if wave.shape[1] <= wave.shape[0] else wave.mean(dim=0)
    if wave.ndim == 0:  # predict_batch(samples) iterates one clip's samples
        raise AudioError(source, "a single number, not a clip: predict_batch takes a list of "
                                 "clips; predict(samples, sample_rate) takes one")
    if wave.ndim != 1:
        raise AudioError(source, f"expected 1-D or 2-D samples, got shape {tuple(wave.shape)}")
    return wave


def _as_float32(samples: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    """Float samples as float32, integer PCM scaled to [-1, 1]; any other type is an AudioError."""
    if isinstance(samples, (bytes, bytearray)) or (
            isinstance(samples, memoryview) and samples.format in ("B", "b", "c")):
        # numpy reads a bytearray as uint8 samples: int16 PCM would be heard as noise twice as long
        raise AudioError(source, f"raw bytes ({type(samples).__name__}), not samples: their "
                                 "sample type is unknown; pass np.frombuffer(data, np.int16) (or "
                                 "the PCM's own type), or an encoded file's path")
    try:
        if isinstance(samples, torch.Tensor):  # half and bfloat16 have no numpy twin: widen first
            samples = samples.detach().cpu()
            samples = (samples.float() if samples.is_floating_point() else samples).numpy()
        array = np.asarray(samples)
    except (ValueError, TypeError, RuntimeError) as err:
        raise AudioError(source, f"samples are not a numeric array ({err})") from None
    if array.dtype.kind in "iu" and not array.dtype.isnative:  # big-endian PCM (AIFF, network)
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "f":
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, which check_wave rejects
            array = array.astype(np.float32, copy=False)
        # a view with negative strides (np.flip, x[::-1]) is no tensor: torch.from_numpy refuses it
        return array if array.flags.c_contiguous else array.copy()
    if array.dtype in PCM_SCALE:
        offset, scale = PCM_SCALE[array.dtype]
        wave = array.astype(np.float32)
        wave -= offset
        wave /= scale
        return wave
    if array.dtype.kind in "iu":
        raise AudioError(source, f"samples of type {array.dtype} have no known full scale: pass "
                                 "integer PCM as int8, uint8, int16 or int32, or float samples")
    raise AudioError(source, f"samples of type {array.dtype} are not audio: pass float samples "
                             "(full scale 1) or integer PCM (int8, uint8, int16, int32)")


def check_rate(sample_rate: object, source: str = "<samples>") -> int:
    """A sample rate as a whole number of Hz (8000.0 is 8000; 8000.5 and "8000" are refused)."""
    whole = isinstance(sample_rate, numbers.Integral) or (
        isinstance(sample_rate, numbers.Real) and math.isfinite(sample_rate)
        and float(sample_rate).is_integer()
    )
    if isinstance(sample_rate, bool) or not whole:
        raise AudioError(source, f"invalid sample rate {sample_rate!r}: need a whole number of Hz")
    rate = int(sample_rate)
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise AudioError(source, f"invalid sample rate {rate}: need 1 to {MAX_SAMPLE_RATE} Hz")
    return rate


def effective_rate(rate: int, target: int) -> int:
    """The rate ``resample`` reads audio at on its way to ``target``: ``rate`` itself, or, when
    the two share too few factors for a small sinc kernel, ``rate`` rounded to a multiple of
    ``RATE_STEP``."""
    g = math.gcd(rate, target)
    if (rate // g) * (target // g) > MAX_RESAMPLE_RATIO_PRODUCT:
        return max(RATE_STEP, round(rate / RATE_STEP) * RATE_STEP)
    return rate


def resample(
    wave: torch.Tensor, sample_rate: int, target_rate: int, source: str = "<samples>"
) -> torch.Tensor:
    """torchaudio's band-limited resampling; a no-op at the target rate.

    A rate sharing few factors with the target is first rounded to a multiple of ``RATE_STEP``
    (a 44101 Hz clip is read as 44100 Hz) so the sinc kernel stays small.
    """
    sample_rate = effective_rate(check_rate(sample_rate, source), target_rate)
    if sample_rate == target_rate:
        return wave.contiguous()
    return AF.resample(wave, sample_rate, target_rate).contiguous()


def to_mono_resampled(
    samples: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE,
    source: str = "<samples>",
) -> torch.Tensor:
    """A checked clip: mono float32 at ``target_rate``, or AudioError saying what is wrong."""
    sample_rate = check_rate(sample_rate, source)
    wave = as_mono(samples, source)
    check_wave(wave, sample_rate, source)
    return resample(wave, sample_rate, target_rate, source)


def _too_long(seconds: float) -> str:
    return (f"too long ({seconds:.1f} s > {MAX_SECONDS:.0f} s window): a clip holds one command; "
            "split it first (speechxfer listen finds the commands in a long recording)")


def check_wave(wave: torch.Tensor, sample_rate: int, source: str) -> None:
    """Reject clips no recogniser can use, with a message that says why."""
    seconds = wave.numel() / sample_rate
    if not torch.isfinite(wave).all():
        raise AudioError(source, "audio contains NaN or infinite samples")
    if seconds < MIN_SECONDS:
        raise AudioError(source, f"too short ({seconds:.3f} s < {MIN_SECONDS} s)")
    if seconds > MAX_SECONDS:
        raise AudioError(source, _too_long(seconds))
    peak = float(wave.abs().max())
    if peak < SILENCE_PEAK:
        raise AudioError(source, "silent (peak amplitude below 1e-4)")
    check_peak(peak, source)


def check_peak(peak: float, source: str) -> None:
    """Refuse float samples far beyond full scale: the features of int16 PCM cast to float
    without scaling are shifted, and the answer would be confidently wrong, not an error."""
    if peak > MAX_PEAK:
        raise AudioError(source, f"peak amplitude {peak:.6g} is far beyond full scale (1.0): "
                                 "integer PCM cast to float? scale it to [-1, 1] (int16: divide "
                                 "by 32768) or pass the integer array itself")


def load(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read a file as a mono float32 tensor at ``sample_rate``; raise AudioError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "a folder, not an audio file" if path.is_dir() else
                         "a broken symbolic link (its target is missing, or links loop)"
                         if path.is_symlink() else "file not found")
    try:
        samples, rate = _read_mono(str(path), path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise unreadable(path, err) from None
    return to_mono_resampled(samples, rate, sample_rate, source=str(path))


def undecodable(path: str | Path) -> str | None:
    """How to convert a file of a phone's, browser's or video's format (``UNDECODED_SUFFIXES``),
    which soundfile cannot decode; None for any other file."""
    suffix = Path(path).suffix
    if suffix.lower() not in UNDECODED_SUFFIXES:
        return None
    return f"soundfile cannot decode {suffix}: convert it first, e.g. ffmpeg -i IN{suffix} OUT.wav"


def unreadable(path: str | Path, err: object) -> AudioError:
    """The error of a file soundfile cannot open, with ``undecodable``'s hint where it has one
    (libsndfile's own words do not say what to do)."""
    hint = undecodable(path)
    return AudioError(path, f"not readable as audio ({err})" + (f"; {hint}" if hint else ""))


def decode(data: bytes, source: str, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``load`` for an encoded file held in memory (an upload): the same checks and messages,
    naming it ``source``, and nothing written to or read from the file system."""
    buffer = io.BytesIO(data)
    try:
        samples, rate = _read_mono(buffer, source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        problem = str(err).replace(repr(buffer), repr(source))  # libsndfile's words, as for a path
        raise unreadable(source, problem) from None
    return to_mono_resampled(samples, rate, sample_rate, source=source)


def _read_mono(file: str | io.BytesIO, source: str | Path) -> tuple[np.ndarray, int]:
    """Decode block by block, down-mixing as it goes; the header's length is checked first.

    A small file can hold hours of silence or claim a thousand channels: neither is decoded
    whole, so memory stays near one ``MAX_SECONDS`` mono clip.
    """
    with sf.SoundFile(file) as f:
        # libsndfile reads what survives of a file cut short without a word: "seven" cut to
        # "se" would be trained on or recognised as a whole clip (a cut FLAC fails to decode)
        if (problem := wav_cut_short(file)) is not None:
            raise AudioError(source, problem)
        mp3_frame = _from_start(file, _mp3_counted_frame) if f.format == "MP3" else 0
        rate = check_rate(f.samplerate, str(source))
        limit = int(MAX_SECONDS * rate)
        if f.frames > limit:
            raise AudioError(source, _too_long(f.frames / rate))
        blocks, n, frames = [], 0, max(1, READ_BLOCK // f.channels)
        while len(block := f.read(frames, dtype="float32", always_2d=True)):
            blocks.append(block.mean(axis=1))
            n += len(block)
            if n > limit:  # the header understated the length
                raise AudioError(source, _too_long(n / rate))
        if mp3_frame and n < f.frames - mp3_frame:  # a decoder may stop up to a frame short
            raise AudioError(source, _cut_short(f"{f.frames / rate:.3f} s of audio",
                                                f"{n / rate:.3f} s"))
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate


def wav_cut_short(file: str | io.BytesIO) -> str | None:
    """Why a WAV file or upload is cut short (``_wav_truncation``), or None: for readers that
    take a file's length from its header, as decoding and streaming do."""
    return _from_start(file, _wav_truncation)


def _from_start(file: str | io.BytesIO, read: Callable[[BinaryIO, int], T]) -> T:
    """``read(stream, size)`` over the file's bytes from its start; an upload, which soundfile
    is reading too, gets its position back."""
    if isinstance(file, io.BytesIO):
        position = file.tell()
        try:
            size = file.seek(0, io.SEEK_END)
            file.seek(0)
            return read(file, size)
        finally:
            file.seek(position)
    with open(file, "rb") as f:
        return read(f, os.fstat(f.fileno()).st_size)


def _cut_short(announced: str, held: str) -> str:
    return (f"truncated: the header announces {announced}, the file holds {held}; was it cut "
            "short while being written or copied?")


def _wav_truncation(f: BinaryIO, size: int) -> str | None:
    """Why a WAV is cut short (its data chunk announces more bytes than the file holds), or None.

    Only a finalised header counts: streaming writers, which cannot seek back, leave placeholder
    sizes (0, 0xFFFFFFFF, 0x7FFFFFFF, a RIFF size that covers no data); those files are read as
    before. RF64/BW64 give their sizes in a ds64 chunk. Other formats, and WAVs whose chunks do
    not parse, are left to libsndfile.
    """
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64", b"BW64") or head[8:] != b"WAVE":
        return None
    order = ">" if head[:4] == b"RIFX" else "<"
    riff = struct.unpack(order + "I", head[4:8])[0]
    position, bytes_per_second, data64 = 12, 0, None
    while len(chunk := f.read(8)) == 8:
        name, length = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
        start = position + 8
        if name == b"ds64" and len(body := f.read(16)) == 16:  # RF64's 64-bit RIFF, data sizes
            riff, data64 = struct.unpack(order + "QQ", body)
        elif name == b"fmt " and len(body := f.read(16)) == 16:
            rate, bytes_per_second, block = struct.unpack(order + "IIH", body[4:14])
            bytes_per_second = bytes_per_second or rate * block  # a header that leaves it 0
        elif name == b"data":
            length = data64 if length == 0xFFFFFFFF and data64 is not None else length
            held = size - start
            finalised = (0 < length < WAV_PLACEHOLDER and 0 < riff < WAV_PLACEHOLDER
                         and riff + 8 >= start + length)
            if not finalised or length - held <= bytes_per_second * CUT_TOLERANCE_S:
                return None
            if not bytes_per_second:
                return _cut_short(f"{length} bytes of audio", f"{held} bytes")
            return _cut_short(f"{length / bytes_per_second:.3f} s of audio ({length} bytes)",
                              f"{held / bytes_per_second:.3f} s ({held} bytes)")
        position = start + length + (length & 1)  # chunks are padded to an even size
        f.seek(position)
    return None


def _mp3_counted_frame(f: BinaryIO, size: int) -> int:
    """Samples per frame when the first MPEG frame is a Xing/Info tag with a frame count (LAME
    and ffmpeg write one), else 0: the length soundfile reports is then the encoder's, not a
    guess from the file's size, and a decode that ends short of it met the end of a file cut
    short. A count of 0 is ffmpeg's placeholder when it writes to a pipe: no count."""
    head, start = f.read(10), 0
    if len(head) == 10 and head[:3] == b"ID3":  # ID3v2: a syncsafe size, and maybe a footer
        start = 10 + sum((b & 0x7F) << 7 * (3 - i) for i, b in enumerate(head[6:10]))
        start += 10 if head[5] & 0x10 else 0
    f.seek(start)
    frame = f.read(4 + 2 + 32 + 12)
    if len(frame) < 50 or frame[0] != 0xFF or frame[1] & 0xE6 != 0xE2:  # sync, layer III
        return 0
    mpeg1, mono = frame[1] & 0x18 == 0x18, frame[3] >> 6 == 3
    side = 4 + (0 if frame[1] & 1 else 2) + ((17 if mono else 32) if mpeg1 else (9 if mono else 17))
    counted = (frame[side:side + 4] in (b"Xing", b"Info") and frame[side + 7] & 1
               and frame[side + 8:side + 12] != bytes(4))
    return (1152 if mpeg1 else 576) if counted else 0


def crop_or_pad(wave: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Centre-crop or right-pad with zeros to exactly ``n_samples``."""
    n = wave.shape[-1]
    if n > n_samples:
        start = (n - n_samples) // 2
        return wave[..., start : start + n_samples]
    return torch.nn.functional.pad(wave, (0, n_samples - n))


def batch_waves(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad clips into one [batch, time] tensor and return it with the true lengths."""
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w
    return batch, lengths


def batches_by_length(waves: list[torch.Tensor], batch_size: int) -> Iterator[list[int]]:
    """Index lists of up to ``batch_size`` clips of similar length, shortest first: batched
    inference pads each clip only to its neighbours' length (callers write results by index)."""
    order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
