"""wav2vec2/HuBERT: loaders checked against torchaudio on tiny random checkpoints built here.

The real checkpoints cannot be downloaded here, so each test writes a small random model in the
exact on-disk layout (HF names via this file's own inverse mapping, written independently of the
loader's), loads it, and compares with the torchaudio model it came from on a real recording.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchaudio.models import Wav2Vec2Model, wav2vec2_model

from speechxfer.audio import batch_waves
from speechxfer.encoders import build_encoder
from speechxfer.encoders.wav2vec2 import CheckpointError, Wav2Vec2Encoder, load_wav2vec2
from speechxfer.model import CommandClassifier, ModelError, load_model

CONVS = [(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2  # the real stack's shape, 8 channels
LAYERS = 3
VARIANTS = ("base", "large")  # group-norm + post-LN, layer-norm + pre-LN ("stable")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(variant: str) -> dict:
    large = variant == "large"
    return {
        "extractor_mode": "layer_norm" if large else "group_norm",
        "extractor_conv_layer_config": CONVS, "extractor_conv_bias": large,
        "encoder_embed_dim": 16, "encoder_projection_dropout": 0.1,
        # an even kernel, like the real 128: torchaudio and HF then drop the last output frame
        "encoder_pos_conv_kernel": 6, "encoder_pos_conv_groups": 4,
        "encoder_num_layers": LAYERS, "encoder_num_heads": 4, "encoder_attention_dropout": 0.1,
        "encoder_ff_interm_features": 32, "encoder_ff_interm_dropout": 0.1,
        "encoder_dropout": 0.1, "encoder_layer_norm_first": large, "encoder_layer_drop": 0.05,
        "aux_num_out": None,
    }


def _random_model(params: dict) -> Wav2Vec2Model:
    """Every parameter perturbed, so swapped or skipped norms cannot go unnoticed."""
    model = wav2vec2_model(**params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _hf_config(params: dict, model_type: str) -> dict:
    """Inverse of torchaudio's ``import_huggingface._get_config``, as HF's save_pretrained."""
    dims, kernels, strides = (list(c) for c in zip(*params["extractor_conv_layer_config"]))
    return {
        "model_type": model_type, "architectures": ["Wav2Vec2ForCTC"],
        "feat_extract_norm": params["extractor_mode"].removesuffix("_norm"),
        "conv_dim": dims, "conv_kernel": kernels, "conv_stride": strides,
        "conv_bias": params["extractor_conv_bias"], "hidden_size": params["encoder_embed_dim"],
        "feat_proj_dropout": params["encoder_projection_dropout"],
        "num_conv_pos_embeddings": params["encoder_pos_conv_kernel"],
        "num_conv_pos_embedding_groups": params["encoder_pos_conv_groups"],
        "num_hidden_layers": params["encoder_num_layers"],
        "num_attention_heads": params["encoder_num_heads"],
        "attention_dropout": params["encoder_attention_dropout"],
        "intermediate_size": params["encoder_ff_interm_features"],
        "activation_dropout": params["encoder_ff_interm_dropout"],
        "hidden_dropout": params["encoder_dropout"],
        "do_stable_layer_norm": params["encoder_layer_norm_first"],
        "layerdrop": params["encoder_layer_drop"], "hidden_act": "gelu",
        "feat_extract_activation": "gelu", "layer_norm_eps": 1e-5, "vocab_size": 5,
        "mask_time_prob": 0.05,
    }


def _hf_state(model: Wav2Vec2Model, prefix: str, old_weight_norm: bool) -> dict[str, torch.Tensor]:
    """torchaudio names -> HF names, plus what HF task checkpoints carry beyond the encoder."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("encoder.transformer.", "encoder.", 1)
        key = key.replace("encoder.feature_projection.", "feature_projection.", 1)
        if old_weight_norm:
            key = key.replace(".parametrizations.weight.original0", ".weight_g")
            key = key.replace(".parametrizations.weight.original1", ".weight_v")
        out[prefix + key] = value.clone()
    hidden = model.encoder.feature_projection.projection.out_features
    out[prefix + "masked_spec_embed"] = torch.rand(hidden)
    if prefix:  # a task model: its head lives outside the backbone
        out["lm_head.weight"], out["lm_head.bias"] = torch.randn(5, hidden), torch.randn(5)
    return out


def _write_hf(
    folder: Path, model: Wav2Vec2Model, params: dict, model_type: str = "wav2vec2",
    prefix: str = "wav2vec2.", old_weight_norm: bool = True, do_normalize: bool = False,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_hf_config(params, model_type)))
    pre = {"do_normalize": do_normalize, "sampling_rate": 16000, "feature_size": 1}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    save_file(_hf_state(model, prefix, old_weight_norm), str(folder / "model.safetensors"))
    return folder


def _hf_normalise(wave: torch.Tensor) -> torch.Tensor:
    """HF's zero_mean_unit_var_norm on one clip, in numpy as HF computes it."""
    x = wave.numpy().astype(np.float64)
    return torch.from_numpy((x - x.mean()) / np.sqrt(x.var() + 1e-7)).float()


def _assert_matches_torchaudio(
    encoder: Wav2Vec2Encoder, model: Wav2Vec2Model, wave: torch.Tensor, fed: torch.Tensor
) -> None:
    """``encoder`` on ``wave`` gives torchaudio's per-layer outputs on ``fed`` (its input)."""
    with torch.no_grad():
        out = encoder(wave[None])
        ref, _ = model.extract_features(fed[None])
        final = model.encoder(model.feature_extractor(fed[None], None)[0])  # final norm, no aux
        first_layer, _ = model.encoder.transformer.layers[0](out.hidden_states[0])
    close = {"atol": 2e-5, "rtol": 1e-4}
    assert len(out.hidden_states) == LAYERS + 1
    # hidden state 0 is exactly what torchaudio's first layer consumes
    torch.testing.assert_close(first_layer, ref[0], **close)
    for mine, theirs in zip(out.hidden_states[1:-1], ref[:-1], strict=True):
        torch.testing.assert_close(mine, theirs, **close)
    torch.testing.assert_close(out.hidden_states[-1], final, **close)
    assert out.mask.all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_checkpoint_matches_torchaudio(tmp_path: Path, variant: str, real_clip) -> None:
    params = _params(variant)
    model = _random_model(params)
    large = variant == "large"
    # base: a ForCTC checkpoint with old weight-norm names; large: a bare model, new names,
    # and do_normalize on
    folder = _write_hf(
        tmp_path / "ckpt", model, params, prefix="" if large else "wav2vec2.",
        old_weight_norm=not large, do_normalize=large,
    )
    encoder = build_encoder(f"wav2vec2:{folder}").eval()
    assert isinstance(encoder, Wav2Vec2Encoder)
    assert encoder.name == f"wav2vec2:{folder.resolve()}"
    assert (encoder.hidden_size, encoder.num_layers, encoder.window) == (16, LAYERS, "clip")
    wave = real_clip
    _assert_matches_torchaudio(encoder, model, wave, _hf_normalise(wave) if large else wave)
    final_norm = list(encoder.model.encoder.transformer.layer_norm.parameters())
    assert [id(p) for p in encoder.top_parameters()] == [id(p) for p in final_norm] * large


def test_hubert_checkpoint(tmp_path: Path, real_clip) -> None:
    params = _params("base")
    model = _random_model(params)
    folder = _write_hf(tmp_path / "hubert", model, params, model_type="hubert", prefix="hubert.")
    encoder = build_encoder(f"hubert:{folder}").eval()
    assert encoder.name.startswith("hubert:")
    wave = real_clip
    _assert_matches_torchaudio(encoder, model, wave, wave)


def test_torchaudio_bundle(tmp_path: Path, real_clip) -> None:
    params = _params("large") | {"aux_num_out": 7}  # an ASR bundle: its CTC head is dropped
    model = _random_model(params)
    folder = tmp_path / "bundle"
    folder.mkdir()
    config = params | {"normalize_waveform": True}
    (folder / "torchaudio_config.json").write_text(json.dumps(config))
    # the published bundles still use the old weight_norm names
    state = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): v
        for k, v in model.state_dict().items()
    }
    save_file(state, str(folder / "model.safetensors"))
    encoder = load_wav2vec2(folder).eval()
    wave = real_clip
    fed = torch.nn.functional.layer_norm(wave, wave.shape)  # what the bundle's model does
    _assert_matches_torchaudio(encoder, model, wave, fed)
    # built as a saved classifier records it (through JSON), weights still from the bundle
    recorded = json.loads(json.dumps(encoder.recorded()))
    assert (recorded["normalize"], recorded["norm_eps"]) == (True, 1e-5)
    again = build_encoder(encoder.name, recorded=recorded).eval()
    _assert_matches_torchaudio(again, model, wave, fed)


def test_pickle_weights_only_through_weights_only_load(tmp_path: Path, real_clip) -> None:
    params = _params("base")
    model = _random_model(params)
    folder = _write_hf(tmp_path / "bin", model, params)
    state = _hf_state(model, "wav2vec2.", old_weight_norm=True)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    wave = real_clip
    _assert_matches_torchaudio(load_wav2vec2(folder).eval(), model, wave, wave)


@pytest.fixture(params=VARIANTS)
def encoder(request: pytest.FixtureRequest, tmp_path: Path) -> Wav2Vec2Encoder:
    params = _params(request.param)
    folder = _write_hf(tmp_path / "ckpt", _random_model(params), params, do_normalize=True)
    return load_wav2vec2(folder).eval()


def _padded_batch(clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real clip between a longer and a shorter noise clip (lengths not frame multiples)."""
    gen = torch.Generator().manual_seed(1)
    noise = [0.1 * torch.randn(n, generator=gen) for n in (12_345, 3_001)]
    return batch_waves([noise[0], clip, noise[1]])


def test_shapes_and_mask(encoder: Wav2Vec2Encoder, real_clip) -> None:
    waves, lengths = _padded_batch(real_clip)
    with torch.no_grad():
        out = encoder(waves, lengths)
    frames = (lengths - 400) // 320 + 1  # the real stack: 25-ms receptive field, 20-ms hop
    assert out.mask.shape == (3, int(frames.max()))
    assert out.mask.sum(1).tolist() == frames.tolist()
    assert (out.mask[:, :-1].int() >= out.mask[:, 1:].int()).all()  # real frames come first
    assert len(out.hidden_states) == encoder.num_layers + 1
    for state in out.hidden_states:
        assert state.shape == (3, out.mask.shape[1], encoder.hidden_size)
        assert torch.isfinite(state).all()


def test_padding_invariance(encoder: Wav2Vec2Encoder, real_clip) -> None:
    """The clip alone and in a padded batch agree on its real frames, at every layer."""
    waves, lengths = _padded_batch(real_clip)
    with torch.no_grad():
        batched = encoder(waves, lengths)
        alone = encoder(real_clip[None])
    n = int(alone.mask.sum())
    assert int(batched.mask[1].sum()) == n
    for b, a in zip(batched.hidden_states, alone.hidden_states, strict=True):
        torch.testing.assert_close(b[1, :n], a[0], atol=2e-5, rtol=1e-4)


def test_run_blocks_resumes_forward(encoder: Wav2Vec2Encoder, real_clip) -> None:
    waves, lengths = _padded_batch(real_clip)
    with torch.no_grad():
        out = encoder(waves, lengths)
        for start in (1, encoder.num_layers - 1):
            resumed = encoder.run_blocks(out.hidden_states[start], out.mask, start)
            assert len(resumed) == encoder.num_layers - start
            for r, f in zip(resumed, out.hidden_states[start + 1 :], strict=True):
                torch.testing.assert_close(r, f, atol=1e-6, rtol=1e-5)
        assert encoder.run_blocks(out.hidden_states[-1], out.mask, encoder.num_layers) == []


def test_reset_block_and_too_short_clips(encoder: Wav2Vec2Encoder) -> None:
    before = [p.clone() for p in encoder.blocks[1].parameters()]
    untouched = [p.clone() for p in encoder.blocks[0].parameters()]
    encoder.reset_block(1)
    assert all(not torch.equal(a, b) for a, b in zip(before, encoder.blocks[1].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(untouched, encoder.blocks[0].parameters()))
    with pytest.raises(ValueError, match="at least 400 samples"):
        encoder(torch.randn(1, 399))


def test_pretrained_false_reads_config_only(tmp_path: Path) -> None:
    params = _params("large")
    folder = _write_hf(tmp_path / "ckpt", _random_model(params), params)
    pretrained = build_encoder(f"wav2vec2:{folder}")
    (folder / "model.safetensors").unlink()
    fresh = build_encoder(f"wav2vec2:{folder}", pretrained=False)
    shapes = {k: v.shape for k, v in pretrained.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    assert not torch.equal(fresh.blocks[0].attention.q_proj.weight,
                           pretrained.blocks[0].attention.q_proj.weight)
    with pytest.raises(ValueError, match="window 'clip'"):
        build_encoder(f"wav2vec2:{folder}", window="30s", pretrained=False)


def _edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_bad_folders_raise_clear_errors(tmp_path: Path) -> None:
    params = _params("base")
    model = _random_model(params)

    def fresh(name: str) -> Path:
        return _write_hf(tmp_path / name, model, params)

    missing = fresh("missing")
    _edit_weights(missing, lambda s: s.pop("wav2vec2.encoder.layers.1.attention.k_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.attention\.k_proj\.bias") as e:
        load_wav2vec2(missing)
    assert str(missing) in str(e.value)

    shape = fresh("shape")
    key = "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight"
    _edit_weights(shape, lambda s: s.update({key: torch.zeros(16, 31)}))
    with pytest.raises(CheckpointError, match=r"wrong shape.*output_dense\.weight \(16, 31\)"):
        load_wav2vec2(shape)

    unknown = fresh("unknown")
    _edit_weights(unknown, lambda s: s.update({"wav2vec2.adapter.proj.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected: wav2vec2\.adapter\.proj\.weight"):
        load_wav2vec2(unknown)

    too_deep = fresh("too_deep")  # the config promises a layer the weights lack
    config = json.loads((too_deep / "config.json").read_text()) | {"num_hidden_layers": 4}
    (too_deep / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing.*layers\.3\."):
        load_wav2vec2(too_deep)

    wavlm = fresh("wavlm")
    (wavlm / "config.json").write_text(json.dumps(config | {"model_type": "wavlm"}))
    with pytest.raises(CheckpointError, match="model_type 'wavlm' is not supported"):
        build_encoder(f"wav2vec2:{wavlm}")

    incomplete = fresh("incomplete")
    (incomplete / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(CheckpointError, match="missing keys hidden_size"):
        load_wav2vec2(incomplete, pretrained=False)

    no_weights = fresh("no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_wav2vec2(no_weights)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="expected config.json"):
        build_encoder(f"hubert:{empty}")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_wav2vec2(tmp_path / "absent")
    with pytest.raises(ValueError, match="wav2vec2:<checkpoint folder>"):
        build_encoder("wav2vec3:/nowhere")


def test_command_classifier_end_to_end(tmp_path: Path, real_clip) -> None:
    """Forward, save and reload: the saved name rebuilds the encoder from the checkpoint."""
    params = _params("base")
    folder = _write_hf(tmp_path / "ckpt", _random_model(params), params, do_normalize=True)
    classifier = CommandClassifier(build_encoder(f"wav2vec2:{folder}"), {"command": ["7", "other"]})
    waves, lengths = _padded_batch(real_clip)
    logits = classifier(waves, lengths)["command"]
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    logits.sum().backward()  # gradients reach the encoder's blocks
    assert classifier.encoder.blocks[-1].attention.q_proj.weight.grad is not None
    classifier.eval()
    reloaded = CommandClassifier.load(classifier.save(tmp_path / "classifier"))
    clip = real_clip
    np.testing.assert_allclose(
        reloaded.predict_proba([clip]), classifier.predict_proba([clip]), atol=1e-6
    )


def test_unreadable_or_wrong_typed_checkpoints_name_the_file(tmp_path: Path) -> None:
    """Garbage weights, integer or NaN tensors, a config torchaudio cannot build and a string
    flag are each a CheckpointError naming the file, never a cast, NaN outputs or a reader's
    error that names nothing."""
    params = _params("base")
    model = _random_model(params)
    key = "wav2vec2.encoder.layers.0.attention.k_proj.weight"

    def fresh(name: str) -> Path:
        return _write_hf(tmp_path / name, model, params)

    garbage = fresh("garbage")
    (garbage / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable weights"):
        load_wav2vec2(garbage)
    pickled = fresh("pickled")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: unreadable weights"):
        load_wav2vec2(pickled)
    torch.save([1, 2], pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a mapping"):
        load_wav2vec2(pickled)

    integer = fresh("integer")
    _edit_weights(integer, lambda s: s.update({key: s[key].long()}))
    with pytest.raises(CheckpointError, match=r"not floating point: .*k_proj\.weight torch\.int64"):
        load_wav2vec2(integer)
    nan = fresh("nan")
    _edit_weights(nan, lambda s: s[key].__setitem__((0, 0), float("nan")))
    with pytest.raises(CheckpointError, match=r"NaN or infinite values: .*k_proj\.weight"):
        load_wav2vec2(nan)
    half = fresh("half")  # half precision is widened, as HF loads it
    _edit_weights(half, lambda s: s.update({k: v.half() for k, v in s.items()}))
    assert load_wav2vec2(half).blocks[0].attention.k_proj.weight.dtype == torch.float32

    for name, edit, problem in (
        ("heads", {"num_attention_heads": 3}, "describes no buildable model"),
        ("hidden", {"hidden_size": "16"}, "hidden_size must be a whole number, got '16'"),
        # torchaudio builds "false" as true: the other layer-norm placement, unsaid
        ("stable", {"do_stable_layer_norm": "false"}, "do_stable_layer_norm must be true or"),
    ):
        folder = fresh(name)
        config = json.loads((folder / "config.json").read_text()) | edit
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=f"config.json: {problem}"):
            load_wav2vec2(folder, pretrained=False)

    flag = fresh("flag")
    (flag / "preprocessor_config.json").write_text(json.dumps({"do_normalize": "false"}))
    with pytest.raises(CheckpointError, match="preprocessor_config.json: do_normalize must be"):
        load_wav2vec2(flag)


def _saved_classifier(tmp_path: Path, real_clip) -> tuple[Path, Path, np.ndarray]:
    """A classifier saved on a tiny HF checkpoint whose preprocessor asks for normalised input.

    The pre-LN "large" variant: its per-frame layer norms see the waveform's scale, which the
    base variant's per-channel GroupNorm would largely cancel.
    """
    params = _params("large")
    folder = _write_hf(tmp_path / "ckpt", _random_model(params), params, prefix="",
                       do_normalize=True)
    classifier = CommandClassifier(build_encoder(f"wav2vec2:{folder}"), {"command": ["7", "other"]})
    saved = classifier.eval().save(tmp_path / "classifier")
    return folder, saved, classifier.predict_proba([real_clip])


def test_saved_classifier_keeps_its_encoder_settings(tmp_path: Path, real_clip, caplog) -> None:
    """Editing or deleting the checkpoint folder after training changes no prediction: the saved
    model recorded its input normalisation and architecture, and those win (with a warning)."""
    folder, saved, before = _saved_classifier(tmp_path, real_clip)
    recorded = json.loads((saved / "config.json").read_text())["encoder"]
    assert recorded["normalize"] is True and recorded["norm_eps"] == 1e-7
    assert recorded["params"]["encoder_layer_norm_first"] is True
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    hf = json.loads((folder / "config.json").read_text()) | {"do_stable_layer_norm": False}
    (folder / "config.json").write_text(json.dumps(hf))  # same tensors, other layer-norm places
    with caplog.at_level(logging.WARNING, logger="speechxfer"):
        model = load_model(saved)
    assert str(folder / "preprocessor_config.json") in caplog.text
    assert f"{folder / 'config.json'} now says encoder_layer_norm_first" in caplog.text
    assert model.encoder.normalize and model.encoder._final_norm
    np.testing.assert_allclose(model.predict_proba([real_clip]), before, atol=1e-6)
    model.encoder.normalize = False  # what the edited folder says does change the predictions
    assert not np.allclose(model.predict_proba([real_clip]), before, atol=1e-4)

    shutil.rmtree(folder)  # the model's own safetensors hold the encoder's weights
    np.testing.assert_allclose(load_model(saved).predict_proba([real_clip]), before, atol=1e-6)


def test_classifier_saved_before_settings_were_recorded(tmp_path: Path, real_clip) -> None:
    """An older config.json (encoder name and window only) still loads, from the folder."""
    folder, saved, before = _saved_classifier(tmp_path, real_clip)
    config = json.loads((saved / "config.json").read_text())
    config["encoder"] = {k: config["encoder"][k] for k in ("name", "window")}
    (saved / "config.json").write_text(json.dumps(config))
    np.testing.assert_allclose(load_model(saved).predict_proba([real_clip]), before, atol=1e-6)
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    assert load_model(saved).encoder.normalize is False  # as it always did: the folder decides


def test_bad_recorded_encoder_settings_name_the_file(tmp_path: Path, real_clip) -> None:
    _, saved, _ = _saved_classifier(tmp_path, real_clip)
    path = saved / "config.json"
    good = json.loads(path.read_text())
    params = good["encoder"]["params"]
    for edit, problem in (
        ({"normalize": "true"}, "encoder normalize must be true or false, got 'true'"),
        ({"norm_eps": 0}, "encoder norm_eps must be a positive number, got 0"),
        ({"norm_eps": True}, "encoder norm_eps must be a positive number, got True"),
        ({"params": [1, 2]}, "encoder params must map wav2vec2_model arguments"),
        ({"params": params | {"dropout": 0.1}},
         r"not wav2vec2_model keyword arguments \(unknown: dropout; missing: none\)"),
        ({"params": params | {"encoder_num_heads": 3}}, "encoder params: describes no buildable"),
        # torchaudio builds "false" as true: a hand-edited flag would silently be the other one
        ({"params": params | {"encoder_layer_norm_first": "false"}},
         "encoder params: encoder_layer_norm_first must be true or false, got 'false'"),
        ({"params": params | {"encoder_num_heads": 4.0}},
         "encoder params: encoder_num_heads must be a whole number, got 4.0"),
        ({"params": params | {"encoder_num_layers": 2}},  # buildable: the weights do not fit
         r"does not match model\.safetensors \(missing \[\], unexpected"),
        ({"extra": 1}, "encoder records unknown setting"),
    ):
        path.write_text(json.dumps(good | {"encoder": good["encoder"] | edit}))
        with pytest.raises(ModelError, match=re.escape(str(saved)) + r".*config\.json.*" + problem):
            load_model(saved)
    partial = {k: v for k, v in good["encoder"].items() if k != "params"}
    path.write_text(json.dumps(good | {"encoder": partial}))
    with pytest.raises(ModelError, match=r"config.json: .*records normalize, norm_eps but not params"):
        load_model(saved)
    with pytest.raises(ValueError, match="'whisper-tiny.en' takes no recorded settings"):
        build_encoder("whisper-tiny.en", recorded={"normalize": True})
