"""The detector's filler check: Whisper's own first word against the command a model heard."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer import load_model
from speechxfer.audio import load
from speechxfer.cli import main
from speechxfer.decoder.filler import EveryDecoder, FillerRatio, is_filler_token
from speechxfer.decoder.scoring import ZeroShotRecognizer
from speechxfer.detect import (
    FILLER_BELOW,
    FILLER_MARGIN,
    Detector,
    SileroVAD,
    detect_chunks,
    filler_check,
)
from speechxfer.ensemble import EnsembleRecognizer

LABELS = ["_silence_", "_unknown_", "up", "yes"]
COMMANDS = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off",
            "stop", "go"]
EIGHT = (Path(__file__).resolve().parents[1] / "data" / "speech_commands" / "eight"
         / "97f4c236_nohash_1.wav")


@pytest.fixture(scope="module")
def filler() -> FillerRatio:
    return FillerRatio.of(ZeroShotRecognizer(LABELS))


def token(filler: FillerRatio, text: str) -> int:
    return filler.system.encode_text(text)[0]


def test_hesitations_letters_and_punctuation_are_no_words():
    for text in (" uh", " Oh", " hmm", " I", " k", ".", " ..."):
        assert is_filler_token(text), text
    for text in (" eight", " Mar", " up", " 9", " yeah"):
        assert not is_filler_token(text), text


def test_ratio_is_the_command_against_the_best_real_word(filler):
    logp = torch.full((3, filler.system.model.dims.n_vocab), -20.0)
    # "marvin" heard as "up": Whisper's own first word " Mar" is 2 nats above " up"
    logp[0, token(filler, " up")] = -3.0
    logp[0, token(filler, " Mar")] = -1.0
    logp[0, token(filler, " uh")] = -0.5  # a hesitation is no alternative word
    # a real "yes": its capitalised spelling is the best word
    logp[1, token(filler, " Yes")] = -0.4
    logp[1, token(filler, " eight")] = -1.0
    # only hesitations above the command: nothing contradicts it
    logp[2, token(filler, " up")] = -4.0
    logp[2, token(filler, " oh")] = -0.3
    ratio = filler.ratio_from_logprobs(logp, ["up", "yes", "up"])
    assert ratio == pytest.approx([-2.0, 0.0, 0.0])


def test_ratio_needs_a_command_of_the_decoder(filler):
    with pytest.raises(ValueError, match="not a command"):
        filler.ratio_from_logprobs(torch.zeros(1, filler.system.model.dims.n_vocab), ["_unknown_"])
    with pytest.raises(ValueError, match="2 clips for 1 labels"):
        filler.ratio([torch.zeros(16000)] * 2, ["up"])


def test_only_models_with_a_whisper_decoder_get_the_check(filler):
    assert FillerRatio.of(filler.system) is not None
    assert FillerRatio.of(object()) is None


def test_bad_filler_margin_is_refused(filler):
    with pytest.raises(ValueError, match="filler_margin"):
        Detector(filler.system, vad=_Quiet(), filler_margin=-1.0)
    assert Detector(filler.system, vad=_Quiet(), filler_margin=None).filler is None


def test_the_filler_check_on_a_model_without_a_decoder_is_an_error(make_svm, tmp_path):
    """Asked for, the check must run or say why not: never silently left out."""
    model = load_model(make_svm(tmp_path / "svm", ("1", "4"), range(3)))
    with pytest.raises(ValueError, match="needs a model with a Whisper decoder"):
        Detector(model, vad=_Quiet(), filler_margin=1.0)


class _Quiet:
    def __call__(self, frame: torch.Tensor) -> float:
        return 0.0

    def reset(self) -> None:
        pass


@pytest.fixture(scope="module")
def eight() -> tuple[ZeroShotRecognizer, np.ndarray]:
    """"eight" heard as "yes" (the issue's kind of false accept), from a training speaker of the
    Speech Commands recipe, in quiet noise: the zero-shot system with the open-set fit of a
    trained combined model takes it for "yes" at 0.5 < p < 0.9; Whisper's own first word is
    " eight" or " 8"."""
    system = ZeroShotRecognizer(COMMANDS, temperature=0.25, unknown_score=-3.75,
                                silence_offset=-1.75)
    rng = np.random.default_rng(0)
    quiet = [0.002 * rng.standard_normal(12800) for _ in range(2)]
    return system, np.concatenate([quiet[0], load(EIGHT).numpy(), quiet[1]])


def test_real_other_word_that_fired_is_dropped(eight):
    system, audio = eight
    vad = SileroVAD()
    events = {}
    for margin in (None, FILLER_MARGIN):
        detector = Detector(system, vad=vad, record=True, filler_margin=margin)
        events[margin] = list(detect_chunks(detector, [audio]))
    assert [e.label for e in events[None]] == ["yes"]
    assert 0.5 < events[None][0].probability < FILLER_BELOW
    assert events[FILLER_MARGIN] == []
    assert detector.filler_dropped == 1 and detector.segments[0].filler < -FILLER_MARGIN


def test_cli_listen_and_eval_stream_take_the_filler_margin(eight, tmp_path, capsys):
    system, audio = eight
    folder, recording = system.save(tmp_path / "zero"), tmp_path / "eight.wav"
    sf.write(recording, audio, 16000)
    heard = {}
    for flags in ([], ["--filler-margin", str(FILLER_MARGIN)]):
        assert main(["listen", str(folder), str(recording), "--json", *flags]) == 0
        heard[len(flags)] = [json.loads(line)["label"] for line in
                             capsys.readouterr().out.splitlines()]
    assert heard == {0: ["yes"], 2: []}
    labels = tmp_path / "eight.csv"
    labels.write_text("0.8,1.8,eight\n")
    main(["eval-stream", str(folder), "--data", str(recording), "--labels", str(labels),
          "--filler-margin", str(FILLER_MARGIN), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (report["false_accepts"], report["filler_dropped"]) == (0, 1)


class _Says:
    """A stand-in decoder check with fixed ratios."""

    def __init__(self, ratios: list[float]):
        self.ratios = np.array(ratios)

    def ratio(self, waves, labels) -> np.ndarray:
        return self.ratios


def test_an_ensemble_drops_a_command_only_when_every_decoder_contradicts_it():
    both = EveryDecoder([_Says([-3.0, -3.0, 0.0]), _Says([-2.0, 0.0, -4.0])])
    assert both.ratio([torch.zeros(16000)] * 3, ["up"] * 3) == pytest.approx([-2.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        EveryDecoder([])


def test_an_ensemble_gets_the_check_of_every_member_with_a_decoder(eight, make_svm, tmp_path):
    system, audio = eight
    svm = load_model(make_svm(tmp_path / "svm", ("1", "4"), range(3)))
    check = filler_check(EnsembleRecognizer([system, system]))
    assert isinstance(check, EveryDecoder) and len(check.checks) == 2
    with pytest.raises(ValueError, match="needs a model with a Whisper decoder"):
        Detector(EnsembleRecognizer([svm, svm]), vad=_Quiet(), filler_margin=1.0)
    events = {}
    for margin in (None, FILLER_MARGIN):
        detector = Detector(EnsembleRecognizer([system, system]), vad=SileroVAD(),
                            filler_margin=margin)
        events[margin] = [e.label for e in detect_chunks(detector, [audio])]
    assert events == {None: ["yes"], FILLER_MARGIN: []}
    assert detector.filler_dropped == 1


def test_filler_below_leaves_surer_commands_unchecked(eight, tmp_path, capsys):
    """"eight" heard as "yes" at 0.5 < p < FILLER_BELOW: a gate under its probability lets it
    through unchecked."""
    system, audio = eight
    with pytest.raises(ValueError, match="filler_below"):
        Detector(system, vad=_Quiet(), filler_margin=1.0, filler_below=0.0)
    folder, recording = system.save(tmp_path / "zero"), tmp_path / "eight.wav"
    sf.write(recording, audio, 16000)
    assert main(["listen", str(folder), str(recording), "--json", "--filler-margin",
                 str(FILLER_MARGIN), "--filler-below", "0.5"]) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == ["yes"]
    labels = tmp_path / "eight.csv"
    labels.write_text("0.8,1.8,eight\n")
    main(["eval-stream", str(folder), "--data", str(recording), "--labels", str(labels),
          "--filler-margin", str(FILLER_MARGIN), "--filler-below", "0.5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (report["false_accepts"], report["filler_checks"], report["filler_below"]) == (1, 0, 0.5)
