"""Command vocabularies, rejection and augmentation through train, eval and predict."""

import copy
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer import CommandClassifier, ModelError, load_model
from speechxfer.audio import load
from speechxfer.augment import AugmentConfig, Augmenter
from speechxfer.cli import main
from speechxfer.data import DatasetError, load_dataset, split_dataset
from speechxfer.encoders import build_encoder
from speechxfer.jobs import MIN_THRESHOLD, augment_options, eval_job, train_job
from speechxfer.train import TrainConfig, fit
from speechxfer.vocab import SILENCE, UNKNOWN, apply_commands, load_with_silence, negatives

SPEECH_COMMANDS = Path(__file__).resolve().parents[1] / "data" / "speech_commands"
WORDS = ["yes", "no", "up"]
LABELS = sorted(WORDS + [UNKNOWN, SILENCE])
# speakers with yes/no/up and at least one other word; the last two are held out for testing
SPEAKERS = ["692a88e6", "97f4c236", "964e8cfd", "cfbedff9", "db24628d", "d962e5ac", "c9b5ff26",
            "aa80f517"]
TEST = SPEAKERS[-2:]


@pytest.fixture(scope="module")
def commands_data(tmp_path_factory) -> Path:
    """Eight real speakers: up to two clips of each command, two other words, eight noises."""
    root = tmp_path_factory.mktemp("sc")
    for word_dir in sorted(p for p in SPEECH_COMMANDS.iterdir() if p.is_dir()):
        if word_dir.name == SILENCE:
            picked = sorted(word_dir.iterdir())[: len(SPEAKERS)]
        else:
            limit = 2 if word_dir.name in WORDS else 1
            picked = [f for s in SPEAKERS for f in sorted(word_dir.glob(f"{s}_nohash_*.wav"))[:limit]]
        for f in picked:
            (root / word_dir.name).mkdir(exist_ok=True)
            shutil.copy(f, root / word_dir.name / f.name)
    return root


@pytest.fixture(scope="module")
def svm_model(commands_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("svm") / "model"
    summary = train_job(commands_data, strategy="svm", out=out, commands=WORDS,
                        test_speakers=TEST, max_false_accept=0.0)
    return out, summary


def test_validation_takes_whole_speakers_when_groups_are_small(fsdd):
    data = apply_commands(load_with_silence(SPEECH_COMMANDS), WORDS)
    split = split_dataset(data, data.speakers[:16], seed=0)
    train, val = {c.speaker for c in split.train}, {c.speaker for c in split.validation}
    assert len(val) == round(0.1 * 64) and not train & val and len(train) == 64 - len(val)
    assert Counter(c.label for c in split.validation)[SILENCE] > 0  # silence follows its speaker
    assert [c.path for c in split_dataset(data, data.speakers[:16], seed=1).validation] != [
        c.path for c in split.validation]
    # the bundled digits (four speakers, 50 takes per digit) keep a share of every group
    digits = split_dataset(load_dataset(fsdd), ["theo"], seed=0)
    assert len(digits.validation) == 150
    assert {c.speaker for c in digits.validation} == {c.speaker for c in digits.train}


def test_commands_become_the_classes_and_the_threshold_is_stored(svm_model):
    out, summary = svm_model
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == LABELS
    assert summary["rejection"]["threshold"] == config["threshold"] == max(
        summary["rejection"]["calibrated"], MIN_THRESHOLD)
    assert config["max_false_accept"] == 0.0 and summary["n_validation"] > 0
    system = load_model(out)
    assert system.threshold == config["threshold"]
    assert set(summary["test"]["open_set"]) == {"command_recall", "unknown_false_accept",
                                                "silence_false_accept"}


def validation_clips(data: Path, label: str) -> list[Path]:
    split = split_dataset(apply_commands(load_with_silence(data), WORDS), TEST, seed=0)
    return [c.path for c in split.validation if c.label == label]


def test_predict_rejects_a_clip_below_the_threshold(svm_model, commands_data, capsys):
    out, _ = svm_model
    # calibrated for no false accept: every validation noise clip scores under the threshold
    noise = validation_clips(commands_data, SILENCE)
    assert noise
    system = load_model(out)
    assert system.predict(noise[0]).label in (UNKNOWN, SILENCE)
    assert main(["predict", str(out), str(noise[0]), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in (UNKNOWN, SILENCE)
    assert sorted(row["probabilities"]) == LABELS
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-6
    # without the threshold the same clip may be taken for a command: the rule is the model's
    system.threshold = None
    assert system.predict(noise[0]).label == max(row["probabilities"], key=row["probabilities"].get)


def test_eval_maps_the_data_and_reports_the_open_set(svm_model, commands_data, capsys):
    out, _ = svm_model
    assert main(["eval", str(out), "--data", str(commands_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["open_set"]) == {"command_recall", "unknown_false_accept",
                                       "silence_false_accept"}
    assert report["n"] == sum(1 for _ in commands_data.rglob("*.wav"))
    assert set(report["labels"]) == set(LABELS) and report["threshold"] > 0
    # a word the model never heard of is scored as _unknown_, not refused
    library = eval_job(out, commands_data)
    assert library["per_class"][UNKNOWN]["support"] == sum(
        1 for p in commands_data.rglob("*.wav") if p.parent.name not in WORDS + [SILENCE])


def test_eval_says_when_the_data_holds_none_of_the_commands(svm_model, commands_data, fsdd,
                                                             make_fsdd, tmp_path, caplog):
    """Another model's words (digits) all became _unknown_, and rejecting them read as
    accuracy 1.0 with no word said; a folder "Yes" for the command "yes" was scored as unknown."""
    out, _ = svm_model
    digits = make_fsdd(tmp_path / "digits", ("jackson",), ("1", "4"), 2)
    eval_job(out, digits)
    assert f"{digits}: no clip is one of the model's commands" in caplog.text
    assert "every word (1, 4) is scored as _unknown_" in caplog.text
    caplog.clear()
    shutil.copytree(commands_data / "no", tmp_path / "cased" / "no")
    shutil.copytree(commands_data / "yes", tmp_path / "cased" / "Yes")
    eval_job(out, tmp_path / "cased")
    assert "labels ['Yes'] differ from the model's commands only in case" in caplog.text
    caplog.clear()
    eval_job(out, commands_data)  # the model's own words, and others: nothing to say
    assert "commands" not in caplog.text


def test_eval_says_when_the_data_holds_the_voices_it_trained_on(svm_model, commands_data,
                                                                 tmp_path, caplog):
    """eval scores every clip: its own training data read as accuracy on new voices, unsaid."""
    out, summary = svm_model
    eval_job(out, commands_data)
    trained = [s for s in SPEAKERS if s not in TEST]
    assert set(summary["train_speakers"]) <= set(trained)
    assert f"speaker(s) the model trained on ({', '.join(sorted(summary['train_speakers'])[:5])}" \
        in caplog.text and "overstate how it does on new voices" in caplog.text
    caplog.clear()
    for word_dir in (p for p in commands_data.iterdir() if p.name != SILENCE):
        for clip in word_dir.iterdir():
            if clip.name.split("_nohash_")[0] in TEST:  # the held-out voices only
                (tmp_path / word_dir.name).mkdir(exist_ok=True)
                shutil.copy(clip, tmp_path / word_dir.name / clip.name)
    eval_job(out, tmp_path)
    assert "trained on" not in caplog.text


def test_shots_keep_n_clips_per_command(commands_data, tmp_path):
    summary = train_job(commands_data, strategy="svm", out=tmp_path / "m", commands=WORDS,
                        test_speakers=TEST, shots=1, evaluate=False)
    data = apply_commands(load_with_silence(commands_data), WORDS)
    train = split_dataset(data, TEST, seed=0).train
    rest = sum(1 for c in train if c.label in (UNKNOWN, SILENCE))
    assert summary["n_train"] == len(WORDS) + rest


def test_negatives_train_as_unknown_and_only_in_training(commands_data, small_fsdd, tmp_path):
    clips = negatives(small_fsdd, WORDS)
    assert len(clips) == 36 and {c.label for c in clips} == {UNKNOWN}
    assert all(set(c.labels) == {"command"} for c in clips)  # no speaker task learns these voices
    plain = train_job(commands_data, strategy="svm", out=tmp_path / "plain", commands=WORDS,
                      test_speakers=TEST, evaluate=False)
    summary = train_job(commands_data, strategy="svm", out=tmp_path / "neg", commands=WORDS,
                        test_speakers=TEST, evaluate=False, negatives=[small_fsdd])
    assert summary["n_train"] == plain["n_train"] + 36
    assert (summary["n_validation"], summary["test_speakers"]) == (plain["n_validation"], sorted(TEST))
    assert summary["negatives"] == [str(small_fsdd.resolve())]
    assert {"george", "jackson", "theo"} <= set(summary["train_speakers"])


def test_negatives_that_hold_a_command_or_a_test_voice_are_refused(commands_data, small_fsdd,
                                                                   tmp_path):
    with pytest.raises(DatasetError, match=r"no command word.*\['up', 'yes'\]"):
        negatives(commands_data, ["yes", "up", "a word nobody said"])
    with pytest.raises(DatasetError, match=r"held-out speaker.*\['theo'\]"):
        negatives(small_fsdd, WORDS, ["theo", "someone"])
    with pytest.raises(ValueError, match="needs --commands"):
        train_job(commands_data, strategy="svm", out=tmp_path / "m", negatives=[small_fsdd])
    assert main(["train", "--data", str(commands_data), "--strategy", "svm", "--commands", "yes,up",
                 "--negatives", str(commands_data), "--out", str(tmp_path / "c")]) == 2


def test_a_neural_model_keeps_its_threshold_and_refuses_a_bad_one(tmp_path):
    model = CommandClassifier(build_encoder("whisper-tiny.en", pretrained=False),
                              {"command": LABELS})
    model.threshold, model.max_false_accept = 0.4, 0.05
    model.save(tmp_path / "n")
    back = load_model(tmp_path / "n")
    assert (back.threshold, back.max_false_accept) == (0.4, 0.05)
    config = json.loads((tmp_path / "n" / "config.json").read_text())
    (tmp_path / "n" / "config.json").write_text(json.dumps(config | {"threshold": 7}))
    with pytest.raises(ModelError, match="threshold"):
        load_model(tmp_path / "n")


def test_options_that_would_do_nothing_are_refused(commands_data, tmp_path):
    with pytest.raises(ValueError, match="need --augment"):
        augment_options(False, tmp_path, None, 0)
    with pytest.raises(ValueError, match="noise folder not found"):
        augment_options(True, tmp_path / "missing", None, 0)
    with pytest.raises(ValueError, match="trains nothing"):
        train_job(commands_data, strategy="zero-shot", out=tmp_path / "z", augment=True)
    with pytest.raises(ValueError, match="give one"):
        train_job(commands_data, strategy="svm", out=tmp_path / "s", shots=2, per_class_n=2)


def test_augmented_cache_holds_k_copies_and_is_seeded(fsdd):
    waves = [load(fsdd / f"{d}_jackson_{t}.wav") for d in "17" for t in range(2)]
    labels = [{"command": d} for d in "17" for _ in range(2)]
    encoder = build_encoder("whisper-tiny.en", window="clip")

    def train(copies: int | None, seed: int = 0):
        torch.manual_seed(0)
        model = CommandClassifier(copy.deepcopy(encoder), {"command": ["1", "7"]})
        augmenter = None if copies is None else Augmenter(AugmentConfig(copies=copies, seed=seed))
        result = fit(model, waves, labels, [], [], TrainConfig(strategy="frozen", epochs=2),
                     augmenter=augmenter)
        return result.train_examples, model.heads["command"].state_dict()

    plain, _ = train(None)
    n, first = train(2)
    _, second = train(2)
    other_n, other = train(2, seed=1)
    assert plain == len(waves) and n == other_n == 3 * len(waves)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_zero_shot_scores_unknown_and_silence(commands_data, tmp_path):
    from speechxfer.decoder.combined import CombinedRecognizer
    from speechxfer.decoder.scoring import ZeroShotRecognizer

    files = [validation_clips(commands_data, SILENCE)[0], next((commands_data / "yes").iterdir()),
             next(p for p in commands_data.rglob("*.wav") if p.parent.name not in WORDS
                  + [SILENCE])]
    waves = [load(f) for f in files]
    system = ZeroShotRecognizer(LABELS, window="clip")
    assert system.options.prompt == "no up yes" and UNKNOWN not in system.aliases
    probs = system.predict_proba(waves)
    assert probs.shape == (3, len(LABELS)) and np.isfinite(probs).all()
    assert np.allclose(probs.sum(1), 1)
    fitted, scores = system.fit_open_set(system.scores(waves), [SILENCE, "yes", UNKNOWN])
    opts = system.options
    assert (opts.unknown_score, opts.silence_offset, opts.temperature) == (
        fitted["unknown_score"], fitted["silence_offset"], fitted["temperature"])
    assert np.allclose(scores, system.scores(waves), atol=1e-4)  # as if scored afresh
    assert system.decide(system.predict_proba(waves)) == [SILENCE, "yes", UNKNOWN]
    system.threshold, system.max_false_accept = 0.5, 0.03
    system.save(tmp_path / "z")
    again = load_model(tmp_path / "z")
    assert again.threshold == 0.5 and again.options == system.options
    assert np.allclose(again.predict_proba(waves), system.predict_proba(waves), atol=1e-5)
    # a combined system's prior covers the same columns; its own threshold travels too
    torch.manual_seed(0)
    head = CommandClassifier(build_encoder("whisper-tiny.en", window="clip", pretrained=False),
                             {"command": LABELS})
    combined = CombinedRecognizer(head, system, weight=0.5)
    combined.threshold, combined.max_false_accept = 0.3, 0.03
    combined.save(tmp_path / "c")
    back = load_model(tmp_path / "c")
    assert back.threshold == 0.3 and back.head.threshold is None
    assert back.predict_proba(waves).shape == (3, len(LABELS))
    with pytest.raises(ValueError, match="no word"):
        ZeroShotRecognizer([UNKNOWN, SILENCE], model=system.model)


def test_zero_shot_reports_a_validation_clip_it_could_not_read(commands_data, tmp_path):
    """The decoder strategies read the validation clips to fit their open-set scores: a bad one
    is skipped there and listed in the run's summary, as every other job lists its own."""
    data = tmp_path / "data"
    shutil.copytree(commands_data, data)
    bad = data / validation_clips(commands_data, UNKNOWN)[0].relative_to(commands_data)
    bad.write_bytes(b"corrupt")
    summary = train_job(data, strategy="zero-shot", out=tmp_path / "z", commands=WORDS,
                        test_speakers=TEST, evaluate=False)
    assert [s["path"] for s in summary["skipped"]] == [str(bad)]
    assert summary["rejection"] is not None
