import math
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer import audio
from speechxfer.audio import (
    AudioError,
    Clip,
    as_mono,
    batch_waves,
    crop_or_pad,
    decode,
    load,
    to_mono_resampled,
)
from speechxfer.data import load_waves


def test_load_resamples_real_clip(fsdd):
    wave = load(fsdd / "7_jackson_32.wav", 16_000)
    info = sf.info(str(fsdd / "7_jackson_32.wav"))
    assert wave.ndim == 1 and wave.dtype == torch.float32
    assert abs(wave.numel() - info.frames * 2) <= 2  # 8 kHz -> 16 kHz


def test_stereo_is_downmixed_and_odd_rate_resampled(tmp_path):
    t = np.linspace(0, 1, 22_050, endpoint=False)
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "s.flac", np.stack([left, left], 1), 22_050)
    wave = load(tmp_path / "s.flac", 16_000)
    assert wave.numel() == 16_000
    assert torch.allclose(wave.abs().max(), torch.tensor(0.5), atol=0.02)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b"not audio at all"), "not readable"),
        (lambda p: sf.write(p, np.zeros(16_000), 16_000), "silent"),
        (lambda p: sf.write(p, np.zeros(0), 16_000), "empty"),
        (lambda p: sf.write(p, 0.1 * np.ones(31 * 8000), 8000),
         "too long (31.0 s > 30 s window): a clip holds one command"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        load(path)
    assert "bad.wav" in str(err.value) and problem in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        load(tmp_path / "nope.wav")
    (tmp_path / "clips.wav").mkdir()  # predict given a folder: say so, not "not found"
    with pytest.raises(AudioError, match=r"clips\.wav: a folder, not an audio file"):
        load(tmp_path / "clips.wav")


def test_nan_samples_rejected():
    with pytest.raises(AudioError, match="NaN"):
        to_mono_resampled(np.full(8000, np.nan), 16_000)


def test_integer_pcm_cast_to_float_is_refused_not_mislabelled(fsdd, tmp_path):
    """int16 samples cast to float (peak in the thousands) shift Whisper's features: a confident
    wrong label with exit 0. Refused, as samples or as a float WAV, naming the source."""
    as_int16, rate = sf.read(fsdd / "7_jackson_32.wav", dtype="int16")
    with pytest.raises(AudioError, match="far beyond full scale.*divide by 32768"):
        to_mono_resampled(as_int16.astype(np.float32), rate)
    sf.write(tmp_path / "unscaled.wav", as_int16.astype(np.float32), rate, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"unscaled\.wav: peak amplitude 9673 is far beyond"):
        load(tmp_path / "unscaled.wav")
    loud = as_int16 / 32768 * 50  # float audio well over full scale is still audio
    assert to_mono_resampled(loud, rate).abs().max() > 1


def _with_sizes(wav: bytes, riff: int, data: int) -> bytes:
    """A canonical 44-byte-header WAV with its RIFF and data chunk sizes replaced."""
    assert wav[36:40] == b"data"
    return wav[:4] + struct.pack("<I", riff) + wav[8:40] + struct.pack("<I", data) + wav[44:]


def test_a_wav_cut_short_is_an_error_naming_it_not_its_first_half(fsdd, tmp_path):
    """libsndfile read the surviving part without a word: "seven" cut to "se" was trained on
    or recognised. Now training skips and reports it, and predict and uploads refuse it."""
    whole = (fsdd / "7_jackson_0.wav").read_bytes()  # 0.432 s at 8 kHz, 16 bit
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: 44 + 3434])
    problem = (r"truncated: the header announces 0\.432 s of audio \(6914 bytes\), the file "
               r"holds 0\.215 s \(3434 bytes\)")
    with pytest.raises(AudioError, match=rf"cut\.wav: {problem}"):
        load(cut)
    with pytest.raises(AudioError, match=rf"upload\.wav: {problem}"):
        decode(cut.read_bytes(), "upload.wav")
    clips = [Clip(fsdd / "7_jackson_0.wav", {"command": "7"}), Clip(cut, {"command": "7"})]
    _, kept, skipped = load_waves(clips, 16_000)
    assert kept == clips[:1] and skipped == [(str(cut), skipped[0][1])]
    assert skipped[0][1].startswith("truncated: the header announces 0.432 s")


def test_a_header_overstating_its_audio_by_a_few_bytes_is_read(fsdd, tmp_path):
    """Writers that miscount another chunk overstate the data by a few bytes: not a cut clip."""
    whole = (fsdd / "7_jackson_0.wav").read_bytes()
    path = tmp_path / "sloppy.wav"
    for short, refused in ((200, False), (400, True)):  # 12.5 ms, 25 ms at 8 kHz 16 bit
        path.write_bytes(whole[: len(whole) - short])
        if refused:
            with pytest.raises(AudioError, match="truncated"):
                load(path)
        else:
            assert load(path).numel() == (len(whole) - 44 - short) // 2 * 2  # 8 kHz -> 16 kHz


@pytest.mark.parametrize("riff, data", [
    (0xFFFFFFFF, 0xFFFFFFFF),  # ffmpeg to a pipe
    (0x7FFFFFFF, 0x7FFFFFFF),  # arecord
    (0x7FFFF000, 0x7FFFF000 - 36),  # sox
    (36, 6914),  # a RIFF size never finalised: it covers no data
])
def test_streamed_wavs_with_placeholder_sizes_are_read_as_before(fsdd, tmp_path, riff, data):
    whole = (fsdd / "7_jackson_0.wav").read_bytes()
    for n in (len(whole), 44 + 3434):  # the whole stream, or a stream stopped early
        path = tmp_path / "streamed.wav"
        path.write_bytes(_with_sizes(whole[:n], riff, data))
        assert load(path).numel() == (n - 44) // 2 * 2  # 8 kHz 16 bit -> 16 kHz
        assert decode(path.read_bytes(), "streamed.wav").numel() == (n - 44) // 2 * 2


@pytest.mark.parametrize("fmt, problem", [
    ("FLAC", "not readable as audio"),  # libsndfile refuses a cut FLAC itself
    ("MP3", r"truncated: the header announces 1\.296 s of audio, the file holds 0\.\d+ s"),
])
def test_flac_and_mp3_cut_short_are_errors(fsdd, tmp_path, fmt, problem):
    """A LAME (Xing/Info) MP3 announces its frame count; mpg123 decoded what survived of a cut
    one without a word. FLAC was already refused."""
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile writes no {fmt}")
    samples, rate = sf.read(fsdd / "7_jackson_0.wav")
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, np.tile(samples, 3), rate, format=fmt)
    assert load(path).numel() == 2 * 3 * len(samples)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AudioError, match=rf"clip\.{fmt.lower()}: {problem}"):
        load(path)


def test_rf64_cut_short_is_an_error(fsdd, tmp_path):
    """RF64 (and BW64) give their sizes in a ds64 chunk; a cut one was read in part."""
    samples, rate = sf.read(fsdd / "7_jackson_0.wav")
    path = tmp_path / "clip.wav"
    sf.write(path, samples, rate, format="RF64", subtype="PCM_16")
    assert load(path).numel() == 2 * len(samples)
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(AudioError, match=r"clip\.wav: truncated: the header announces 0\.432 s"):
        load(path)


def test_a_wav_header_without_its_byte_rate_keeps_the_tolerance(fsdd, tmp_path):
    """A fmt chunk whose byte rate is 0 (libsndfile reads it from the rate and block size) made
    a data size 2 bytes over the file's a cut clip; the byte count now says "bytes"."""
    whole = (fsdd / "7_jackson_0.wav").read_bytes()
    no_rate = whole[:28] + bytes(4) + whole[32:]  # fmt's average bytes per second
    path = tmp_path / "no_rate.wav"
    path.write_bytes(_with_sizes(no_rate, len(whole) - 8 + 2, len(whole) - 44 + 2))
    assert load(path).numel() == len(whole) - 44  # 8 kHz 16 bit -> 16 kHz
    path.write_bytes(_with_sizes(no_rate[:3000], len(whole) - 8, len(whole) - 44))
    with pytest.raises(AudioError, match=r"0\.432 s of audio \(6914 bytes\), the file holds "):
        load(path)


def test_an_mp3_whose_xing_frame_count_is_a_placeholder_is_read(fsdd, tmp_path):
    """ffmpeg writing to a pipe leaves the Xing frame count 0: mpg123 then guesses the length
    from the file's size, and a whole VBR clip was refused as cut short."""
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile writes no MP3")
    samples, rate = sf.read(fsdd / "7_jackson_0.wav")
    path = tmp_path / "piped.mp3"
    sf.write(path, np.tile(samples, 2), rate, format="MP3", bitrate_mode="VARIABLE",
             compression_level=0.0)
    data = bytearray(path.read_bytes())
    xing = data.index(b"Xing")
    assert data[xing + 7] & 1  # a frame count follows
    data[xing + 8:xing + 12] = bytes(4)
    path.write_bytes(bytes(data))
    want, _ = sf.read(path, dtype="float32")
    assert load(path, rate).numpy() == pytest.approx(want, abs=1e-6)


def test_a_number_is_not_a_clip():
    """predict_batch([0.1, 0.2, ...]) takes each sample for a clip: the error spoke of 'shape ()'."""
    with pytest.raises(AudioError, match="a single number, not a clip: predict_batch takes a list"):
        as_mono(np.float32(0.5))


def test_big_endian_integer_pcm_is_scaled_like_native(fsdd):
    """np.frombuffer(data, ">i2") is int16 too; it was refused as of no known full scale."""
    as_int16, rate = sf.read(fsdd / "7_jackson_32.wav", dtype="int16")
    expected = to_mono_resampled(as_int16, rate)
    assert torch.equal(to_mono_resampled(as_int16.astype(">i2"), rate), expected)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_raw_pcm_bytes_are_refused_not_read_as_8_bit(fsdd, wrap):
    """numpy reads a bytearray or memoryview as uint8: int16 PCM from a socket was heard as
    noise twice as long, with no error; a typed buffer (memoryview of int16) still is audio."""
    as_int16, _ = sf.read(fsdd / "7_jackson_32.wav", dtype="int16")
    with pytest.raises(AudioError, match=r"raw bytes .*np\.frombuffer"):
        as_mono(wrap(as_int16.tobytes()))
    assert torch.equal(as_mono(memoryview(as_int16)), as_mono(as_int16))


def test_float_views_with_negative_strides_are_samples(fsdd):
    """np.flip or x[::-1] of float32 samples made torch.from_numpy raise its own ValueError."""
    samples, _ = sf.read(fsdd / "7_jackson_32.wav", dtype="float32")
    backwards = samples[::-1].copy()
    assert torch.equal(as_mono(backwards[::-1]), as_mono(samples))
    stereo = np.stack([backwards, backwards], 1)
    assert torch.equal(as_mono(np.flip(stereo, 0)), as_mono(samples))


def test_crop_pad_and_batch():
    w = torch.arange(10.0)
    assert crop_or_pad(w, 4).tolist() == [3, 4, 5, 6]
    assert crop_or_pad(w, 12)[-2:].tolist() == [0, 0]
    batch, lengths = batch_waves([torch.ones(3), torch.ones(5)])
    assert batch.shape == (2, 5) and lengths.tolist() == [3, 5] and batch[0, 3:].sum() == 0


def _pcm(wave: np.ndarray, dtype: str) -> np.ndarray:
    """Float samples in [-1, 1] as integer PCM, by soundfile's (WAV's) conventions."""
    if dtype == "uint8":  # 8-bit WAV is unsigned, centred on 128
        return np.round(wave * 127 + 128).astype(np.uint8)
    scale = {"int8": 127, "int16": 32767, "int32": 2**31 - 1}[dtype]
    return np.round(wave * scale).astype(dtype)


def test_int16_predict_path_equals_float(fsdd):
    """``predict(samples, sr)`` goes through to_wave -> to_mono_resampled: int16 PCM is scaled."""
    from speechxfer.recognizer import to_wave

    path = str(fsdd / "7_jackson_32.wav")
    as_float, rate = sf.read(path, dtype="float32")
    as_int16, _ = sf.read(path, dtype="int16")
    expected = to_mono_resampled(as_float, rate)
    assert torch.allclose(to_mono_resampled(as_int16, rate), expected, atol=1e-6)
    assert torch.allclose(to_wave(as_int16, rate, 16_000), expected, atol=1e-6)
    assert torch.allclose(to_wave(torch.from_numpy(as_int16), rate, 16_000), expected, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32"])
def test_integer_pcm_is_scaled_to_unit_range(dtype):
    t = np.linspace(0, 1, 8000, endpoint=False)
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    pcm = _pcm(np.stack([wave, wave], 1), dtype)  # [time, channels], as soundfile reads
    mono = as_mono(pcm)
    assert mono.dtype == torch.float32 and mono.shape == (8000,)
    assert torch.allclose(mono, torch.from_numpy(wave).float(), atol=2 / 127)
    assert torch.allclose(as_mono(torch.from_numpy(pcm)), mono)  # the stream's tensors too


@pytest.mark.parametrize(
    "samples",
    [np.ones(8000, dtype=bool), np.ones(8000, dtype=np.complex64),
     np.array([0.1] * 8000, dtype=object), np.ones(8000, dtype=np.int64),
     np.array(["0.1"] * 8000), [[0.1] * 10, [0.1] * 3]],
    ids=["bool", "complex", "object", "int64", "str", "ragged"],
)
def test_unusable_sample_types_are_audio_errors(samples):
    with pytest.raises(AudioError, match="samples"):
        to_mono_resampled(samples, 16_000)


@pytest.mark.parametrize("rate", [8000.5, "8000", 0, -8000, True, float("nan"), float("inf"),
                                  None, 10**9])
def test_bad_sample_rates_are_audio_errors(rate):
    with pytest.raises(AudioError, match="sample rate"):
        to_mono_resampled(0.1 * np.ones(8000), rate)


@pytest.mark.parametrize("rate", [8000, 8000.0, np.int32(8000), np.float64(8000)])
def test_whole_number_rates_are_accepted(rate):
    assert to_mono_resampled(0.1 * np.ones(8000), rate).numel() == 16_000


def test_long_file_rejected_from_its_header(tmp_path, monkeypatch):
    """Two hours of audio at 100 Hz: small on disk, and never decoded."""
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(2 * 3600 * 100, dtype=np.int16), 100, subtype="PCM_16")
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded a long file"))
    with pytest.raises(AudioError, match="too long .*7200.0 s > 30 s"):
        load(path)


def test_odd_rate_resamples_with_a_small_kernel(monkeypatch):
    """44101 Hz -> 16 kHz exactly would need a [16000, 44135] sinc kernel (gigabytes)."""
    calls = []
    real = audio.AF.resample
    monkeypatch.setattr(audio.AF, "resample",
                        lambda w, a, b: calls.append((a, b)) or real(w, a, b))
    rng = np.random.default_rng(0)
    wave = to_mono_resampled(0.1 * rng.standard_normal(44_101), 44_101)
    assert abs(wave.numel() - 16_000) <= 1
    (orig, new), = calls
    g = math.gcd(orig, new)
    assert (orig // g) * (new // g) <= audio.MAX_RESAMPLE_RATIO_PRODUCT


def test_a_phone_or_browser_recording_says_how_to_convert_it(tmp_path):
    """libsndfile's "Format not recognised" left a user with a phone's .m4a or a browser's
    .webm no way on; the message names the conversion, for a file, an upload and a stream."""
    from speechxfer.augment import load_noise_folder
    from speechxfer.stream import file_length

    memo = tmp_path / "memo.M4A"
    memo.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(400))
    for read in (load, file_length):
        with pytest.raises(AudioError, match=r"soundfile cannot decode \.M4A: .*ffmpeg -i IN\.M4A"):
            read(memo)
    with pytest.raises(AudioError, match=r"^clip\.webm: .*ffmpeg -i IN\.webm OUT\.wav"):
        decode(b"\x1a\x45\xdf\xa3" + bytes(400), "clip.webm")
    with pytest.raises(AudioError, match="ffmpeg"):
        load_noise_folder(tmp_path)  # a noise recorded on a phone is no noise left out unsaid
    with pytest.raises(AudioError) as err:
        decode(b"junk" * 100, "clip.wav")
    assert "ffmpeg" not in str(err.value)


def test_macos_litter_in_a_noise_folder_is_not_read(tmp_path):
    """An AppleDouble ``._hum.wav`` beside ``hum.wav`` (macOS, on a USB stick or a share)
    stopped ``train --augment --noise DIR`` as an unreadable noise."""
    from speechxfer.augment import load_noise_folder

    sf.write(tmp_path / "hum.wav", 0.1 * np.sin(np.arange(8000) / 5.0), 16_000)
    (tmp_path / "._hum.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(4000))
    (tmp_path / ".DS_Store").write_bytes(bytes(64))
    assert len(load_noise_folder(tmp_path)) == 1
