"""Zero-shot scoring with Whisper's decoder: exactness of the batched layout, accuracy on real
clips, rejection, save/load and the CLI path (``train --strategy zero-shot``)."""

import json
from pathlib import Path

import pytest
import torch

from speechxfer import load_model
from speechxfer.audio import batch_waves, load
from speechxfer.cli import main
from speechxfer.zeroshot import NONE_LABEL, ZeroShotRecognizer, surface_forms, text_to_label

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [load(FSDD / f"{d}_jackson_1.wav") for d in DIGITS]


@pytest.fixture(scope="module")
def system() -> ZeroShotRecognizer:
    return ZeroShotRecognizer(DIGITS, window="clip")


def test_batched_layout_equals_decoding_each_candidate(system, clips):
    """The trie layout must give what teacher-forcing each spelling on its own gives."""
    batch, lengths = batch_waves(clips[:2])
    with torch.no_grad():
        states, mask = system.encode(batch, lengths)
        fast = system.candidate_scores(states, mask)
        prefix = system.prefix_tokens()
        end = [system.tokenizer.token_to_id("<|endoftext|>")]
        forms = [f for lab in DIGITS for a in system.aliases[lab] for f in surface_forms(a, True)]
        for c, form in list(enumerate(forms))[::3]:  # a third of them keeps the test quick
            seq = torch.tensor([prefix + system.encode_text(form) + end] * 2)
            logp = torch.log_softmax(system.model.logits(seq, states, mask), -1)
            slow = logp[:, len(prefix) - 1 : -1].gather(2, seq[:, len(prefix) :, None]).mean((1, 2))
            torch.testing.assert_close(fast[:, c], slow, atol=1e-4, rtol=0)


def test_real_clips_well_above_chance(system, clips):
    predicted = [p.label for p in system.predict_batch(clips, 16_000)]
    assert sum(p == t for p, t in zip(predicted, DIGITS)) >= 8  # chance: 1 of 10


def test_none_for_words_not_in_the_list(clips):
    """Labels '1' and '4' only, threshold calibrated on another speaker's clips of those two:
    that speaker's '1' and '4' pass, their '0', '2' and '7' come back as ``none``."""
    two = ZeroShotRecognizer(["1", "4"], window="clip")
    calib = [load(FSDD / f"{d}_george_{t}.wav") for d in ("1", "4") for t in range(4)]
    two.calibrate(calib, ["1"] * 4 + ["4"] * 4, reject_by="score", false_reject=0.0)
    labels = [p.label for p in two.predict_batch([clips[i] for i in (1, 4, 0, 2, 7)], 16_000)]
    assert labels == ["1", "4", NONE_LABEL, NONE_LABEL, NONE_LABEL]


def test_save_load_round_trip(system, clips, tmp_path):
    system.info = {"strategy": {"strategy": "zero-shot"}}
    system.save(tmp_path)
    again = load_model(tmp_path)
    assert isinstance(again, ZeroShotRecognizer)
    assert again.config() == system.config()
    assert (again.predict_proba(clips[:2]) == system.predict_proba(clips[:2])).all()


def test_text_to_label():
    aliases = {"0": ["zero", "oh"], "4": ["four"]}
    assert text_to_label(" Four.", aliases) == "4"
    assert text_to_label(" Oh!", aliases) == "0"
    assert text_to_label(" 4", aliases) == "4"
    assert text_to_label(" hello", aliases) is None


def test_cli_train_zero_shot_then_eval(small_fsdd, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--data", str(small_fsdd), "--strategy", "zero-shot",
                 "--test-speaker", "theo", "--out", str(out)]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["test"]["n"] == 12 and summary["test"]["accuracy"] >= 0.75
    assert (out / "test_report.md").is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(small_fsdd), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 36 and report["labels"] == ["1", "4", "7"] and report["accuracy"] >= 0.75
