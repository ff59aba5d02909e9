import pytest
import torch
from torch import nn

from speechxfer.audio import SAMPLE_RATE, batch_waves, load
from speechxfer.encoders.cnn import CNN_ENCODERS, build_cnn
from speechxfer.heads import masked_mean

MAX_PARAMETERS = 1_000_000
NAMES = sorted(CNN_ENCODERS)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, single-threaded: these tiny convs gain nothing from intra-op threads, and on
    shared cores the extra thread spins (measured 6x slower with the CPUs busy)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _eval_encoder(name: str) -> nn.Module:
    encoder = build_cnn(name)
    # A few training-mode passes give BatchNorm non-trivial running statistics to test with.
    with torch.no_grad():
        for _ in range(3):
            encoder(0.1 * torch.randn(4, SAMPLE_RATE))
    return encoder.eval()


def test_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="ds-cnn"):
        build_cnn("nope")


@pytest.mark.parametrize("name", NAMES)
def test_shapes_mask_and_size(name):
    encoder = build_cnn(name)
    assert encoder.name == name and encoder.window == "clip" and encoder.sample_rate == SAMPLE_RATE
    assert encoder.num_layers == len(encoder.blocks)
    assert sum(p.numel() for p in encoder.parameters()) < MAX_PARAMETERS
    lengths = torch.tensor([SAMPLE_RATE, SAMPLE_RATE // 2])
    with torch.no_grad():
        out = encoder.eval()(0.1 * torch.randn(2, SAMPLE_RATE), lengths)
    assert len(out.hidden_states) == encoder.num_layers + 1
    frames = out.mask.shape[1]
    assert 45 <= frames <= 100  # 50 or 100 frames per second of audio
    for state in out.hidden_states:
        assert state.shape == (2, frames, encoder.hidden_size)
        assert (state[~out.mask] == 0).all()  # padded frames carry nothing
    counts = out.mask.sum(1)
    assert counts[0] == frames and abs(int(counts[1]) - frames // 2) <= 1
    assert (out.mask[:, :-1].int() >= out.mask[:, 1:].int()).all()  # real frames come first


@pytest.mark.parametrize("name", NAMES)
def test_run_blocks_resumes_forward(name):
    encoder = _eval_encoder(name)
    waves, lengths = 0.1 * torch.randn(2, SAMPLE_RATE), torch.tensor([SAMPLE_RATE, 9_000])
    with torch.no_grad():
        out = encoder(waves, lengths)
        for start in range(encoder.num_layers):
            states = encoder.run_blocks(out.hidden_states[start], out.mask, start)
            assert len(states) == encoder.num_layers - start
            torch.testing.assert_close(states[-1], out.hidden_states[-1])


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_a_clip(name, fsdd):
    encoder = _eval_encoder(name)
    short = load(fsdd / "3_theo_0.wav", SAMPLE_RATE)
    long = load(fsdd / "8_george_5.wav", SAMPLE_RATE)
    waves, lengths = batch_waves([short, long, 0.5 * long])
    assert lengths[0] < lengths.max()
    with torch.no_grad():
        alone = encoder(short[None])
        batch = encoder(waves, lengths)
    assert alone.mask.sum() == batch.mask[0].sum()
    for a, b in zip(alone.hidden_states, batch.hidden_states):
        torch.testing.assert_close(
            masked_mean(a, alone.mask)[0], masked_mean(b, batch.mask)[0], atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_first_block(name):
    encoder = build_cnn(name)
    out = encoder(0.1 * torch.randn(2, SAMPLE_RATE), torch.tensor([SAMPLE_RATE, 12_000]))
    masked_mean(out.hidden_states[-1], out.mask).pow(2).sum().backward()
    grads = [p.grad for p in encoder.blocks[0].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_reset_block_reinitialises_only_that_block(name):
    encoder, fresh = build_cnn(name), build_cnn(name)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    encoder.reset_block(1)
    torch.testing.assert_close(  # BatchNorm's defaults are deterministic
        encoder.blocks[1].norm1.weight, fresh.blocks[1].norm1.weight
    )
    assert not torch.equal(encoder.blocks[1].depthwise.weight, fresh.blocks[1].depthwise.weight)
    assert encoder.blocks[1].depthwise.weight.abs().max() < 1.0  # back to a fresh init's scale
    assert (encoder.blocks[0].norm1.weight == 2.0).all()


@pytest.mark.parametrize("name", NAMES)
def test_learns_real_digits(name, fsdd):
    """Three digits x two speakers, 4 takes each: a tiny probe should fit them quickly."""
    digits = ("1", "4", "7")
    clips = [
        (load(fsdd / f"{d}_{s}_{t}.wav", SAMPLE_RATE), i)
        for i, d in enumerate(digits)
        for s in ("jackson", "george")
        for t in range(4)
    ]
    waves, lengths = batch_waves([w for w, _ in clips])
    labels = torch.tensor([y for _, y in clips])
    encoder = build_cnn(name)
    probe = nn.Linear(encoder.hidden_size, len(digits))
    optimiser = torch.optim.Adam([*encoder.parameters(), *probe.parameters()], lr=3e-3)
    for _ in range(30):
        out = encoder(waves, lengths)
        logits = probe(masked_mean(out.hidden_states[-1], out.mask))
        loss = nn.functional.cross_entropy(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    encoder.eval()
    with torch.no_grad():
        out = encoder(waves, lengths)
        accuracy = (probe(masked_mean(out.hidden_states[-1], out.mask)).argmax(1) == labels).float()
    assert accuracy.mean() >= 0.75  # chance is 1/3
