import pytest
import torch

from speechxfer.audio import load
from speechxfer.encoders import build_encoder
from speechxfer.model import CommandClassifier
from speechxfer.train import (
    Checkpointer,
    FeatureCache,
    TrainConfig,
    cached_proba,
    encode_targets,
    fit,
    length_batches,
    masked_loss,
    prepare,
)


def whisper_model(strategy: str = "top-k") -> CommandClassifier:
    torch.manual_seed(0)
    return CommandClassifier(build_encoder("whisper-tiny.en", pretrained=False),
                             {"command": ["a", "b"], "speaker": ["x", "y"]})


def trainable(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def test_strategies_choose_trainable_parameters():
    m = whisper_model()
    assert prepare(m, TrainConfig(strategy="frozen")) == 4
    assert not trainable(m.encoder) and trainable(m.heads)
    m = whisper_model()
    assert prepare(m, TrainConfig(strategy="top-k", k=1)) == 3
    assert trainable(m.encoder.blocks[3]) and not trainable(m.encoder.blocks[2])
    assert trainable(m.encoder.ln_post) and not trainable(m.encoder.conv1)
    m = whisper_model()
    first = [p.clone() for p in m.encoder.blocks[3].parameters()]
    assert prepare(m, TrainConfig(strategy="reinit-k", k=1)) == 0
    assert any(not torch.equal(a, b) for a, b in zip(first, m.encoder.blocks[3].parameters()))
    assert all(p.requires_grad for p in m.encoder.parameters())
    with pytest.raises(ValueError, match="top-k needs"):
        prepare(whisper_model(), TrainConfig(strategy="top-k", k=9))
    with pytest.raises(ValueError, match="unknown strategy"):
        TrainConfig(strategy="magic")


def test_missing_label_changes_no_gradient():
    m = whisper_model().eval()  # no dropout: the two passes must be comparable
    labels = [{"command": "a", "speaker": "x"}, {"command": "b"}]
    targets = encode_targets(m, labels)
    assert targets["speaker"].tolist() == [0, -1]
    wave = torch.randn(2, 8000) * 0.1
    out = m(wave, torch.tensor([8000, 8000]))
    # the speaker head's gradient must not depend on clip 2, which has no speaker label
    loss = masked_loss({"speaker": out["speaker"]}, targets, {})
    grad_full = torch.autograd.grad(loss, m.heads["speaker"].classifier[-1].weight)[0]
    out1 = m(wave[:1], torch.tensor([8000]))
    loss1 = masked_loss({"speaker": out1["speaker"]}, {"speaker": targets["speaker"][:1]}, {})
    grad_one = torch.autograd.grad(loss1, m.heads["speaker"].classifier[-1].weight)[0]
    assert torch.allclose(grad_full, grad_one, atol=1e-6)


def test_length_batches_cover_every_clip_once():
    batches = length_batches(list(range(100, 0, -1)), 8, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(100)) and max(len(b) for b in batches) == 8
    assert batches != length_batches(list(range(100, 0, -1)), 8, seed=4)


@pytest.fixture(scope="module")
def clips(fsdd):
    names = [f"{d}_{s}_{t}.wav" for d in ("1", "7") for s in ("jackson", "george") for t in range(4)]
    return [load(fsdd / n) for n in names], [{"command": n[0]} for n in names]


def test_crash_mid_training_resumes_from_checkpoint(clips, tmp_path, monkeypatch, caplog):
    waves, labels = clips
    config = TrainConfig(strategy="scratch", epochs=3, batch_size=8, patience=9)

    def model():
        torch.manual_seed(0)
        return CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["1", "7"]})

    real_save = Checkpointer.save
    calls = []

    def crashing_save(self, *args):
        real_save(self, *args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash after epoch 2")

    monkeypatch.setattr(Checkpointer, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        fit(model(), waves, labels, waves[:4], labels[:4], config, tmp_path / "ckpt")
    monkeypatch.setattr(Checkpointer, "save", real_save)
    caplog.set_level("INFO", logger="speechxfer")
    result = fit(model(), waves, labels, waves[:4], labels[:4], config, tmp_path / "ckpt")
    assert result.resumed_from == 2  # epochs 1 and 2 were done, as history numbers them
    # the rerun says it resumed: its first epoch line alone reads like a fresh start
    assert f"resuming from the checkpoint in {tmp_path / 'ckpt'}: epoch 2 of 3 done" in caplog.text
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_scratch_cnn_learns_real_clips(clips):
    waves, labels = clips
    config = TrainConfig(strategy="scratch", epochs=12, batch_size=8, lr_head=3e-3, patience=20)
    torch.manual_seed(0)
    m = CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": ["1", "7"]})
    fit(m, waves, labels, waves, labels, config)
    probs = m.predict_proba(waves)
    acc = (probs.argmax(1) == [0 if lab["command"] == "1" else 1 for lab in labels]).mean()
    assert acc >= 0.8


def test_a_mean_pooled_cache_gives_a_mean_pooled_head_the_same_probabilities(fsdd):
    """Fits on the frame-averaged cache (``FeatureCache.mean_pooled``) are the fits on the
    frames: the layer mix is linear, so averaging first changes nothing but the cost."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("whisper-tiny.en", window="2s"), {"command": ["a", "b"]})
    torch.nn.init.normal_(model.heads["command"].mix.weights)  # a mix that is not uniform
    waves = [load(fsdd / f"{d}_theo_0.wav") for d in "0123"]
    cache = FeatureCache(model, waves, model.encoder.num_layers, torch.device("cpu"))
    pooled = cache.mean_pooled()
    assert {x.shape[1] for x in pooled.items} == {1} and max(x.shape[1] for x in cache.items) > 1
    assert cached_proba(model, pooled) == pytest.approx(cached_proba(model, cache), abs=2e-3)
    assert cached_proba(model, pooled) == pytest.approx(model.predict_proba(waves), abs=2e-3)


@pytest.mark.parametrize("change, name", [
    ({"lr_head": 0.0}, "lr_head"), ({"lr_encoder": float("nan")}, "lr_encoder"),
    ({"lr_head": -1e-3}, "lr_head"), ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "epochs"), ({"task_weights": {"speaker": float("nan")}}, "speaker"),
    ({"task_weights": {"speaker": -1.0}}, "speaker"), ({"warmup_fraction": 2.0}, "warmup"),
])
def test_config_refuses_values_that_would_train_nothing_or_nan(change, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**change)


def test_a_task_weight_for_no_task_of_the_model_is_refused():
    with pytest.raises(ValueError, match=r"\['speakr'\] the model lacks"):
        prepare(whisper_model(), TrainConfig(strategy="frozen", task_weights={"speakr": 2.0}))


def test_top_k_refuses_heads_that_read_below_the_tuned_blocks():
    """Hidden state 2 of 4 blocks comes before the top 2: tuning them would change nothing."""
    encoder = build_encoder("whisper-tiny.en", pretrained=False)
    low = CommandClassifier(encoder, {"command": ["a", "b"]}, layer=2)
    with pytest.raises(ValueError, match="every head reads one at or below it"):
        prepare(low, TrainConfig(strategy="top-k", k=2))
    assert prepare(low, TrainConfig(strategy="top-k", k=3)) == 1  # block 1 feeds state 2
    high = CommandClassifier(encoder, {"command": ["a", "b"]}, layer=-1)
    assert prepare(high, TrainConfig(strategy="top-k", k=2)) == 2
