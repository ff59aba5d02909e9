import pytest
import torch

from speechxfer.heads import ClassifierHead, HeadConfig, LayerMix, masked_mean


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)


def test_layer_mix_starts_uniform_and_can_pick_one():
    states = [torch.full((1, 2, 3), float(i)) for i in range(4)]
    assert LayerMix(4)(states).mean().item() == pytest.approx(1.5)
    assert LayerMix(4, layer=2)(states).mean().item() == 2.0
    with pytest.raises(ValueError, match="out of range"):
        LayerMix(4, layer=7)


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
def test_head_shapes_and_padding_invariance(pooling):
    torch.manual_seed(0)
    head = ClassifierHead(HeadConfig(num_classes=5, hidden_size=8, num_states=3, pooling=pooling))
    head.eval()
    states = [torch.randn(1, 4, 8) for _ in range(3)]
    mask = torch.ones(1, 4, dtype=torch.bool)
    padded = [torch.cat([s, torch.randn(1, 3, 8)], 1) for s in states]
    pmask = torch.tensor([[True] * 4 + [False] * 3])
    out = head(states, mask)
    assert out.shape == (1, 5)
    assert torch.allclose(out, head(padded, pmask), atol=1e-5)


def test_unknown_pooling():
    with pytest.raises(ValueError, match="unknown pooling"):
        ClassifierHead(HeadConfig(2, 8, 3, pooling="max"))


@pytest.mark.parametrize("option", [{"embedding_dim": 16}, {"margin": 0.3}, {"scale": 10.0}])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_an_embedding_option_on_another_kind_of_head_is_refused(option, kind):
    """--head-option command.embedding_dim=16 on a single head would be ignored without a word."""
    with pytest.raises(ValueError, match=f"{next(iter(option))}: options of embedding heads only"):
        HeadConfig(num_classes=3, hidden_size=8, num_states=2, kind=kind, **option)
    HeadConfig(num_classes=3, hidden_size=8, num_states=2, kind="embedding", **option)
