from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer.audio import AudioError, load
from speechxfer.augment import (
    AugmentConfig,
    Augmenter,
    add_noise,
    load_noise_folder,
    reverb,
    room_impulse_response,
    speed,
    synthetic_noise,
    time_shift,
)

SPEECH_COMMANDS = Path(__file__).resolve().parents[1] / "data" / "speech_commands"


@pytest.fixture(scope="module")
def word() -> torch.Tensor:
    return load(min((SPEECH_COMMANDS / "yes").iterdir()))


@pytest.fixture(scope="module")
def noises() -> list[torch.Tensor]:
    return [load(p) for p in sorted((SPEECH_COMMANDS / "_silence_").iterdir())[:3]]


def measured_snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """SNR of ``noisy`` against ``clean``: the part along ``clean`` is speech, the rest noise."""
    gain = float(noisy @ clean / (clean @ clean))
    residual = noisy - gain * clean
    return 20 * np.log10(float((gain * clean).norm() / residual.norm()))


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "recorded"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_is_mixed_at_the_asked_snr(word, noises, kind, snr):
    torch.manual_seed(0)
    noise = noises[1] if kind == "recorded" else synthetic_noise(kind, word.numel())
    noisy = add_noise(word, noise, snr)
    assert noisy.shape == word.shape
    assert measured_snr(word, noisy) == pytest.approx(snr, abs=1.0)


def test_synthetic_noise_colours():
    torch.manual_seed(0)
    low_high = {}
    for kind in ("white", "pink", "brown"):
        power = torch.fft.rfft(synthetic_noise(kind, 16_000)).abs() ** 2
        low_high[kind] = float(power[10:500].mean() / power[4000:].mean())
    assert low_high["white"] < 2 < low_high["pink"] < low_high["brown"]
    with pytest.raises(ValueError, match="unknown noise"):
        synthetic_noise("purple", 100)


@pytest.mark.parametrize("percent", [90, 95, 110])
def test_speed_changes_the_length_by_the_factor(word, percent):
    out = speed(word, percent)
    assert abs(out.numel() - word.numel() * 100 / percent) <= 2


def test_reverb_changes_the_signal_but_keeps_its_length(word):
    rir = room_impulse_response(0.5, 3.0, np.random.default_rng(0))
    assert int(rir.abs().argmax()) == 0  # the direct path leads
    out = reverb(word, rir)
    assert out.shape == word.shape
    assert float((out - word).norm() / word.norm()) > 0.1
    assert float(out.abs().mean()) == pytest.approx(float(word.abs().mean()), rel=0.05)
    # the response's tail smears energy after the word; a bare impulse changes nothing
    assert torch.allclose(reverb(word, torch.tensor([1.0])), word, atol=1e-5)


def test_time_shift_fills_with_zeros(word):
    late, early = time_shift(word, 800), time_shift(word, -800)
    assert late.shape == early.shape == word.shape
    assert torch.equal(late[:800], torch.zeros(800)) and torch.equal(late[800:], word[:-800])
    assert torch.equal(early[-800:], torch.zeros(800)) and torch.equal(early[:-800], word[800:])


def test_copies_are_seeded_and_shaped(word, noises):
    waves = [word, word[:8000]]
    before = torch.get_rng_state()
    first = Augmenter(AugmentConfig(copies=3, seed=7, noise_prob=1.0), noises).copies(waves)
    assert torch.equal(before, torch.get_rng_state())  # caller's random state untouched
    again = Augmenter(AugmentConfig(copies=3, seed=7, noise_prob=1.0), noises).copies(waves)
    other = Augmenter(AugmentConfig(copies=3, seed=8, noise_prob=1.0), noises).copies(waves)
    assert len(first) == 3 and all(len(copy) == 2 for copy in first)
    flat = [w for copy in first for w in copy]
    assert all(w.dim() == 1 and torch.isfinite(w).all() for w in flat)
    assert all(torch.equal(a, b) for a, b in zip(flat, [w for c in again for w in c]))
    assert not all(torch.equal(a, b) for a, b in zip(flat, [w for c in other for w in c]))
    assert not any(torch.equal(w, word) for w in flat[::2])  # every copy is changed
    # lengths stay within the speed range
    for i, wave in enumerate(waves):
        for copy in first:
            assert wave.numel() * 100 / 110 - 2 <= copy[i].numel() <= wave.numel() * 100 / 90 + 2


def test_feature_masks_are_seeded_and_keep_the_input():
    feats = torch.randn(4, 200, 80)
    original = feats.clone()
    masked = Augmenter(AugmentConfig(seed=3)).mask_features(feats)
    assert torch.equal(feats, original) and masked.shape == feats.shape
    assert torch.equal(masked, Augmenter(AugmentConfig(seed=3)).mask_features(feats))
    changed = (masked != feats).float().mean()
    assert 0.01 < float(changed) < 0.5
    # whole frequency bands are masked: some bin is replaced across every frame of an example
    assert ((masked[0] != feats[0]).all(dim=0)).any()
    single = Augmenter(AugmentConfig(seed=3)).mask_features(feats[0])
    assert single.shape == feats[0].shape


def test_bad_config_and_noise_folder(tmp_path):
    with pytest.raises(ValueError, match="snr_db"):
        AugmentConfig(snr_db=(20.0, 5.0))
    with pytest.raises(ValueError, match="synthetic"):
        AugmentConfig(synthetic=("purple",))
    with pytest.raises(ValueError, match="silent"):
        Augmenter(noises=[torch.zeros(100)])
    with pytest.raises(AudioError, match="no audio files"):
        load_noise_folder(tmp_path)
    sf.write(tmp_path / "hum.wav", 0.1 * np.sin(np.arange(80_000) / 5), 8000)  # 10 s at 8 kHz
    (noise,) = load_noise_folder(tmp_path)
    assert noise.numel() == 160_000
    sf.write(tmp_path / "quiet.wav", np.zeros(800), 8000)
    with pytest.raises(AudioError, match="quiet.wav"):
        load_noise_folder(tmp_path)
    (tmp_path / "quiet.wav").unlink()
    # a dangling link was left out of the noises without a word: named, as an unreadable file
    (tmp_path / "moved.wav").symlink_to(tmp_path / "gone" / "moved.wav")
    with pytest.raises(AudioError, match=r"moved\.wav: a broken symbolic link"):
        load_noise_folder(tmp_path)


@pytest.fixture(scope="module")
def whisper():
    from speechxfer.encoders import build_encoder

    return build_encoder("whisper-tiny.en", window="clip").eval()


def test_specaugment_masks_the_log_mel_the_encoder_reads(whisper, word):
    from speechxfer.train import masked_features

    batch, lengths = word[None], torch.tensor([word.numel()])
    clean, _ = whisper.features(batch, lengths)
    on = AugmentConfig(seed=5, specaugment=True, time_mask_fraction=0.2)
    with masked_features(whisper, Augmenter(on)):
        masked, _ = whisper.features(batch, lengths)
        with torch.no_grad():
            states = whisper(batch, lengths).hidden_states[-1]
    with masked_features(whisper, Augmenter(on)):
        again, _ = whisper.features(batch, lengths)
    with masked_features(whisper, Augmenter(replace(on, specaugment=False))):
        off, _ = whisper.features(batch, lengths)
    after, _ = whisper.features(batch, lengths)
    assert masked.shape == clean.shape and torch.equal(masked, again)  # seeded
    assert torch.equal(off, clean) and torch.equal(after, clean)  # off, and the hook is gone
    fill = masked[0] != clean[0]  # [mels, frames]
    assert fill.all(dim=1).any() and fill.all(dim=0).any()  # whole bands and whole frames
    assert len(torch.unique(masked[0][fill])) == 1  # filled with one value (the clip's mean)
    with torch.no_grad():
        assert not torch.allclose(states, whisper(batch, lengths).hidden_states[-1])


def test_specaugment_refuses_an_encoder_without_log_mel():
    from speechxfer.train import masked_features

    raw = torch.nn.Module()
    raw.name = "raw-samples"
    with (pytest.raises(ValueError, match="raw-samples.*raw samples"),
          masked_features(raw, Augmenter(AugmentConfig(specaugment=True)))):
        pass
    with masked_features(raw, Augmenter(AugmentConfig())):  # masks off: nothing to refuse
        pass


def test_frozen_cache_holds_masked_copies(whisper, word):
    from speechxfer.model import CommandClassifier
    from speechxfer.train import FeatureCache, training_cache

    model = CommandClassifier(whisper, {"command": ["a", "b"]})
    waves = [word, word[:9000]]
    cpu, n = torch.device("cpu"), whisper.num_layers
    clean = FeatureCache(model, waves, n, cpu)
    masks_only = AugmentConfig(copies=1, noise_prob=0, reverb_prob=0, speed_prob=0, shift_prob=0,
                               specaugment=True)
    copies = Augmenter(masks_only).copies(waves)[0]
    assert all(torch.equal(a, b) for a, b in zip(copies, waves))  # the waves are untouched
    cache = training_cache(model, waves + copies, 2, n, cpu, Augmenter(masks_only))
    assert len(cache.items) == 4
    assert all(torch.equal(cache.items[i], clean.items[i]) for i in range(2))
    assert all(cache.items[i + 2].shape == clean.items[i].shape for i in range(2))
    assert not any(torch.equal(cache.items[i + 2], clean.items[i]) for i in range(2))


def test_strategies_that_run_the_encoder_mask_only_training_batches(whisper, word, monkeypatch):
    import copy

    from speechxfer.model import CommandClassifier
    from speechxfer.train import TrainConfig, fit

    calls = []
    original = Augmenter.mask_features
    monkeypatch.setattr(Augmenter, "mask_features",
                        lambda self, x: calls.append(x.shape[0]) or original(self, x))
    waves, labels = [word, word[:9000]], [{"command": "a"}, {"command": "b"}]
    masks_only = AugmentConfig(noise_prob=0, reverb_prob=0, speed_prob=0, shift_prob=0,
                               specaugment=True)
    model = CommandClassifier(copy.deepcopy(whisper), {"command": ["a", "b"]})
    fit(model, waves, labels, waves, labels, TrainConfig(strategy="full", epochs=1, batch_size=1),
        augmenter=Augmenter(masks_only))
    assert calls == [1, 1]  # the two training batches; the two validation clips are not masked
