"""Training a speaker model: the speaker head's own options, the last epoch kept, the
validation EER of its voices recorded."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer.audio import Clip
from speechxfer.augment import speed_speakers
from speechxfer.cli import build_parser, main
from speechxfer.jobs import train_job
from speechxfer.train import TrainConfig, verification_eer

FSDD_SPEAKERS = ("jackson", "george", "theo", "yweweler")


def fixed_embeddings(vectors: np.ndarray):
    """A ``run_batch`` giving the same embedding for a clip on every call."""
    table = torch.from_numpy(vectors.astype(np.float32))
    return lambda idx: {"speaker": table[idx]}


def test_verification_eer_scores_pairs_of_known_owners():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 5
    owners = ["a", "a", "b", "b", "c", None, "c"]
    x = np.stack([centres["abc".index(o or "a")] for o in owners]) + rng.standard_normal((7, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    model = torch.nn.Identity()  # verification_eer only switches it to eval mode
    assert verification_eer(model, fixed_embeddings(x), 7, owners, "speaker", 2) == 0.0
    # two clips swapped across speakers: their pairs now score against their labels
    swapped = x.copy()
    swapped[[1, 2]] = swapped[[2, 1]]
    assert verification_eer(model, fixed_embeddings(swapped), 7, owners, "speaker", 3) > 0.2
    # one owner only: no impostor pair, no EER
    assert verification_eer(model, fixed_embeddings(x), 2, ["a", "a"], "speaker", 2) is None


@pytest.fixture(scope="module")
def speaker_run(tmp_path_factory):
    """A small speaker model trained from the CLI on FSDD voices (a scratch DS-CNN: seconds),
    its speaker head on hidden state 0, the command head on the learned mix, the last epoch
    kept."""
    from conftest import copy_fsdd

    root = tmp_path_factory.mktemp("spk")
    data = copy_fsdd(root / "d", FSDD_SPEAKERS, ("1", "4"), 6)  # 1 in 6: validation
    out = root / "m"
    rc = main(["train", "--data", str(data), "--encoder", "ds-cnn", "--strategy", "scratch",
               "--epochs", "2",
               "--task", "speaker:embedding", "--head-option", "speaker.layer=0",
               "--head-option", "speaker.embedding_dim=16", "--keep", "last",
               "--speaker-speeds", "90,110",
               "--test-speaker", "yweweler", "--out", str(out)])
    assert rc in (0, None)
    return out


def test_speaker_head_reads_its_own_layer(speaker_run):
    config = json.loads((speaker_run / "config.json").read_text())
    assert config["heads"]["speaker"]["layer"] == 0
    assert config["heads"]["speaker"]["embedding_dim"] == 16
    assert config["heads"]["command"]["layer"] is None  # the shared default: a learned mix
    assert config["strategy"]["keep"] == "last"
    # three training voices, each also at 90% and 110% speed: nine speakers to tell apart
    assert config["tasks"]["speaker"] == sorted(
        f"{s}{p}" for s in ("george", "jackson", "theo") for p in ("", "@90", "@110"))
    summary = json.loads((speaker_run / "train_summary.json").read_text())
    assert summary["speaker_speeds"] == [90, 110] and summary["n_train_examples"] == 3 * 30


def test_last_epoch_kept_and_validation_voices_scored(speaker_run):
    summary = json.loads((speaker_run / "train_summary.json").read_text())
    history = summary["history"]
    assert len(history) == summary["best_epoch"] == 2  # no early stop, the last epoch kept
    assert all(0.0 <= h["val_eer_speaker"] <= 1.0 for h in history), history


@pytest.mark.parametrize(("argv", "message"), [
    (["--head-option", "layer=0"], "TASK.OPTION=VALUE"),
    (["--head-option", "speaker.colour=red"], "unknown head option 'colour'"),
    (["--head-option", "speaker.kind=single"], "the kind comes from --task"),
])
def test_bad_head_option_is_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_speed_speakers_are_new_voices(real_clip):
    clips = [Clip(Path("a.wav"), {"command": "7", "speaker": "jackson"}, "jackson"),
             Clip(Path("b.wav"), {"command": "7"}, None)]
    waves, out = speed_speakers([real_clip, real_clip[:8000]], clips, (90, 110), ["speaker"])
    assert [c.labels for c in out] == [
        clips[0].labels, clips[1].labels,
        {"command": "7", "speaker": "jackson@90"}, {"command": "7"},
        {"command": "7", "speaker": "jackson@110"}, {"command": "7"}]
    assert [c.speaker for c in out] == ["jackson", None] * 3  # the split's speaker is kept
    assert waves[2].numel() == pytest.approx(real_clip.numel() / 0.9, rel=0.01)  # slower
    assert waves[4].numel() == pytest.approx(real_clip.numel() / 1.1, rel=0.01)  # faster
    for bad in ((100,), (90, 90), (0,), (250,)):
        with pytest.raises(ValueError, match="speaker speeds"):
            speed_speakers([real_clip], clips[:1], bad, ["speaker"])


def test_speaker_speeds_need_an_embedding_task(small_fsdd, tmp_path):
    with pytest.raises(ValueError, match="--speaker-speeds makes new speakers"):
        train_job(small_fsdd, strategy="frozen", speaker_speeds=(90,), out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_head_option_values_are_typed():
    args = build_parser().parse_args([
        "train", "--head-option", "speaker.layer=0", "--head-option", "speaker.margin=0.3",
        "--head-option", "speaker.pooling=attentive", "--head-option", "speaker.layer=none"])
    assert args.head_option == [("speaker", "layer", 0), ("speaker", "margin", 0.3),
                                ("speaker", "pooling", "attentive"), ("speaker", "layer", None)]


def test_head_option_needs_a_task_of_the_run_and_keep_a_known_rule(small_fsdd, tmp_path,
                                                                      capsys):
    rc = main(["train", "--data", str(small_fsdd), "--strategy", "frozen",
               "--head-option", "speaker.layer=0", "--out", str(tmp_path / "a")])
    assert rc == 2 and "'speaker' is not a task of this run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--keep must be one of"):
        train_job(small_fsdd, strategy="frozen", keep="first", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="unknown keep"):
        TrainConfig(keep="first")
