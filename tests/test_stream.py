"""Streaming: a long recording of several spoken digits yields one event per digit, in order."""

import itertools
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


@pytest.fixture
def recording(tmp_path):
    """Six held-out takes at 8 kHz with 0.6 s of quiet noise between them."""
    rng = np.random.default_rng(0)
    said = ["5", "2", "8", "8", "5", "2"]
    parts = []
    for i, d in enumerate(said):
        parts.append(0.002 * rng.standard_normal(4800))
        parts.append(sf.read(FSDD / f"{d}_jackson_{i}.wav")[0])
    parts.append(0.002 * rng.standard_normal(4800))
    path = tmp_path / "session.wav"
    sf.write(path, np.concatenate(parts), 8000)
    return path, said


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
