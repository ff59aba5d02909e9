"""The ``stream`` and ``listen`` commands and their chunk sources, over the ``Detector``: a long
recording of spoken digits yields one event per digit, bad samples and sustained sounds do not
deafen it, and the command line prints every event and fails clearly."""

import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer.audio import load, resample
from speechxfer.classic import build_classic
from speechxfer.cli import main
from speechxfer.detect import Detector, SileroVAD, detect_chunks

DIGITS = ("2", "5", "8")
SAID = ["5", "2", "8", "8", "5", "2"]
RATE = 8000  # FSDD's rate: the detector resamples to 16 kHz itself
GAP = 4800  # samples of quiet noise before, between and after the words (0.6 s)


def fit_svm(fsdd, unknown: str | None = None):
    """An svm on 20 takes of each digit; ``unknown``: that digit's takes labelled ``_unknown_``."""
    takes = [(d, t) for d in DIGITS for t in range(10, 30)]
    return build_classic("svm").fit([load(fsdd / f"{d}_jackson_{t}.wav") for d, t in takes],
                                    ["_unknown_" if d == unknown else d for d, _ in takes])


@pytest.fixture(scope="module")
def svm(tmp_path_factory, fsdd):
    model = fit_svm(fsdd)
    folder = tmp_path_factory.mktemp("svm")
    model.save(folder)
    return model, folder


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


@pytest.fixture(scope="module")
def takes(fsdd) -> list[np.ndarray]:
    """The six held-out takes of ``SAID``, as recorded (8 kHz)."""
    return [sf.read(fsdd / f"{d}_jackson_{i}.wav")[0] for i, d in enumerate(SAID)]


@pytest.fixture
def session(takes) -> np.ndarray:
    """The six takes with 0.6 s of quiet noise around each (a fresh copy per test)."""
    rng = np.random.default_rng(0)
    parts = []
    for take in takes:
        parts += [0.002 * rng.standard_normal(GAP), take]
    parts.append(0.002 * rng.standard_normal(GAP))
    return np.concatenate(parts)


@pytest.fixture
def spans(takes) -> list[tuple[float, float]]:
    """Where each take's file lies in ``session``, in seconds."""
    out, at = [], GAP
    for take in takes:
        out.append((at / RATE, (at + len(take)) / RATE))
        at += len(take) + GAP
    return out


def run(model, audio: np.ndarray, vad, threshold: float = 0.0):
    """A detector's events on ``audio`` fed in 100-ms chunks, as the CLI feeds a file."""
    detector = Detector(model, threshold, RATE, vad=vad)
    block = RATE // 10
    chunks = (audio[i: i + block] for i in range(0, len(audio), block))
    return detector, list(detect_chunks(detector, chunks))


def assert_events_at_words(events, spans) -> None:
    """One event per word, its speech inside the word's file (the VAD's hangover may run a few
    32-ms frames past the word), heard soon after it ends."""
    assert len(events) == len(spans)
    for event, (start, end) in zip(events, spans):
        assert start - 0.1 <= event.start < event.end <= end + 0.25, (event, start, end)
        assert event.end <= event.heard_at <= event.end + 0.5


@pytest.fixture
def clean(svm, session, spans, vad):
    """The words the svm hears in the clean session, and when: the baseline the repaired and
    noisy streams must match."""
    _, events = run(svm[0], session, vad)
    assert_events_at_words(events, spans)
    assert sum(e.label == s for e, s in zip(events, SAID)) >= 5
    return events


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["gap", "word"])
def test_non_finite_sample_is_repaired_and_counted(svm, session, takes, clean, vad, bad, where):
    """One NaN/Inf sample neither deafens nor aborts the stream: every word is still heard."""
    word_start = GAP + len(takes[0]) + GAP  # second word
    session[{"gap": word_start - 2400, "word": word_start + 1500}[where]] = bad
    detector, events = run(svm[0], session, vad)
    assert detector.repaired == 1
    assert [e.label for e in events] == [e.label for e in clean]
    assert [round(e.start, 2) for e in events] == [round(e.start, 2) for e in clean]


@pytest.mark.parametrize("sound", ["noise", "tone"])
def test_words_heard_after_a_sustained_sound(svm, session, clean, vad, sound):
    """10 s of loud noise or a 440-Hz tone yields no event, even at threshold 0, and the words
    right after it are heard as in the clean session."""
    t = np.arange(10 * RATE) / RATE
    loud = (0.1 * np.random.default_rng(2).standard_normal(t.size) if sound == "noise"
            else 0.3 * np.sin(2 * np.pi * 440 * t))
    lead = RATE + t.size
    _, events = run(svm[0], np.concatenate([np.zeros(RATE), loud, session]), vad)
    assert [e.label for e in events] == [e.label for e in clean]
    assert [e.start - lead / RATE for e in events] == pytest.approx(
        [e.start for e in clean], abs=0.07)  # two VAD frames


def test_rejected_words_are_not_events(fsdd, session, vad):
    """A word the model files under _unknown_ (here every "8") yields no event; the commands
    around it are still heard."""
    _, events = run(fit_svm(fsdd, unknown="8"), session, vad)
    assert [e.label for e in events if e.label in ("5", "2")]
    assert all(e.label in ("5", "2") for e in events)


def test_empty_chunk_is_ignored(svm, vad):
    assert Detector(svm[0], 0.0, RATE, vad=vad).feed(np.zeros(0)) == []


@pytest.fixture
def recording(tmp_path, session):
    path = tmp_path / "session.wav"
    sf.write(path, session, RATE)
    return path


def test_cli_stream_and_listen_print_every_event(svm, recording, clean, capsys):
    """One ``START-END s<TAB>LABEL<TAB>PROBABILITY`` line per event the library gives, the same
    from ``stream`` and ``listen``."""
    _, folder = svm
    assert main(["stream", str(folder), str(recording), "--threshold", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(clean)
    for line, event in zip(lines, clean):
        times, label, probability = line.split("\t")
        start, end = (float(t) for t in times.removesuffix(" s").split("-"))
        assert (label, start, end) == (event.label, round(event.start, 2), round(event.end, 2))
        assert float(probability) == pytest.approx(event.probability, abs=5e-4)
    assert main(["listen", str(folder), str(recording), "--threshold", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines


def test_cli_listen_and_eval_stream_take_the_pad(svm, recording, spans, tmp_path, monkeypatch,
                                                 capsys):
    """``--pad`` reaches the detector of both commands (and eval-stream's report says so)."""
    from speechxfer import detect

    pads, init = [], detect.Detector.__init__

    def spy(self, *args, **kwargs):
        pads.append(kwargs.get("pad_s"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(detect.Detector, "__init__", spy)
    _, folder = svm
    assert main(["listen", str(folder), str(recording), "--pad", "0.3"]) == 0
    labels = tmp_path / "session.csv"
    labels.write_text("".join(f"{a},{b},{d}\n" for (a, b), d in zip(spans, SAID)))
    capsys.readouterr()
    main(["eval-stream", str(folder), "--data", str(recording), "--labels", str(labels),
          "--pad", "0.3", "--json"])
    assert pads == [0.3, 0.3]
    written = json.loads(capsys.readouterr().out)
    assert written["pad_s"] == pytest.approx(0.3) and written["model"] == str(folder.resolve())


def test_cli_eval_stream_names_each_false_accept(svm, recording, spans, tmp_path, capsys):
    """A word left out of the label file is fired on over nothing: the report lists it with its
    time and label, as the JSON does."""
    _, folder = svm
    labels = tmp_path / "session.csv"
    labels.write_text("".join(f"{a},{b},{d}\n" for (a, b), d in list(zip(spans, SAID))[1:]))
    args = ["eval-stream", str(folder), "--data", str(recording), "--labels", str(labels),
            "--threshold", "0"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["false_accept_events"]
    first = next(f for f in listed if f["start"] <= spans[0][1] + 0.5)
    assert first["over"] == "nothing" and first["label"] == SAID[0]
    assert main(args) == 0
    assert f"false accept at {first['start']:.1f}-{first['end']:.1f} s: {SAID[0]!r}" in (
        capsys.readouterr().out)


def test_cli_non_finite_samples_are_reported(svm, session, tmp_path, capsys):
    _, folder = svm
    session[len(session) // 2] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, session, RATE, subtype="FLOAT")
    assert main(["stream", str(folder), str(path), "--threshold", "0"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == len(SAID)
    assert "1 non-finite sample" in err and "nan.wav" in err


def test_cli_ctrl_c_on_a_file_exits_130_after_printing_the_events_so_far(
        svm, recording, clean, monkeypatch, capsys):
    """A file left unfinished is not a success; what was heard before the interrupt is printed."""
    _, folder = svm
    feed, cut = Detector.feed, clean[2].heard_at + 0.3

    def interrupted(self, samples):
        if self.seconds >= cut:
            raise KeyboardInterrupt
        return feed(self, samples)

    monkeypatch.setattr(Detector, "feed", interrupted)
    assert main(["stream", str(folder), str(recording), "--threshold", "0"]) == 130
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == [e.label for e in clean[:3]]


def fake_sounddevice(audio: np.ndarray):
    """A ``sounddevice`` whose input stream plays ``audio``, then is stopped with Ctrl-C."""
    module = types.ModuleType("sounddevice")

    class InputStream:
        def __init__(self, samplerate, channels, dtype, blocksize):
            self.rate, self.at = samplerate, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            if self.at >= len(audio):
                raise KeyboardInterrupt
            block = audio[self.at: self.at + n].astype(np.float32)[:, None]
            self.at += n
            return block, False

    module.InputStream, module.PortAudioError = InputStream, OSError
    return module


def test_cli_stream_without_a_file_listens_to_the_microphone(svm, session, clean, monkeypatch,
                                                              capsys):
    """No FILE: the microphone, at the model's rate, until Ctrl-C, which ends it normally."""
    model, folder = svm
    mic = resample(torch.from_numpy(session).float(), RATE, 16_000).numpy()
    assert model.sample_rate == 16_000
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(mic))
    assert main(["stream", str(folder), "--threshold", "0", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "listening; Ctrl-C stops" in err
    assert len(out.strip().splitlines()) == len(clean)


@pytest.mark.parametrize("command", ["stream", "listen"])
@pytest.mark.parametrize("make", ["missing", "empty", "garbage", "directory", "no-frames"])
def test_cli_bad_file_is_a_clear_error(svm, tmp_path, capsys, command, make):
    _, folder = svm
    path = tmp_path / "in.wav"
    if make == "empty":
        path.write_bytes(b"")
    elif make == "garbage":
        path.write_bytes(b"RIFF not really a wave file" * 10)
    elif make == "directory":
        path.mkdir()
    elif make == "no-frames":
        sf.write(path, np.zeros(0), RATE)
    assert main([command, str(folder), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"speechxfer {command}: error: ") and str(path) in err
    assert "Traceback" not in err


def test_cli_stream_without_microphone_package(svm, monkeypatch, capsys):
    _, folder = svm
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    assert main(["stream", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "speechxfer stream: error: " in err and "speechxfer[mic]" in err


def test_file_chunks_down_mix_every_block_over_its_channels(tmp_path):
    """A last block shorter than the channel count is still read as [frames, channels]."""
    from speechxfer.stream import file_chunks

    left = np.linspace(-0.5, 0.5, 1601, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, -0.5 * left], axis=1), 16_000, subtype="FLOAT")
    rate, chunks = file_chunks(path)  # 0.1-s blocks: 1600 frames, then 1
    mono = np.concatenate(list(chunks))
    assert rate == 16_000 and mono.shape == (1601,)
    np.testing.assert_allclose(mono, 0.25 * left, atol=1e-7)


def test_a_recording_cut_short_is_refused_before_it_streams(tmp_path):
    """listen FILE on a cut WAV streamed its surviving part with no word, as clips no longer do."""
    from speechxfer.audio import AudioError
    from speechxfer.stream import file_chunks

    whole = tmp_path / "whole.wav"
    sf.write(whole, np.zeros(16_000, np.float32) + 0.1, 16_000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:20_000])
    assert file_chunks(whole)[0] == 16_000
    with pytest.raises(AudioError, match=r"cut\.wav: truncated"):
        file_chunks(cut)
