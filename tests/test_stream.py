"""Streaming: a long recording of several spoken digits yields one event per digit, in order."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechxfer.audio import load
from speechxfer.classic import build_classic
from speechxfer.cli import main
from speechxfer.stream import CommandStream, stream_chunks

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
DIGITS = ("2", "5", "8")


@pytest.fixture(scope="module")
def svm(tmp_path_factory):
    waves, labels = [], []
    for d in DIGITS:
        for take in range(10, 30):
            waves.append(load(FSDD / f"{d}_jackson_{take}.wav"))
            labels.append(d)
    model = build_classic("svm").fit(waves, labels)
    folder = tmp_path_factory.mktemp("svm")
    model.save(folder)
    return model, folder


SAID = ["5", "2", "8", "8", "5", "2"]


def session() -> np.ndarray:
    """Six held-out takes at 8 kHz with 0.6 s of quiet noise between them."""
    rng = np.random.default_rng(0)
    parts = []
    for i, d in enumerate(SAID):
        parts.append(0.002 * rng.standard_normal(4800))
        parts.append(sf.read(FSDD / f"{d}_jackson_{i}.wav")[0])
    parts.append(0.002 * rng.standard_normal(4800))
    return np.concatenate(parts)


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "session.wav"
    sf.write(path, session(), 8000)
    return path, SAID


def run_stream(model, audio: np.ndarray, rate: int = 8000, threshold: float = 0.0):
    stream = CommandStream(model, rate, threshold=threshold)
    block = rate // 10  # 100-ms chunks
    events = list(stream_chunks(stream, (audio[i : i + block] for i in range(0, len(audio), block))))
    return stream, events


def test_one_event_per_spoken_digit(svm, recording):
    model, _ = svm
    path, said = recording
    audio, rate = sf.read(path)
    stream = CommandStream(model, rate, threshold=0.0)
    blocks = (audio[i : i + 800] for i in range(0, len(audio), 800))  # 100-ms chunks
    events = list(stream_chunks(stream, blocks))
    assert len(events) == len(said)
    assert all(a.end <= b.start for a, b in itertools.pairwise(events))
    assert sum(e.label == s for e, s in zip(events, said)) >= 5


def test_silence_gives_no_event(svm):
    model, _ = svm
    stream = CommandStream(model, 16_000)
    quiet = 0.001 * np.random.default_rng(1).standard_normal(16_000 * 3)
    assert list(stream_chunks(stream, [quiet[:20_000], quiet[20_000:]])) == []


def test_cli_stream_file(svm, recording, capsys):
    _, folder = svm
    path, said = recording
    assert main(["stream", str(folder), str(path), "--threshold", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(said)


def test_clean_session_reference(svm):
    """The words the svm hears in the clean session: the baseline the repaired streams must match."""
    model, _ = svm
    _, events = run_stream(model, session())
    assert [e.label for e in events] == SAID


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["gap", "word"])
def test_non_finite_sample_is_repaired_and_counted(svm, bad, where):
    """One NaN/Inf sample neither deafens nor aborts the stream: every later word is still heard."""
    model, _ = svm
    audio = session()
    word_start = 4800 + len(sf.read(FSDD / "5_jackson_0.wav")[0]) + 4800  # second word
    at = {"gap": word_start - 2400, "word": word_start + 1500}[where]
    audio[at] = bad
    stream, events = run_stream(model, audio)
    assert [e.label for e in events] == SAID
    assert stream.repaired == 1


def test_non_finite_chunk_through_cli_is_reported(svm, tmp_path, capsys):
    _, folder = svm
    audio = session()
    audio[len(audio) // 2] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, audio, 8000, subtype="FLOAT")
    assert main(["stream", str(folder), str(path), "--threshold", "0"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == len(SAID)
    assert "1 non-finite sample" in err and "nan.wav" in err


@pytest.mark.parametrize("sound", ["noise", "tone"])
def test_stationary_sound_after_silence_is_not_a_command(svm, sound):
    """20 s of noise or a 440-Hz tone after 1 s of silence opens no event, even at threshold 0."""
    model, _ = svm
    rate = 8000
    t = np.arange(20 * rate) / rate
    loud = (0.1 * np.random.default_rng(2).standard_normal(t.size) if sound == "noise"
            else 0.3 * np.sin(2 * np.pi * 440 * t))
    stream, events = run_stream(model, np.concatenate([np.zeros(rate), loud]))
    assert events == []
    assert stream.dropped == 1  # dropped once, then below the raised floor for good


def test_words_heard_after_a_stationary_sound_stops(svm):
    """The raised noise floor falls back once the tone stops: the words that follow are heard."""
    model, _ = svm
    rate = 8000
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(5 * rate) / rate)
    _, events = run_stream(model, np.concatenate([np.zeros(rate), tone, session()]))
    assert [e.label for e in events] == SAID


def test_empty_chunk_is_ignored(svm):
    model, _ = svm
    stream = CommandStream(model, 8000)
    assert stream.feed(np.zeros(0)) == []


@pytest.mark.parametrize("make", ["missing", "empty", "garbage", "directory", "no-frames"])
def test_cli_stream_bad_file_is_a_clear_error(svm, tmp_path, capsys, make):
    _, folder = svm
    path = tmp_path / "in.wav"
    if make == "empty":
        path.write_bytes(b"")
    elif make == "garbage":
        path.write_bytes(b"RIFF not really a wave file" * 10)
    elif make == "directory":
        path.mkdir()
    elif make == "no-frames":
        sf.write(path, np.zeros(0), 8000)
    assert main(["stream", str(folder), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("speechxfer stream: error: ") and str(path) in err
    assert "Traceback" not in err


def test_cli_stream_without_microphone_package(svm, monkeypatch, capsys):
    _, folder = svm
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    assert main(["stream", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "speechxfer stream: error: " in err and "speechxfer[mic]" in err


def test_rejected_words_are_not_events():
    """A word the model files under _unknown_ (here every "8") yields no event."""
    waves, labels = [], []
    for d in DIGITS:
        for take in range(10, 30):
            waves.append(load(FSDD / f"{d}_jackson_{take}.wav"))
            labels.append("_unknown_" if d == "8" else d)
    model = build_classic("svm").fit(waves, labels)
    _, events = run_stream(model, session())
    assert [e.label for e in events if e.label in ("5", "2")]  # the commands are still heard
    assert all(e.label != "_unknown_" for e in events)
