"""Other words spelt by Whisper's decoder as "none of these" (``train --spell-others``)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from speechxfer import CommandClassifier, load_model
from speechxfer.audio import Clip, batch_waves, load
from speechxfer.decoder.combined import CombinedRecognizer
from speechxfer.decoder.filler import FillerRatio
from speechxfer.decoder.scoring import (
    LEVEL_FLOOR,
    MAX_UNKNOWN_SPELLINGS,
    UNKNOWN_SCORE,
    ZeroShotRecognizer,
    other_spellings,
)
from speechxfer.encoders import build_encoder
from speechxfer.export import _CombinedGraph
from speechxfer.jobs import train_job
from speechxfer.recognizer import ModelError
from speechxfer.vocab import SILENCE, UNKNOWN, apply_commands, load_with_silence, other_words

SPEECH_COMMANDS = Path(__file__).resolve().parents[1] / "data" / "speech_commands"
WORDS = ["yes", "no", "up"]
LABELS = sorted(WORDS + [UNKNOWN, SILENCE])
SPEAKERS = ["692a88e6", "97f4c236", "964e8cfd", "cfbedff9", "db24628d", "d962e5ac"]
TEST = SPEAKERS[-2:]


@pytest.fixture(scope="module")
def small_commands(tmp_path_factory) -> Path:
    """Six real speakers: one clip of each command and of each other word, three noises."""
    root = tmp_path_factory.mktemp("sc")
    for word_dir in sorted(p for p in SPEECH_COMMANDS.iterdir() if p.is_dir()):
        picked = (sorted(word_dir.iterdir())[:3] if word_dir.name == SILENCE else
                  [f for s in SPEAKERS for f in sorted(word_dir.glob(f"{s}_nohash_*.wav"))[:1]])
        for f in picked:
            (root / word_dir.name).mkdir(exist_ok=True)
            shutil.copy(f, root / word_dir.name / f.name)
    return root


def test_the_word_said_survives_its_unknown_label(small_commands):
    data = apply_commands(load_with_silence(small_commands), WORDS)
    unknown = [c for c in data.clips if c.label == UNKNOWN]
    assert unknown and all(c.word == c.path.parent.name for c in unknown)
    assert all(c.word is None for c in data.clips if c.label != UNKNOWN)
    words = other_words(data.clips)
    assert words == sorted({c.word for c in unknown}) and not set(words) & set(WORDS)
    clips = [Clip(Path(f"{w}{i}.wav"), {"command": UNKNOWN}, word=w)
             for w, n in (("dog", 3), ("cat", 2), ("bed", 1)) for i in range(n)]
    assert other_words(clips, limit=2) == ["cat", "dog"]  # the most frequent, in order


def test_a_label_differing_from_a_command_only_in_case_is_said(small_commands, tmp_path,
                                                               caplog):
    """A folder "Yes" beside the command "yes" trains as _unknown_: said, not silent."""
    shutil.copytree(small_commands / "yes", tmp_path / "cased" / "Yes")
    shutil.copytree(small_commands / "no", tmp_path / "cased" / "no")
    with caplog.at_level("WARNING", logger="speechxfer"):
        apply_commands(load_with_silence(tmp_path / "cased"), ["no"])  # "Yes" is no command
        assert "labels ['Yes'] differ from the commands only in case" not in caplog.text
        shutil.copytree(small_commands / "yes", tmp_path / "cased" / "yes")
        data = apply_commands(load_with_silence(tmp_path / "cased"), ["yes", "no"])
    assert "labels ['Yes'] differ from the commands only in case" in caplog.text
    assert {c.word for c in data.clips if c.label == UNKNOWN} == {"Yes"}


def test_an_other_word_outscores_the_level_with_its_own_spelling(small_commands):
    data = apply_commands(load_with_silence(small_commands), WORDS)
    clip = next(c for c in data.clips if c.label == UNKNOWN)
    wave = load(clip.path)
    plain = ZeroShotRecognizer(LABELS, window="clip")
    spelt = ZeroShotRecognizer(LABELS, aliases={UNKNOWN: [clip.word, "zebra"]}, window="clip",
                               model=plain.model)
    assert spelt.options.prompt == plain.options.prompt == "no up yes"
    assert plain.options.unknown_score == UNKNOWN_SCORE
    assert spelt.options.unknown_score == LEVEL_FLOOR
    # the word scored as a label of its own, after the same prompt: the spelt column's value
    alone = ZeroShotRecognizer(LABELS + [clip.word], window="clip", model=plain.model,
                               prompt=plain.options.prompt)
    word_score = alone.scores([wave])[0, alone.labels.index(clip.word)]
    i = LABELS.index(UNKNOWN)
    got = spelt.scores([wave])[0]
    assert got[i] == pytest.approx(max(word_score, LEVEL_FLOOR), abs=1e-4)
    commands = [LABELS.index(w) for w in WORDS]
    assert np.allclose(got[commands], plain.scores([wave])[0][commands], atol=1e-4)
    assert got[i] > got[commands].max()  # its own spelling beats every command's


def test_spellings_of_unknown_are_refused_without_it_or_when_they_spell_a_command():
    with pytest.raises(ValueError, match="among the labels"):
        ZeroShotRecognizer(["yes", "no"], aliases={UNKNOWN: ["dog"]})
    with pytest.raises(ValueError, match=r"\['Yes'\] are also spellings of a command"):
        ZeroShotRecognizer(["yes", UNKNOWN], aliases={UNKNOWN: ["dog", "Yes"]})


def test_open_set_fit_with_spellings_gives_the_scores_a_fresh_pass_gives(small_commands, tmp_path):
    data = apply_commands(load_with_silence(small_commands), WORDS)
    picked = [next(c for c in data.clips if c.label == lab) for lab in LABELS]
    picked += [c for c in data.clips if c.label == UNKNOWN][1:4]
    waves, truth = [load(c.path) for c in picked], [c.label for c in picked]
    system = ZeroShotRecognizer(LABELS, aliases={UNKNOWN: other_words(data.clips)}, window="clip")
    before = system.scores(waves)
    fitted, scores = system.fit_open_set(before, truth)
    assert fitted["unknown_score"] >= LEVEL_FLOOR
    assert np.allclose(scores, system.scores(waves), atol=1e-4)  # as if scored afresh
    # a level above the current one can be fitted; one below it cannot be read off the scores
    system.options = type(system.options)(**{**system.options.__dict__, "unknown_score": -1.0})
    fitted, _ = system.fit_open_set(system.scores(waves), truth)
    assert fitted["unknown_score"] >= -1.0
    system.save(tmp_path / "z")
    again = load_model(tmp_path / "z")
    assert again.aliases[UNKNOWN] == system.aliases[UNKNOWN]
    assert json.loads((tmp_path / "z" / "config.json").read_text())["aliases"][UNKNOWN]
    assert np.allclose(again.scores(waves), system.scores(waves), atol=1e-5)


@pytest.mark.parametrize("spelt", [False, True])
def test_the_exported_graph_scores_unknown_as_torch_does(small_commands, spelt):
    data = apply_commands(load_with_silence(small_commands), WORDS)
    aliases = {UNKNOWN: other_words(data.clips)} if spelt else None
    zero = ZeroShotRecognizer(LABELS, aliases=aliases, window="clip", unknown_score=-2.5)
    torch.manual_seed(0)
    head = CommandClassifier(build_encoder("whisper-tiny.en", window="clip", pretrained=False),
                             {"command": LABELS})
    graph = _CombinedGraph(CombinedRecognizer(head, zero, weight=0.5))
    clips = [c for c in data.clips if c.label in (UNKNOWN, "yes")][:4]
    states, mask = zero.encode(*batch_waves([load(c.path) for c in clips]))
    with torch.no_grad():
        cand = zero.candidate_scores(states, mask)
        assert torch.allclose(graph.label_scores(cand), zero.labels_from_candidates(cand),
                              atol=1e-5)


def test_train_spells_the_training_speakers_other_words(small_commands, tmp_path):
    summary = train_job(small_commands, strategy="zero-shot", out=tmp_path / "z", commands=WORDS,
                        test_speakers=TEST, evaluate=False, spell_others=True)
    data = apply_commands(load_with_silence(small_commands), WORDS)
    heard = {c.word for c in data.clips if c.label == UNKNOWN and c.speaker not in TEST}
    config = json.loads((tmp_path / "z" / "config.json").read_text())
    assert set(config["aliases"][UNKNOWN]) == heard and summary["spell_others"] is True
    assert config["prompt"] == "no up yes"
    plain = train_job(small_commands, strategy="zero-shot", out=tmp_path / "p", commands=WORDS,
                      test_speakers=TEST, evaluate=False)
    assert UNKNOWN not in json.loads((tmp_path / "p" / "config.json").read_text())["aliases"]
    assert plain["spell_others"] is None


def test_other_words_are_spelt_as_commands_are_less_what_would_take_a_command():
    sentence = "a whole sentence someone gave as the label of a clip of speech"
    words = ["0", "8", "Yes", "oh", " ", "lights on", "it's", "One", sentence, "dog", "eight"]
    spelt, unspelt = other_spellings(words, ["yes", "1"], "whisper-tiny.en")
    # not " oh" for "0": Whisper writes it for "off" and "on" too; "eight" is spelt by "8"
    assert spelt == ["zero", "0", "eight", "8", "lights on", "it's", "dog"]
    assert unspelt == ["Yes", "oh", " ", "One", sentence]
    # "1" said beside the command "one" is that command: neither " one" nor " 1" is _unknown_
    assert other_spellings(["1", "dog"], ["one"], "whisper-tiny.en") == (["dog"], ["1"])
    spelt, unspelt = other_spellings([str(i) for i in range(300)], ["yes"], "whisper-tiny.en")
    assert len(spelt) == MAX_UNKNOWN_SPELLINGS and unspelt == [str(i) for i in range(118, 300)]


def test_spell_others_is_refused_where_it_would_do_nothing(tmp_path):
    with pytest.raises(ValueError, match="needs --commands"):
        train_job(tmp_path / "data", strategy="zero-shot", out=tmp_path / "z", spell_others=True)
    for strategy in ("frozen", "generative", "svm"):
        with pytest.raises(ValueError, match=f"the {strategy} strategy spells no other words"):
            train_job(tmp_path / "data", strategy=strategy, out=tmp_path / strategy,
                      commands=WORDS, spell_others=True)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("strategy, folder", [("zero-shot", "."), ("combined", "zero_shot")])
def test_digits_keep_their_spellings_and_an_unfitted_level_its_default(make_fsdd, tmp_path,
                                                                        strategy, folder):
    data = make_fsdd(tmp_path / "d", ("jackson", "george", "theo"), ("0", "1", "2", "3", "9"), 1)
    for speaker in ("jackson", "george"):  # "9" only from the test speaker: never spelt
        (data / f"9_{speaker}_0.wav").unlink()
    train_job(data, strategy=strategy, out=tmp_path / "m", commands=["1", "2"], epochs=1,
              test_speakers=["theo"], per_class_n=1, evaluate=False, spell_others=True)
    config = json.loads((tmp_path / "m" / folder / "config.json").read_text())
    assert config["aliases"] == {"1": ["one", "1"], "2": ["two", "2"],
                                 UNKNOWN: ["zero", "0", "three", "3"]}
    assert config["prompt"] == "one two"
    # no validation clip fitted the level: the default, as without spellings, not the floor
    assert config["unknown_score"] == UNKNOWN_SCORE


def test_data_with_no_other_word_to_spell_is_said(make_fsdd, tmp_path, caplog):
    data = make_fsdd(tmp_path / "d", ("jackson", "george"), ("1", "2"), 1)
    train_job(data, strategy="zero-shot", out=tmp_path / "z", commands=["1", "2"],
              test_speakers=["george"], evaluate=False, spell_others=True)
    assert "said no other word to spell" in caplog.text
    assert UNKNOWN not in json.loads((tmp_path / "z" / "config.json").read_text())["aliases"]


@pytest.fixture(scope="module")
def spelt() -> ZeroShotRecognizer:
    return ZeroShotRecognizer(LABELS, aliases={UNKNOWN: ["dog"]}, window="clip")


@pytest.mark.parametrize("spellings, labels, problem", [
    ("dog", None, "config field 'aliases' is invalid"),
    (["dog", " "], None, "config field 'aliases' is invalid"),
    ([f"w{i}" for i in range(MAX_UNKNOWN_SPELLINGS + 1)], None, "config field 'aliases'"),
    (["dog", "YES"], None, "aliases of '_unknown_': other words ['YES'] are also spellings"),
    (["dog"], WORDS, "aliases of '_unknown_' (other words) need it among the labels"),
])
def test_a_config_with_bad_other_words_is_refused(spelt, tmp_path, spellings, labels, problem):
    spelt.save(tmp_path / "z")
    path = tmp_path / "z" / "config.json"
    config = json.loads(path.read_text())
    config["aliases"][UNKNOWN] = spellings
    config["labels"] = labels or config["labels"]
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "z")
    assert str(tmp_path / "z") in str(err.value) and problem in str(err.value)


def test_a_spelling_given_twice_counts_once(spelt, real_clip):
    """Under logsumexp a spelling listed twice ("dog" twice, or "Dog" beside "dog", which
    capitalised is the same transcript) would add log 2 to its label."""
    once = ZeroShotRecognizer(LABELS, aliases={UNKNOWN: ["dog"]}, window="clip",
                              model=spelt.model, combine="logsumexp")
    twice = ZeroShotRecognizer(LABELS, aliases={UNKNOWN: ["dog", "Dog", "dog"]}, window="clip",
                               model=spelt.model, combine="logsumexp")
    np.testing.assert_allclose(twice.scores([real_clip]), once.scores([real_clip]), atol=1e-5)


@pytest.mark.parametrize("label", ["Yes", SILENCE])
def test_a_config_spelling_a_label_it_lacks_is_refused(spelt, tmp_path, label):
    """A hand-edited spelling of "Yes" (the label is "yes") or of _silence_ was ignored."""
    spelt.save(tmp_path / "z")
    path = tmp_path / "z" / "config.json"
    config = json.loads(path.read_text())
    config["aliases"][label] = ["yeah"]
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=re.escape(f"config.json: 'aliases' spells ['{label}']")):
        load_model(tmp_path / "z")


def test_more_spellings_than_a_command_may_have_load(spelt, tmp_path):
    """Up to 64 words and their digits: a model trained with them must load again."""
    many = [f"w{i}" for i in range(MAX_UNKNOWN_SPELLINGS)]
    ZeroShotRecognizer(LABELS, aliases={UNKNOWN: many}, window="clip",
                       model=spelt.model).save(tmp_path / "z")
    assert load_model(tmp_path / "z").aliases[UNKNOWN] == many


def test_the_filler_check_knows_the_commands_only(spelt):
    check = FillerRatio(spelt)
    assert sorted(check.first) == sorted(WORDS)
    with pytest.raises(ValueError, match="not a command"):
        check.ratio([torch.zeros(16_000)], [UNKNOWN])
