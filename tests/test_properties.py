"""Property-based tests: hostile input ends in a result or the module's own clear error.

One section per area; each area's strategies live beside its tests. ``PROPERTY`` keeps every
test fast (a few seconds) and writes no example database into the tree.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import string
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from speechxfer.audio import AudioError, as_mono, load, to_mono_resampled
from speechxfer.cli import build_parser, main
from speechxfer.data import DatasetError, load_dataset, load_waves, split_dataset

PROPERTY = settings(
    max_examples=50, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- audio loader (speechxfer.audio) ------------------------------------------------------------

SAMPLE_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32,
                 np.int64, np.uint16, np.bool_, np.complex64]
RATES = st.one_of(
    st.sampled_from([8000, 16_000, 44_100, 44_101, 48_000, 768_000, 8000.0]),
    st.integers(-10, 2_000_000),
    st.sampled_from([0, -1, 8000.5, float("nan"), float("inf"), "8000", None, True, 10**12]),
)


@st.composite
def layouts(draw) -> tuple[int, ...]:
    """Clip shapes as callers pass them: [n], [n, c], [c, n], and some that are not audio."""
    n = draw(st.one_of(st.integers(0, 64), st.integers(0, 40_000), st.just(16_000 * 31)))
    c = draw(st.integers(1, 3))
    return draw(st.sampled_from([(n,), (n, c), (c, n), (n, 1), (1, n), (c, n, 2), (), (0, 0)]))


@st.composite
def raw_samples(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(SAMPLE_DTYPES)))
    fill = hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True)
    return draw(hnp.arrays(dtype, draw(layouts()), elements=fill, fill=fill))


def _is_clip(wave: torch.Tensor) -> bool:
    return (wave.ndim == 1 and wave.dtype == torch.float32 and wave.numel() > 0
            and bool(torch.isfinite(wave).all()))


@PROPERTY
@given(samples=raw_samples(), rate=RATES, as_tensor=st.booleans())
@example(samples=np.array(3, dtype=np.int8), rate=8000, as_tensor=False)
@example(samples=np.full((2, 3, 8000), 9, dtype=np.int16), rate=8000, as_tensor=True)
@example(samples=np.full(8000, 1e39), rate=8000, as_tensor=False)
def test_raw_samples_give_a_clip_or_audio_error(samples, rate, as_tensor):
    if as_tensor and samples.dtype not in (np.uint16, np.complex64):
        samples = torch.from_numpy(samples)
    try:
        wave = to_mono_resampled(samples, rate)
    except AudioError:
        return
    assert _is_clip(wave)


@PROPERTY
@given(pcm=hnp.arrays(st.sampled_from([np.int8, np.uint8, np.int16, np.int32]),
                      st.integers(1, 500)))
def test_integer_pcm_lands_in_unit_range_like_soundfile(pcm):
    wave = as_mono(pcm)
    assert wave.dtype == torch.float32 and float(wave.abs().max()) <= 1.0
    if pcm.dtype == np.int16:  # the scale soundfile uses when it reads 16-bit WAV
        assert torch.equal(wave, torch.from_numpy(pcm.astype(np.float32) / 32768))


def _wav_header(channels: int, rate: int, bits: int, fmt: int, data: bytes, lie: int) -> bytes:
    """A RIFF/WAVE header with arbitrary (possibly absurd) fields, then ``data``."""
    align = channels * max(bits, 1) // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * align) & 0xFFFFFFFF,
                            align & 0xFFFF, bits)
    body = (b"WAVEfmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
            + b"data" + struct.pack("<I", (len(data) + lie) & 0xFFFFFFFF) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


WAV_BYTES = st.one_of(
    st.binary(max_size=4000),
    st.builds(  # plausible headers, so that decoding starts
        _wav_header, channels=st.sampled_from([1, 2, 6]),
        rate=st.sampled_from([1, 100, 8000, 16_000, 44_101, 768_000, 768_001]),
        bits=st.sampled_from([8, 16, 32]), fmt=st.just(1),
        data=st.binary(min_size=2000, max_size=4000),
        lie=st.sampled_from([0, 1, -1, 2**31]),
    ),
    st.builds(  # anything at all in the fields
        _wav_header, channels=st.integers(0, 1100), rate=st.integers(0, 2**32 - 1),
        bits=st.sampled_from([0, 7, 8, 16, 24, 32, 64]), fmt=st.sampled_from([0, 1, 3, 0xFFFE]),
        data=st.binary(max_size=4000), lie=st.integers(-100, 2**32),
    ),
)


@PROPERTY
@given(content=WAV_BYTES)
def test_any_bytes_as_a_wav_give_a_clip_or_audio_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        path.write_bytes(content)
        try:
            wave = load(path)
        except AudioError as err:
            assert "clip.wav" in str(err)
            return
        assert _is_clip(wave)


@PROPERTY
@given(
    rate=st.one_of(st.integers(1, 400_000), st.sampled_from([8000, 11_025, 22_050, 44_100])),
    channels=st.integers(1, 6), seconds=st.sampled_from([0.0, 0.01, 0.3, 1.0, 31.0]),
    subtype=st.sampled_from(["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]),
    value=st.sampled_from([0.0, 0.3, -1.0, float("nan"), float("inf")]),
)
def test_real_wav_files_at_odd_rates_and_channels(rate, channels, seconds, subtype, value):
    frames = min(int(seconds * rate), 600_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        samples = np.full((frames, channels), value, dtype=np.float64)
        samples[::7] = 0.2
        sf.write(path, samples, rate, subtype=subtype)
        try:
            wave = load(path)
        except AudioError:
            return
        assert _is_clip(wave)
        # odd rates are resampled as the nearest multiple of 50 Hz: a few per cent at most
        assert abs(wave.numel() - frames * 16_000 / rate) <= max(2, 0.03 * wave.numel())


# --- dataset reader (speechxfer.data) -----------------------------------------------------------

NAME_CHARS = string.ascii_letters + string.digits + "_-. é数"
FILE_NAMES = st.builds(
    lambda stem, suffix: stem + suffix,
    st.one_of(st.text(NAME_CHARS, min_size=1, max_size=12),
              st.builds("{}_{}_{}".format, st.sampled_from(["1", "7", "yes"]),
                        st.sampled_from(["ann", "bo", ""]), st.integers(0, 3))),
    st.sampled_from([".wav", ".WAV", ".flac", ".txt", ""]),
).filter(lambda name: name not in (".", ".."))
FOLDERS = st.sampled_from([".", "recordings", "yes", "no", "_background_noise_", ".hidden"])


@PROPERTY
@given(files=st.lists(st.tuples(FOLDERS, FILE_NAMES, st.booleans()), max_size=12),
       lists=st.booleans())
def test_any_folder_gives_a_dataset_or_dataset_error(fsdd, files, lists):
    real = (fsdd / "7_jackson_32.wav").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder, name, is_audio in files:
            path = root / folder / name
            if path.parent.is_file() or path.is_dir():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(real if is_audio else b"not audio")
        if lists:
            (root / "testing_list.txt").write_text("yes/x.wav\n\n../../etc\n")
        try:
            ds = load_dataset(root)
        except DatasetError:
            return
        assert ds.clips and all(c.path.is_file() for c in ds.clips)
        assert all(isinstance(p, str) and problem for p, problem in ds.skipped)
        split = split_dataset(ds)
        assert len(split.train) + len(split.validation) + len(split.test) == len(ds.clips)
        if ds.speakers:
            split = split_dataset(ds, ds.speakers[:1])
            assert {c.speaker for c in split.test} == set(ds.speakers[:1])
        waves, kept, skipped = load_waves(ds.clips[:3], 16_000)
        assert len(waves) == len(kept) and len(kept) + len(skipped) == min(3, len(ds.clips))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6,
)
JSON_ROWS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"path": st.one_of(st.sampled_from(["a.wav", "sub/b.wav", "/abs/c.wav", ""]),
                           JSON_VALUES)},
        optional={"label": JSON_VALUES, "speaker": JSON_VALUES, "split": JSON_VALUES,
                  "mood": JSON_VALUES},
    ),
)
CELLS = st.one_of(st.sampled_from(["a.wav", "1", "", "ann", "test"]),
                  st.text(max_size=6).filter(lambda s: "\x00" not in s))


@st.composite
def manifests(draw) -> tuple[str, bytes]:
    """A manifest's name and bytes: structured JSONL or CSV rows, or arbitrary text."""
    kind = draw(st.sampled_from(["jsonl", "csv", "text"]))
    if kind == "jsonl":
        rows = draw(st.lists(JSON_ROWS, max_size=5))
        text = "\n".join(json.dumps(r) for r in rows)
        return "m.jsonl", text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig"])))
    if kind == "csv":
        header = draw(st.lists(st.sampled_from(["path", "label", "speaker", "split", "mood", ""]),
                               max_size=5))
        rows = draw(st.lists(st.lists(CELLS, max_size=6), max_size=5))
        text = io.StringIO(newline="")
        csv.writer(text).writerows([header, *rows])
        encoding = draw(st.sampled_from(["utf-8", "utf-8-sig"]))
        return "m.csv", text.getvalue().encode(encoding, "surrogatepass")
    name = draw(st.sampled_from(["m.csv", "m.jsonl"]))
    text = st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
    return name, draw(st.one_of(st.binary(max_size=300), text))


@PROPERTY
@given(manifest=manifests())
def test_any_manifest_gives_a_dataset_or_dataset_error(manifest):
    name, content = manifest
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            ds = load_dataset(path)
        except DatasetError as err:
            assert name in str(err)
            return
        assert ds.clips and ds.layout == "manifest"
        for clip in ds.clips:
            assert isinstance(clip.path, Path)
            assert all(isinstance(k, str) and isinstance(v, str) and v
                       for k, v in clip.labels.items())
        split_dataset(ds)
        waves, _, skipped = load_waves(ds.clips[:3], 16_000)  # no audio there: all skipped
        assert not waves and len(skipped) == min(3, len(ds.clips))


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl"])
def test_empty_manifest_is_a_dataset_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(tmp_path / name)


# --- command line (speechxfer.cli) --------------------------------------------------------------

CLI_NUMBERS = {  # option -> (command, lowest, highest) it accepts
    "--epochs": ("train", 1, None), "--per-class": ("train", 1, None), "--k": ("train", 1, None),
    "--seed": ("train", 0, 2**32 - 1), "--threshold": ("stream", 0.0, 1.0),
}
NUMBER_TEXT = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), st.text(max_size=8),
    st.sampled_from(["0", "1", "-1", "0.5", "nan", "-inf", "1e3", "0x10", "", " 3 ", "1_0"]),
)


def _cli(call) -> tuple[object, int, str]:
    """What a CLI call returned, its exit code (argparse's SystemExit included) and stderr."""
    out, err = io.StringIO(), io.StringIO()
    result = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = call()
            code = result if isinstance(result, int) else 0
        except SystemExit as exit_:
            code = exit_.code
    return result, code, err.getvalue()


@PROPERTY
@given(option=st.sampled_from(sorted(CLI_NUMBERS)), text=NUMBER_TEXT, joined=st.booleans())
def test_cli_numbers_parse_in_range_or_exit_2(option, text, joined):
    command, low, high = CLI_NUMBERS[option]
    argv = [command, *(["model"] if command == "stream" else []),
            *([f"{option}={text}"] if joined else [option, text])]
    args, code, err = _cli(lambda: build_parser().parse_args(argv))
    if code:
        assert code == 2 and f"speechxfer {command}: error: argument {option}" in err
        return
    value = getattr(args, option[2:].replace("-", "_"))
    assert low <= value and (high is None or value <= high)


@PROPERTY
@given(name=st.one_of(st.text(max_size=10), st.sampled_from(["cpu", "cuda", "cuda:7", "mps",
                                                              "meta", "auto", "CPU", "cpu:0"])))
def test_cli_device_parses_or_exits_2(name):
    args, code, err = _cli(lambda: build_parser().parse_args(["train", f"--device={name}"]))
    assert (code == 2 and "speechxfer train: error: argument --device" in err) or (
        code == 0 and args.device == name)


BAD_PATHS = st.sampled_from(["missing", "garbage", "empty", "folder"])


@pytest.fixture(scope="module")
def svm_folder(tmp_path_factory, fsdd) -> Path:
    """A real model that trains in a second, so the audio path is reached, not only the model's."""
    from speechxfer.classic import build_classic

    takes = [(d, t) for d in ("1", "4") for t in range(10, 16)]
    folder = tmp_path_factory.mktemp("svm")
    build_classic("svm").fit([load(fsdd / f"{d}_jackson_{t}.wav") for d, t in takes],
                             [d for d, _ in takes]).save(folder)
    return folder


def _bad_path(root: Path, kind: str, name: str, content: bytes) -> Path:
    path = root / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind != "missing":
        path.write_bytes(content if kind == "garbage" else b"")
    return path


@PROPERTY
@given(command=st.sampled_from(["predict", "eval", "stream", "train"]),
       model=st.one_of(st.just("good"), BAD_PATHS), target=BAD_PATHS, name=FILE_NAMES,
       content=st.binary(max_size=200), json_=st.booleans())
def test_cli_bad_paths_end_in_a_message(svm_folder, command, model, target, name, content,
                                        json_):
    """Unusable model folders, data and audio paths: ``speechxfer CMD: error: ...``, exit 2,
    or for ``predict`` with a usable model, every file's error and exit 1.

    Every case fails before a neural model is built, so the property stays cheap.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = str(svm_folder if model == "good" else _bad_path(root / "model", model, name,
                                                                       content))
        other = str(_bad_path(root / "other", target, name, content))
        argv = {
            "predict": ["predict", model_dir, other, *(["--json"] if json_ else [])],
            "eval": ["eval", model_dir, "--data", other, *(["--json"] if json_ else [])],
            "stream": ["stream", model_dir, other],
            "train": ["train", "--data", other, "--strategy", "svm", "--out", str(root / "out")],
        }[command]
        _, code, err = _cli(lambda: main(argv))
    if command == "predict" and model == "good":
        assert code == 1 and "1 of 1 file(s) failed" in err
    else:
        assert code == 2 and err.startswith(f"speechxfer {command}: error: ")
