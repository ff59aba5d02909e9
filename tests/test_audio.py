import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer.audio import AudioError, batch_waves, crop_or_pad, load, to_mono_resampled


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
        (lambda p: sf.write(p, 0.1 * np.ones(31 * 8000), 8000), "too long"),
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


def test_nan_samples_rejected():
    with pytest.raises(AudioError, match="NaN"):
        to_mono_resampled(np.full(8000, np.nan), 16_000)


def test_crop_pad_and_batch():
    w = torch.arange(10.0)
    assert crop_or_pad(w, 4).tolist() == [3, 4, 5, 6]
    assert crop_or_pad(w, 12)[-2:].tolist() == [0, 0]
    batch, lengths = batch_waves([torch.ones(3), torch.ones(5)])
    assert batch.shape == (2, 5) and lengths.tolist() == [3, 5] and batch[0, 3:].sum() == 0
