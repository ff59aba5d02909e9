"""Streaming detection: voice activity cuts the words, the model labels them, the open-set rule
drops the rest; and the long-stream evaluation's scoring, label files and stream builder."""

import json
import socket
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer.audio import AudioError, load
from speechxfer.classic import build_classic
from speechxfer.cli import main
from speechxfer.detect import Detection, Detector, SileroVAD, StreamResampler, detect_chunks
from speechxfer.streameval import (
    TALK,
    LabelFileError,
    Span,
    build_stream,
    check_label_names,
    det_curve,
    evaluate_stream,
    read_labels,
    score_events,
)

DIGITS = ("2", "5", "8")
SAID = ["5", "2", "8", "8", "5", "2"]
RATE = 8000  # FSDD's rate: the detector resamples to 16 kHz itself
GAP = 6400  # 0.8 s of quiet noise around each word


@pytest.fixture(scope="module")
def svm(tmp_path_factory, fsdd):
    waves = [load(fsdd / f"{d}_jackson_{take}.wav") for d in DIGITS for take in range(10, 30)]
    labels = [d for d in DIGITS for _ in range(10, 30)]
    model = build_classic("svm").fit(waves, labels)
    folder = tmp_path_factory.mktemp("svm")
    model.save(folder)
    return model, folder


@pytest.fixture(scope="module")
def session(fsdd):
    """Six held-out takes with quiet noise between them, and where each take lies (seconds)."""
    rng = np.random.default_rng(0)
    parts, spans, at = [], [], 0
    for i, d in enumerate(SAID):
        take = sf.read(fsdd / f"{d}_jackson_{i}.wav")[0]
        parts += [0.002 * rng.standard_normal(GAP), take]
        at += GAP
        spans.append((at / RATE, (at + len(take)) / RATE))
        at += len(take)
    parts.append(0.002 * rng.standard_normal(GAP))
    return np.concatenate(parts), spans


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


def detect(model, audio, sizes=(800,), vad=None, **options):
    """Events of a detector fed ``audio`` in chunks of the given sizes (cycled)."""
    detector = Detector(model, sample_rate=RATE, vad=vad, **options)
    chunks, at, k = [], 0, 0
    while at < len(audio):
        n = sizes[k % len(sizes)]
        chunks.append(audio[at: at + n])
        at, k = at + n, k + 1
    return detector, list(detect_chunks(detector, chunks))


def test_commands_at_known_times_are_detected(svm, session, vad):
    model, _ = svm
    audio, spans = session
    _, events = detect(model, audio, vad=vad, threshold=0.0)
    assert len(events) == len(SAID)
    for event, (start, end) in zip(events, spans):
        # the VAD's hangover may run a few 32-ms frames past the word
        assert start - 0.1 <= event.start < event.end <= end + 0.25, (event, start, end)
        assert event.end <= event.heard_at <= event.end + 0.5  # heard soon after the word ends
    assert sum(e.label == s for e, s in zip(events, SAID)) >= 5


def test_noise_and_tone_alone_give_no_event(svm, vad):
    """20 s of loud noise, then a tone: no speech, so nothing reaches the model, at threshold 0."""
    model, _ = svm
    t = np.arange(10 * RATE) / RATE
    audio = np.concatenate([0.1 * np.random.default_rng(2).standard_normal(10 * RATE),
                            0.3 * np.sin(2 * np.pi * 440 * t)])
    detector, events = detect(model, audio, vad=vad, threshold=0.0, record=True)
    assert events == [] and detector.segments == []


def test_odd_chunk_sizes_give_the_same_events_as_one_chunk(svm, session, vad):
    model, _ = svm
    audio, _ = session
    _, whole = detect(model, audio, sizes=(len(audio),), vad=vad, threshold=0.0)
    _, odd = detect(model, audio, sizes=(1, 37, 1001, 4097, 333, 12_345), vad=vad, threshold=0.0)
    strip = [(e.label, e.probability, e.start, e.end, e.heard_at) for e in whole]
    assert strip == [(e.label, e.probability, e.start, e.end, e.heard_at) for e in odd]
    assert len(whole) == len(SAID)


def test_a_stream_fed_after_flush_is_heard_as_by_a_new_detector(svm, session, vad):
    """flush ends a stream; chunks fed after it are a new one, timed on from the first one's
    end: not shifted by its end padding nor heard through its resampler's leftovers."""
    model, _ = svm
    audio, _ = session
    detector, first = detect(model, audio, vad=vad, threshold=0.0)
    again = list(detect_chunks(detector, [audio[:4321], audio[4321:]]))
    shift = len(audio) / RATE
    assert detector.seconds == pytest.approx(2 * shift)
    assert [e.label for e in again] == [e.label for e in first] and len(first) == len(SAID)
    got = [x for e in again for x in (e.probability, e.start, e.end)]
    assert got == pytest.approx([x for e in first for x in (e.probability, e.start + shift,
                                                           e.end + shift)], abs=1e-6)


def test_stream_resampler_matches_whole_signal_resampling():
    from speechxfer.audio import resample

    x = torch.from_numpy(np.random.default_rng(3).standard_normal(44_100 * 2 + 17)
                         .astype(np.float32))
    pieces = []
    r = StreamResampler(44_100, 16_000)
    for at in range(0, len(x), 999):
        pieces.append(r.feed(x[at: at + 999]))
    pieces.append(r.flush())
    out = torch.cat(pieces)
    ref = resample(x, 44_100, 16_000)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4)


class Fixed:
    """A fake recogniser: the same probabilities for every utterance."""

    def __init__(self, labels, probs, threshold=None):
        self.labels, self.probs, self.threshold = labels, np.array([probs]), threshold
        self.sample_rate = 16_000

    def predict_proba(self, waves):
        return np.repeat(self.probs, len(waves), axis=0)


def test_rejected_utterances_are_not_events(session, vad):
    """Words the model files under _unknown_ or _silence_ yield no event; every utterance is
    still recorded with a zero acceptance score."""
    audio, _ = session
    model = Fixed(["_silence_", "_unknown_", "go"], [0.1, 0.6, 0.3])
    detector, events = detect(model, audio, vad=vad, threshold=0.0 + 1e-9, record=True)
    assert events == []
    assert len(detector.segments) == len(SAID)
    assert all(s.score == 0.0 and s.label == "go" for s in detector.segments)


def test_model_threshold_is_the_default(session, vad):
    audio, _ = session
    model = Fixed(["_unknown_", "go", "stop"], [0.1, 0.6, 0.3], threshold=0.7)
    detector, events = detect(model, audio, vad=vad)
    assert detector.threshold == 0.7 and events == []
    _, events = detect(model, audio, vad=vad, threshold=0.5)
    assert [e.label for e in events] == ["go"] * len(SAID)


def test_utterance_too_long_for_a_command_is_dropped(svm, session, vad):
    model, _ = svm
    audio, _ = session
    detector, events = detect(model, audio, vad=vad, threshold=0.0, max_utterance_s=0.2)
    assert events == [] and detector.overlong == len(SAID)


@pytest.mark.parametrize("pad", [-0.1, float("nan")])
def test_a_negative_pad_is_refused(svm, vad, pad):
    with pytest.raises(ValueError, match="pad_s"):
        Detector(svm[0], sample_rate=RATE, vad=vad, pad_s=pad)


class LoudVAD:
    """A stand-in VAD: speech where a frame is loud, none at all (0.0) elsewhere."""

    def reset(self) -> None:
        pass

    def __call__(self, frame: torch.Tensor) -> float:
        return float(frame.abs().max() > 0.05)


def test_a_low_vad_threshold_still_ends_utterances(session):
    """At vad_threshold 0.15 or under, the bar that closes an utterance fell to 0 or below:
    no pause ended one, the first ran overlong and the detector went quiet for good."""
    audio, _ = session
    model = Fixed(["_unknown_", "go"], [0.1, 0.9])
    detector, events = detect(model, audio, vad=LoudVAD(), vad_threshold=0.1)
    assert len(events) == len(SAID) and detector.overlong == 0
    for bad in (0.0, 1.5, float("nan")):  # 1.5: no speech would ever open an utterance
        with pytest.raises(ValueError, match="vad_threshold"):
            Detector(model, sample_rate=RATE, vad=LoudVAD(), vad_threshold=bad)


def test_vad_loads_from_the_wheel_offline_and_keeps_torch_threads(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delitem(sys.modules, "silero_vad", raising=False)
    threads = torch.get_num_threads()
    vad = SileroVAD()
    assert torch.get_num_threads() == threads  # importing silero_vad sets torch to one thread
    vad.reset()
    assert 0.0 <= vad(torch.zeros(512)) < 0.5


# --- scoring -----------------------------------------------------------------------------------

def ev(label, start, end, heard=None):
    return Detection(label, 0.9, start, end, heard if heard is not None else end + 0.3, 0.0)


def test_scoring_of_a_hand_made_event_list():
    spans = [Span(1.0, 1.5, "go"), Span(5.0, 5.4, "stop"), Span(9.0, 9.5, "go"),
             Span(12.0, 12.5, "bed"), Span(15.0, 15.5, "_silence_")]
    events = [
        ev("go", 1.1, 1.6, heard=1.9),  # hit, latency 0.4
        ev("go", 1.2, 1.7),  # the same command again: a false accept
        ev("go", 5.0, 5.3),  # wrong label on "stop"
        ev("go", 9.95, 10.2, heard=10.0),  # within 0.5 s of the span: hit, latency 0.5
        ev("stop", 12.1, 12.4),  # over a word that is no command: false accept
        ev("stop", 20.0, 20.3),  # over nothing: false accept
        ev("up", 15.1, 15.4),  # over a noise clip: false accept
        ev("go", 25.2, 26.0),  # over a sentence: false accept
    ]
    spans.append(Span(24.0, 27.0, "_talk_"))
    r = score_events(events, spans, {"go", "stop", "up"}, hours=0.5)
    assert r["n_commands"] == 3 and r["hits"] == 2
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["wrong_label"] == 1
    assert r["false_accepts"] == 5 and r["false_accepts_per_hour"] == pytest.approx(10.0)
    assert r["false_accepts_over"] == {"repeat": 1, "other word": 1, "nothing": 1, "silence": 1,
                                       "talk": 1}
    assert [(f["label"], f["start"], f["over"]) for f in r["false_accept_events"]] == [
        ("go", 1.2, "repeat"), ("stop", 12.1, "bed"), ("up", 15.1, "_silence_"),
        ("stop", 20.0, "nothing"), ("go", 25.2, "_talk_")]
    assert all(f["probability"] == 0.9 for f in r["false_accept_events"])
    assert r["latency_s"] == pytest.approx(0.45)


def test_event_beyond_the_tolerance_is_a_false_accept():
    r = score_events([ev("go", 2.01, 2.3)], [Span(1.0, 1.5, "go")], {"go"}, hours=1.0)
    assert r["recall"] == 0.0 and r["false_accepts"] == 1


def test_det_curve_runs_from_every_event_to_none():
    from speechxfer.detect import Segment

    segments = [Segment("go", 0.9, 0.9, 1.0, 1.5, 1.8, 0.0),
                Segment("go", 0.6, 0.6, 20.0, 20.3, 20.6, 0.0)]
    curve = det_curve(segments, [Span(1.0, 1.5, "go")], {"go"}, hours=1.0)
    assert curve[0] == {"threshold": 0.0, "miss_rate": 0.0, "false_accepts_per_hour": 1.0}
    assert {"threshold": 0.9, "miss_rate": 0.0, "false_accepts_per_hour": 0.0} in curve
    assert curve[-1]["miss_rate"] == 1.0 and curve[-1]["false_accepts_per_hour"] == 0.0


# --- label files -------------------------------------------------------------------------------

def test_label_file_with_header(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("start,end,label\n3.0,3.5,stop\n1.0, 1.4 ,go\n\n")
    assert read_labels(path) == [Span(1.0, 1.4, "go"), Span(3.0, 3.5, "stop")]


def test_a_label_file_names_words_as_the_data_does_in_either_unicode_form(tmp_path):
    """A label CSV written on macOS (NFD "café") against a model's "café" (NFC): its spans were
    no command, so every event on them read as a false accept."""
    path = tmp_path / "labels.csv"
    path.write_text("0.5,0.9,cafe\u0301\n", encoding="utf-8")
    assert read_labels(path) == [Span(0.5, 0.9, "caf\u00e9")]
    check_label_names(read_labels(path), ["caf\u00e9", "tea"], path)


@pytest.mark.parametrize("row, problem", [
    ("1.0,go", "expected start,end,label"),
    ("one,1.5,go", "must be seconds"),
    ("2.0,1.5,go", "0 <= start <= end"),
    ("1.0,1.5,", "empty label"),
])
def test_bad_label_row_names_the_file_and_row(tmp_path, row, problem):
    path = tmp_path / "labels.csv"
    path.write_text(f"start,end,label\n0.5,0.9,go\n{row}\n")
    with pytest.raises(LabelFileError, match="row 3") as err:
        read_labels(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_label_rows_past_the_recording_or_listed_twice_are_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("0.5,0.9,go\n1.0,1.4,stop\n0.8,1.2,up\n")  # other words may overlap
    assert len(read_labels(path, seconds=2.0)) == 3
    path.write_text("0.5,0.9,go\n2500,2900,stop\n")  # in milliseconds
    with pytest.raises(LabelFileError, match="row 2: starts at 2500.0 s.*end of the recording"):
        read_labels(path, seconds=3.0)
    path.write_text("0.5,0.9,go\n1.0,1.4,stop\n0.6,1.0,go\n")
    with pytest.raises(LabelFileError, match="rows 1 and 3: two 'go' spans overlap"):
        read_labels(path)


# --- streams from a folder, and the CLI -------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory, fsdd):
    """Speech Commands layout from FSDD clips: three command folders, an other word, noise."""
    root = tmp_path_factory.mktemp("sc")
    for d in (*DIGITS, "1"):
        (root / d).mkdir()
        for take in range(3):
            name = f"jackson_nohash_{take}.wav"
            (root / d / name).write_bytes((fsdd / f"{d}_jackson_{take}.wav").read_bytes())
    (root / "_silence_").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(root / "_silence_" / f"noise_{i}.wav", 0.05 * rng.standard_normal(16_000), 16_000)
    return root


def test_built_stream_is_seeded_and_places_every_clip(folder):
    a, b = build_stream(folder, 2.0, seed=4), build_stream(folder, 2.0, seed=4)
    assert np.array_equal(a.audio, b.audio) and a.spans == b.spans
    assert len(a.audio) == 120 * a.rate and np.abs(a.audio).max() <= 1.0
    labels = [s.label for s in a.spans]
    assert {lab: labels[:15].count(lab) for lab in set(labels)} == {
        "2": 3, "5": 3, "8": 3, "1": 3, "_silence_": 3}  # each of the 15 clips once, then again
    assert all(0 <= s.start < s.end <= 120 for s in a.spans)
    assert not np.array_equal(a.audio, build_stream(folder, 2.0, seed=5).audio)


@pytest.mark.parametrize("minutes", [float("inf"), float("nan"), 0.0])
def test_a_stream_of_no_finite_positive_length_is_refused(folder, minutes):
    with pytest.raises(ValueError, match="minutes must be a positive finite number"):
        build_stream(folder, minutes)  # eval-stream --minutes inf: an OverflowError traceback


def test_talk_joins_the_stream_as_speech_that_is_no_command(folder, fsdd, tmp_path):
    talk = tmp_path / "talk" / "nested"
    talk.mkdir(parents=True)
    for take in range(2):  # two "sentences": a 3 and a 9 said one after the other
        wave = np.concatenate([sf.read(fsdd / f"{d}_theo_{take}.wav")[0] for d in "39"])
        sf.write(talk / f"s{take}.wav", wave, 8000)
    built = build_stream(folder, 2.0, seed=4, talk=tmp_path / "talk")
    labels = [s.label for s in built.spans]
    assert labels[:17].count(TALK) == 2 and labels.count(TALK) >= 3  # each once, then again
    assert [s.label for s in build_stream(folder, 2.0, seed=4).spans].count(TALK) == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="no audio files under the talk folder"):
        build_stream(folder, 1.0, talk=tmp_path / "empty")
    with pytest.raises(AudioError, match="talk must be a folder"):
        build_stream(folder, 1.0, talk=tmp_path / "missing")


def test_hidden_files_under_a_talk_folder_are_no_recordings(fsdd, tmp_path):
    """macOS writes ._NAME.wav beside every file on a stick; each was read as a bad recording."""
    from speechxfer.streameval import talk_files

    (tmp_path / "talk" / ".git").mkdir(parents=True)
    (tmp_path / "talk" / "s.wav").write_bytes((fsdd / "3_theo_0.wav").read_bytes())
    (tmp_path / "talk" / "._s.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    (tmp_path / "talk" / ".git" / "x.wav").write_bytes((fsdd / "3_theo_1.wav").read_bytes())
    assert talk_files(tmp_path / "talk") == [tmp_path / "talk" / "s.wav"]


def test_a_talk_folder_of_no_readable_recording_or_a_stream_holding_no_clip_is_refused(
        folder, tmp_path):
    (tmp_path / "talk").mkdir()
    (tmp_path / "talk" / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(AudioError, match="no readable recording under the talk folder"):
        build_stream(folder, 1.0, talk=tmp_path / "talk")  # not a stream without talk
    with pytest.raises(ValueError, match="too short to hold a clip"):  # not 0 false accepts
        build_stream(folder, 0.01)


def test_a_label_written_otherwise_than_the_models_command_is_refused(session, tmp_path):
    from types import SimpleNamespace

    from speechxfer.streameval import measure

    labels = ["_silence_", "_unknown_", "no", "yes"]
    wav, csv = tmp_path / "room.wav", tmp_path / "room.csv"
    sf.write(wav, session[0], RATE)
    csv.write_text("0.8,1.3,yes\n2.0,2.5,Yes\n")  # its events would count as false accepts
    with pytest.raises(LabelFileError, match=r"room.csv: label 'Yes' \(at 2.0 s\) is the model's "
                                             r"command 'yes'"):
        measure(SimpleNamespace(labels=labels), wav, labels=csv)
    check_label_names([Span(0.1, 0.5, "yes"), Span(1, 2, "dog"), Span(3, 4, "_unknown_")],
                      labels, csv)
    check_label_names([Span(0.1, 0.5, "Yes")], ["yes", "Yes"], csv)  # both the model's


def test_a_stream_with_no_command_of_the_model_is_said(svm, vad, caplog):
    model, _ = svm  # its commands are "2", "5", "8"; the labels name them otherwise
    spans = [Span(0.1, 0.5, "two"), Span(1.0, 1.4, "five")]
    with caplog.at_level("WARNING", logger="speechxfer"):
        report = evaluate_stream(model, spans, audio=np.zeros(2 * RATE, np.float32), rate=RATE,
                                 vad=vad)
    assert report["recall"] is None and "no word of the stream is a command" in caplog.text


def test_scoring_a_stream_draws_a_bar_over_its_blocks(svm, vad, monkeypatch):
    """Scoring a 30-min stream takes minutes: a terminal shows how far it is (log.progress)."""
    import speechxfer.streameval

    bars = []

    def progress(iterable, desc, **kwargs):
        bars.append((desc, kwargs.get("total")))
        return iterable

    monkeypatch.setattr(speechxfer.streameval, "progress", progress)
    evaluate_stream(svm[0], [Span(0.1, 0.5, "2")], audio=np.zeros(2 * RATE, np.float32),
                    rate=RATE, vad=vad)
    assert bars == [("streaming", 20)]


def test_a_stream_too_long_for_the_memory_is_refused_before_it_is_built(folder, monkeypatch):
    import speechxfer.streameval

    monkeypatch.setattr(speechxfer.streameval, "_available_memory", lambda: 2**20)
    with pytest.raises(ValueError, match="needs about .* GiB of memory"):
        build_stream(folder, 1.0)


def test_a_bad_clip_left_out_of_a_built_stream_is_said(folder, tmp_path, caplog):
    data = tmp_path / "data"
    for d in ("2", "_silence_"):
        (data / d).mkdir(parents=True)
        for f in (folder / d).iterdir():
            (data / d / f.name).write_bytes(f.read_bytes())
    (data / "2" / "broken.wav").write_bytes(b"not audio")
    with caplog.at_level("WARNING", logger="speechxfer"):
        built = build_stream(data, 0.2)
    assert [f for f, _ in built.skipped] == [str(data / "2" / "broken.wav")]
    assert "broken.wav" in caplog.text


def test_cli_eval_stream_json_and_plot(svm, folder, tmp_path, capsys):
    _, model = svm
    plot = tmp_path / "det.png"
    assert main(["eval-stream", str(model), "--data", str(folder), "--minutes", "0.5",
                 "--threshold", "0", "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("recall", "false_accepts_per_hour", "wrong_label", "latency_s", "rtf", "rtf_cpu", "hours"):
        assert key in report
    assert report["hours"] == pytest.approx(0.5 / 60, rel=1e-3)
    assert report["n_commands"] >= 3  # each heard, if not always named right by this svm:
    assert report["hits"] + report["wrong_label"] == report["n_commands"]
    assert plot.stat().st_size > 0


def test_cli_eval_stream_recording_with_bad_labels(svm, session, tmp_path, capsys):
    _, model = svm
    audio, _ = session
    wav, csv = tmp_path / "room.wav", tmp_path / "room.csv"
    sf.write(wav, audio, RATE)
    csv.write_text("0.8,1.3,5\nnot,a,row\n")
    assert main(["eval-stream", str(model), "--data", str(wav), "--labels", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "speechxfer eval-stream: error:" in err and str(csv) in err and "row 2" in err


def test_cli_eval_stream_label_past_the_recording_is_an_error(svm, session, tmp_path, capsys):
    _, model = svm
    audio, _ = session
    wav, csv = tmp_path / "room.wav", tmp_path / "room.csv"
    sf.write(wav, audio, RATE)
    csv.write_text(f"0.8,1.3,5\n{len(audio) / RATE + 1},{len(audio) / RATE + 2},2\n")
    assert main(["eval-stream", str(model), "--data", str(wav), "--labels", str(csv)]) == 2
    err = capsys.readouterr().err
    assert str(csv) in err and "row 2" in err and "end of the recording" in err


def test_cli_eval_stream_prints_the_report_when_the_plot_fails(svm, folder, tmp_path, capsys):
    _, model = svm
    plot = tmp_path / "no such folder" / "det.png"
    assert main(["eval-stream", str(model), "--data", str(folder), "--minutes", "0.2", "--json",
                 "--plot", str(plot)]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["n_commands"] >= 1  # the measurement is not lost
    assert "speechxfer eval-stream: error:" in err and str(plot) in err


def test_cli_eval_stream_recording(svm, session, tmp_path, capsys):
    _, model = svm
    audio, spans = session
    wav, csv = tmp_path / "room.wav", tmp_path / "room.csv"
    sf.write(wav, audio, RATE)
    csv.write_text("".join(f"{a},{b},{w}\n" for (a, b), w in zip(spans, SAID)))
    assert main(["eval-stream", str(model), "--data", str(wav), "--labels", str(csv),
                 "--threshold", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_commands"] == len(SAID) and report["recall"] >= 5 / 6


def test_cli_listen_file_json(svm, session, tmp_path, capsys):
    _, model = svm
    audio, _ = session
    wav = tmp_path / "room.wav"
    sf.write(wav, audio, RATE)
    assert main(["listen", str(model), str(wav), "--json", "--threshold", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(SAID)
    assert {"label", "probability", "start", "end"} <= json.loads(lines[0]).keys()


def test_cli_listen_refuses_unscaled_integer_pcm_naming_the_file(svm, session, tmp_path, capsys):
    """A float WAV of int16 values gave wrong labels (or none) with exit 0: now an error."""
    _, model = svm
    audio, _ = session
    wav = tmp_path / "unscaled.wav"
    sf.write(wav, (audio * 32767).astype(np.float32), RATE, subtype="FLOAT")
    assert main(["listen", str(model), str(wav), "--threshold", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{wav}: peak amplitude" in err and "far beyond full scale" in err


def test_cli_listen_needs_a_source(svm, capsys):
    _, model = svm
    with pytest.raises(SystemExit) as exit_:
        main(["listen", str(model)])
    assert exit_.value.code == 2


def test_cli_listen_without_microphone_package(svm, monkeypatch, capsys):
    _, model = svm
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    assert main(["listen", str(model), "--mic"]) == 2
    err = capsys.readouterr().err
    assert "speechxfer listen: error: " in err and "speechxfer[mic]" in err


def test_threshold_for_a_false_accept_target():
    from speechxfer.streameval import threshold_for

    curve = [{"threshold": 0.0, "miss_rate": 0.0, "false_accepts_per_hour": 6.0},
             {"threshold": 0.4, "miss_rate": 0.1, "false_accepts_per_hour": 2.0},
             {"threshold": 0.7, "miss_rate": 0.2, "false_accepts_per_hour": 0.0}]
    # any threshold in (0.0, 0.4] gives the events of 0.4: the middle of that gap
    assert threshold_for(curve, 2.0) == {"max_false_accepts_per_hour": 2.0, "threshold": 0.2,
                                         "recall": pytest.approx(0.9)}
    assert threshold_for(curve, 1.0)["threshold"] == pytest.approx(0.55)
    assert threshold_for(curve, 6.0)["threshold"] == 0.0
    assert threshold_for(curve[:2], 1.0) is None


class Recorder(Fixed):
    """``Fixed`` that keeps every wave it was asked about."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waves = []

    def predict_proba(self, waves):
        self.waves += list(waves)
        return super().predict_proba(waves)


def test_a_window_never_reaches_back_into_the_previous_utterance(fsdd, vad):
    """A word, 0.4 s of quiet, a 0.2-s sound: the sound's (at least 1-s) window starts after
    the word's speech, so a word is never heard twice (once more in a breath after it)."""
    rng = np.random.default_rng(1)
    first, word = (sf.read(fsdd / f"{d}_jackson_3.wav")[0] for d in ("5", "2"))
    middle = len(word) // 2
    second = word[middle - int(0.1 * RATE): middle + int(0.1 * RATE)]
    quiet = [0.002 * rng.standard_normal(n) for n in (GAP, int(0.4 * RATE), GAP)]
    audio = np.concatenate([quiet[0], first, quiet[1], second, quiet[2]])
    model = Recorder(["_unknown_", "go"], [0.1, 0.9])
    detector, _ = detect(model, audio, vad=vad, threshold=0.5, record=True)
    assert len(detector.segments) == 2 and len(model.waves) == 2
    heard = model.waves[1].numel() / model.sample_rate
    a, b = detector.segments
    assert heard <= b.heard_at - a.end + 1e-3
