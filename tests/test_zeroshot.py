"""Zero-shot scoring with Whisper's decoder: exactness of the batched layout, accuracy on real
clips, rejection, save/load and the CLI path (``train --strategy zero-shot``); generative
fine-tuning and the combined head + prior (``train --strategy combined``)."""

import json

import numpy as np
import pytest
import torch

from speechxfer import load_model
from speechxfer.audio import batch_waves, load
from speechxfer.cli import main
from speechxfer.decoder.combined import CombinedRecognizer, choose_weight, combine_log_linear
from speechxfer.decoder.generative import DecoderCache, GenerativeRecognizer
from speechxfer.decoder.scoring import NONE_LABEL, ZeroShotRecognizer, surface_forms
from speechxfer.decoder.transcribe import text_to_label
from speechxfer.train import fit_generative

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def clips(fsdd) -> list[torch.Tensor]:
    return [load(fsdd / f"{d}_jackson_1.wav") for d in DIGITS]


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


def test_none_for_words_not_in_the_list(clips, fsdd):
    """Labels '1' and '4' only, threshold calibrated on another speaker's clips of those two:
    that speaker's '1' and '4' pass, their '0', '2' and '7' come back as ``none``."""
    two = ZeroShotRecognizer(["1", "4"], window="clip")
    calib = [load(fsdd / f"{d}_george_{t}.wav") for d in ("1", "4") for t in range(4)]
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


def test_underscores_are_spelt_as_spaces_and_every_spelling_in_nfc(tmp_path):
    """Whisper writes "lights on", never "lights_on" (a folder name's underscore); and its
    tokens spell a composed "é", so a decomposed one (a macOS folder) is another spelling."""
    from speechxfer.decoder.scoring import default_spellings, other_spellings
    from speechxfer.vocab import SILENCE, UNKNOWN

    labels = ["lights_on", "off", "cafe\u0301", UNKNOWN, SILENCE]
    system = ZeroShotRecognizer(labels, aliases={UNKNOWN: ["t\u0065\u0301a"]})
    assert system.labels == labels  # the labels stay as written
    assert system.aliases == {"lights_on": ["lights on"], "off": ["off"],
                              "cafe\u0301": ["caf\u00e9"], UNKNOWN: ["t\u00e9a"]}
    assert system.options.prompt == "lights on off caf\u00e9"
    assert text_to_label(" Lights on.", system.aliases) == "lights_on"
    given = ZeroShotRecognizer(["lights_on", "caf\u00e9"], aliases={"cafe\u0301": ["coffee"]},
                               model=system.model)  # an alias is found in either form
    assert given.aliases == {"lights_on": ["lights on"], "caf\u00e9": ["coffee"]}
    assert default_spellings("8") == ["eight", "8"] and default_spellings("_x__y_") == ["x y"]
    # another word with an underscore is spelt so too; "lights on" is the command said
    assert other_spellings(["lights_off", "lights on"], ["lights_on"], "whisper-tiny.en") == (
        ["lights off"], ["lights on"])


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


def test_generative_fit_cached_scores_and_round_trip(clips, tmp_path):
    """A few steps lower the label loss; cached scoring matches full scoring; only the tuned
    tensors are saved and ``load_model`` restores the same predictions."""
    gen = GenerativeRecognizer(DIGITS[:4], window="clip")
    waves, truth = clips[:4], DIGITS[:4]
    cache = DecoderCache(gen, waves, gen.tuned_from)
    np.testing.assert_allclose(cache.scores, gen.scores(waves), atol=1e-4)
    info = fit_generative(gen, waves, truth, steps=6, batch_size=4, lr=3e-4, device="cpu",
                          cache=cache)
    assert info["last_loss"] < info["first_loss"] and info["shortlist_mass"] > 0.5
    np.testing.assert_allclose(gen.cached_scores(cache), gen.scores(waves), atol=1e-2)
    gen.save(tmp_path)
    again = load_model(tmp_path)
    assert isinstance(again, GenerativeRecognizer) and again.config() == gen.config()
    np.testing.assert_allclose(again.predict_proba(waves), gen.predict_proba(waves), atol=1e-6)


def test_combine_and_choose_weight():
    head = np.array([[0.6, 0.4], [0.5, 0.5]])
    zero = np.array([[0.1, 0.9], [0.8, 0.2]])
    np.testing.assert_allclose(combine_log_linear(head, zero, 0.0), head)
    both = combine_log_linear(head, zero, 1.0)
    np.testing.assert_allclose(both[0], [0.06 / 0.42, 0.36 / 0.42])
    weight, nll = choose_weight(head, zero, np.array([1, 0]))
    assert weight > 0 and nll[weight] < nll[0.0]
    assert choose_weight(head, zero, np.array([0, 1]))[0] == 0.0  # the prior is wrong: off


def test_cli_train_combined_then_eval_and_predict(small_fsdd, tmp_path, capsys):
    out = tmp_path / "combined"
    assert main(["train", "--data", str(small_fsdd), "--strategy", "combined",
                 "--test-speaker", "theo", "--out", str(out)]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["test"]["accuracy"] >= 0.75 and summary["strategy"]["strategy"] == "combined"
    system = load_model(out)
    assert isinstance(system, CombinedRecognizer) and (out / "head" / "model.safetensors").is_file()
    assert system.weight == summary["strategy"]["prior_weight"]["weight"]
    capsys.readouterr()
    assert main(["predict", str(out), str(small_fsdd / "7_theo_0.wav")]) == 0
    assert capsys.readouterr().out.split("\t")[1] == "7"  # a held-out speaker's "7"


@pytest.mark.parametrize("labels, shared", [(["lights_on", "lights on"], "lights on"),
                                            (["Yes", "yes", "no"], "yes"), (["8", "eight"], "eight")])
def test_labels_spelt_alike_are_refused(labels, shared):
    """Two labels with one spelling got the same prior score for every clip: the decoder could
    never tell them apart, and nothing said so."""
    with pytest.raises(ValueError, match=f"{labels[0]!r} and {labels[1]!r} share the spelling "
                                         f"{shared!r}"):
        ZeroShotRecognizer(labels)
    with pytest.raises(ValueError, match="'on' and 'off' share the spelling 'of'"):
        ZeroShotRecognizer(["on", "off"], aliases={"on": ["on", "Of "], "off": ["of"]})


def test_train_refuses_labels_spelt_alike_before_any_head_trains(fsdd, tmp_path, capsys,
                                                                 monkeypatch):
    import speechxfer.jobs

    def no_training(*args, **kwargs):
        raise AssertionError("a head trained before the labels' spellings were checked")

    monkeypatch.setattr(speechxfer.jobs, "train_neural", no_training)
    data = tmp_path / "data"
    for label, digit in (("8", "8"), ("eight", "8"), ("one", "1")):
        (data / label).mkdir(parents=True)
        for speaker in ("jackson", "george", "theo"):
            (data / label / f"{speaker}_nohash_0.wav").write_bytes(
                (fsdd / f"{digit}_{speaker}_0.wav").read_bytes())
    for strategy in ("combined", "zero-shot"):
        assert main(["train", "--data", str(data), "--strategy", strategy, "--test-speaker",
                     "theo", "--out", str(tmp_path / strategy)]) == 2
        err = capsys.readouterr().err
        assert "'8' and 'eight' share the spelling 'eight'" in err and str(data) in err
        assert not (tmp_path / strategy).exists()


def test_label_spellings_are_the_recognizers_and_refuse_what_it_refuses(system):
    """One function builds every label's spellings: defaults, aliases (NFC), _unknown_'s other
    words, and the refusals; the recognizer's are exactly its answer."""
    from speechxfer.decoder.scoring import label_spellings

    assert system.aliases == label_spellings(DIGITS)
    assert label_spellings(["8", "lights_on", "cafe\u0301", "_unknown_", "_silence_"],
                           {"8": ["Eight"], "_unknown_": ["dog"]}) == {
        "8": ["Eight"], "lights_on": ["lights on"], "cafe\u0301": ["caf\u00e9"],
        "_unknown_": ["dog"]}
    with pytest.raises(ValueError, match="'8' and 'eight' share the spelling 'eight'"):
        label_spellings(["8", "eight"])
    with pytest.raises(ValueError, match=r"other words \['Eight'\] are also spellings"):
        label_spellings(["8", "_unknown_"], {"_unknown_": ["dog", "Eight"]})
    with pytest.raises(ValueError, match="need it among the labels"):
        label_spellings(["8", "9"], {"_unknown_": ["dog"]})


@pytest.mark.parametrize("spellings", ["eight", [], [" "], [8]])
def test_label_spellings_refuse_what_is_no_list_of_words(spellings):
    """A string was spelt letter by letter ("e", "i", ...), an empty list an IndexError in the
    prompt; a saved config's aliases were already checked so."""
    from speechxfer.decoder.scoring import label_spellings

    with pytest.raises(ValueError, match="'8': .* is not a list of spellings"):
        label_spellings(["8", "9"], {"8": spellings})


def test_a_saved_system_with_labels_spelt_alike_is_a_model_error(system, tmp_path):
    from speechxfer.recognizer import ModelError

    system.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["aliases"]["1"] = ["Two"]
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model: labels '1' and '2' share the spelling 'two'"):
        load_model(tmp_path / "model")
