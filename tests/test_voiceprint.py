"""Voiceprints on real clips: enrol, verify, identify, eval-speakers, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from speechxfer.audio import AudioError, load
from speechxfer.cli import main
from speechxfer.encoders import build_encoder
from speechxfer.model import CommandClassifier
from speechxfer.voiceprint import (
    FOLDER,
    Embedder,
    VoiceprintError,
    build_trials,
    eer_from_scores,
    enroll,
    eval_speakers,
    identify,
    min_dcf,
    read_voiceprints,
    scorer_for,
    verify,
)

SPEAKERS = ("jackson", "george", "theo", "yweweler")


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A saved Whisper tiny.en model with a command head only: voices by pooled features."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("whisper-tiny.en", pretrained=True),
                              {"command": ["1", "4", "7"]})
    return model.save(tmp_path_factory.mktemp("vp") / "model")


@pytest.fixture(scope="module")
def enrolled(whisper_dir, fsdd):
    for s in SPEAKERS:
        enroll(whisper_dir, s, [fsdd / f"1_{s}_{t}.wav" for t in range(3)])
    return whisper_dir


def test_enroll_writes_and_reloads(enrolled, fsdd):
    prints = read_voiceprints(enrolled)
    assert prints.names == list(SPEAKERS)
    assert prints.source.startswith("pooled encoder features")
    np.testing.assert_allclose(np.linalg.norm(prints.vectors, axis=1), 1.0, atol=1e-5)
    assert sorted(p.name for p in (enrolled / FOLDER).iterdir()) == [
        "voiceprints.json", "voiceprints.safetensors"]  # nothing pickled, no temporary left
    before = prints.vectors.copy()
    again = enroll(enrolled, "theo", [fsdd / f"1_theo_{t}.wav" for t in range(3)])
    assert again.names.count("theo") == 1 and len(again.names) == 4  # replaced, not added
    np.testing.assert_allclose(read_voiceprints(enrolled).vectors[-1], before[2], atol=1e-5)
    CommandClassifier.load(enrolled)  # the model folder still opens


def test_verify_prefers_the_enrolled_voice(enrolled, fsdd):
    """Each speaker's unseen take of the enrolled word scores highest on its own voiceprint."""
    scorer = scorer_for(enrolled, CommandClassifier.load(enrolled))  # loaded once
    names = scorer.prints.names
    scores = scorer.scores([load(fsdd / f"1_{s}_20.wav") for s in names])  # [clips, speakers]
    own = np.diag(scores)
    assert (own[:, None] >= scores).all(1).sum() >= 3, scores  # identified: chance 1 of 4
    assert (own > np.median(scores, axis=0)).sum() >= 3, scores  # own voice above the crowd
    score, accepted = verify(scorer, fsdd / f"1_{names[0]}_20.wav", names[0])
    assert score == pytest.approx(own[0], abs=1e-4) and isinstance(accepted, bool)
    assert identify(scorer, fsdd / f"1_{names[0]}_20.wav")["name"] == names[int(scores[0].argmax())]


def test_predict_json_names_the_speaker(enrolled, fsdd, capsys):
    assert main(["predict", str(enrolled), str(fsdd / "1_george_30.wav"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert set(line["speaker"]) == {"name", "score", "accepted"}
    assert line["speaker"]["name"] in SPEAKERS and line["label"] in ("1", "4", "7")


def test_served_predict_names_the_speaker_as_the_cli_does(enrolled, fsdd, capsys):
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    from starlette.testclient import TestClient

    from speechxfer.serve import create_app

    clip = fsdd / "1_george_30.wav"
    assert main(["predict", str(enrolled), str(clip), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    with TestClient(create_app(enrolled)) as client:
        served = client.post("/predict", files={"file": (clip.name, clip.read_bytes())}).json()
    assert served["speaker"]["name"] == cli["speaker"]["name"]
    assert served["speaker"]["score"] == pytest.approx(cli["speaker"]["score"], abs=1e-4)


def test_eval_speakers_json(whisper_dir, make_fsdd, tmp_path, capsys):
    data = make_fsdd(tmp_path / "d", ("jackson", "george", "theo"), ("1", "4", "7", "9"), 4)
    assert main(["eval-speakers", str(whisper_dir), "--data", str(data), "--enroll", "2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("eer_text_dependent", "eer_text_independent", "id_accuracy"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["min_dcf"] >= 0.0
    assert report["eer_text_dependent"] < 0.4  # chance: 0.5
    assert report["id_accuracy"] > 0.5  # chance: 1/3
    # 12 (speaker, word) models: 2 targets and 8 non-targets (the others' clips) each
    assert report["n_text_dependent"] == {"models": 12, "targets": 24, "nontargets": 96}
    assert report["n_trials"] == 120 + sum(report["n_text_independent"][k]
                                          for k in ("targets", "nontargets"))


def test_gmm_ubm_baseline_on_the_same_trials(make_fsdd, tmp_path, capsys):
    background = make_fsdd(tmp_path / "bg", ("yweweler",), ("2", "3", "5", "6"), 3)
    data = make_fsdd(tmp_path / "d", ("jackson", "george", "theo"), ("1", "4", "7", "9"), 4)
    assert main(["eval-speakers", f"gmm-ubm:{background}", "--data", str(data), "--enroll", "2",
                 "--seed", "0", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"].startswith("MFCC GMM-UBM")
    assert report["eer_text_dependent"] < 0.45 and report["id_accuracy"] > 0.34
    assert [r["seed"] for r in report["per_seed"]] == [0, 1]  # two enrolment draws, averaged
    assert report["id_accuracy"] == pytest.approx(
        np.mean([r["id_accuracy"] for r in report["per_seed"]]))


def test_metrics_and_trials_on_known_scores():
    target = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    eer, _ = eer_from_scores(np.array([9, 8, 1, 7, 2, 2, 0, 0.5]), target)
    assert eer == pytest.approx(1 / 3)  # interpolated where both error rates are 1/3
    assert eer_from_scores(np.arange(8.0)[::-1], target)[0] == 0.0
    assert min_dcf(np.arange(8.0)[::-1], target) == 0.0
    assert 0.0 < min_dcf(np.array([9, 8, 1, 7, 2, 2, 0, 0.5]), target) <= 1.0


def test_trials_keep_enrolment_out_and_words_apart(make_fsdd, tmp_path):
    from speechxfer.data import load_dataset

    clips = load_dataset(make_fsdd(tmp_path / "d", ("jackson", "george"), ("1", "4"), 4)).clips
    td, ti = build_trials(clips, 3, seed=1)
    for trials in (td, ti):
        for m, i, same in trials.pairs:
            spk, enrol = trials.models[m]
            assert i not in enrol and same == (clips[i].speaker == spk)
    assert all(clips[i].label == clips[td.models[m][1][0]].label for m, i, _ in td.pairs)
    assert all(clips[i].label not in {clips[e].label for e in ti.models[m][1]}
               for m, i, _ in ti.pairs)
    assert build_trials(clips, 3, seed=1)[0] == td  # seeded


def test_embedding_head_cohort_and_round_trip(tmp_path, fsdd, make_fsdd):
    """A speaker embedding head gives the embeddings and its prototypes the cohort; a
    calibrated threshold is stored and kept by later enrolments."""
    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                              {"command": ["a", "b"], "speaker": ["x", "y", "z"]},
                              head_options={"speaker": {"kind": "embedding", "embedding_dim": 8}})
    folder = model.save(tmp_path / "m")
    embed = Embedder(CommandClassifier.load(folder))
    assert embed.source == "speaker embedding head 'speaker'" and embed.cohort.shape == (3, 8)
    data = make_fsdd(tmp_path / "d", ("jackson", "george"), ("1", "4"), 3)
    report = eval_speakers(folder, data, k=2, calibrate=True)
    calibrated = read_voiceprints(folder)
    assert calibrated.names == [] and calibrated.threshold == report["calibrated_threshold"]
    assert calibrated.calibration["impostor_trials"] > 0
    prints = enroll(folder, "ann", [fsdd / "1_theo_0.wav", fsdd / "2_theo_0.wav"])
    assert prints.vectors.shape == (1, 8) and prints.threshold == calibrated.threshold  # kept
    score, accepted = verify(folder, fsdd / "3_theo_0.wav", "ann")
    assert np.isfinite(score) and accepted == (score >= calibrated.threshold)


def test_bad_input_is_refused_clearly(enrolled, fsdd, tmp_path, capsys):
    before = (enrolled / FOLDER / "voiceprints.safetensors").read_bytes()
    with pytest.raises(VoiceprintError, match="no clips"):
        enroll(enrolled, "ann", [])
    with pytest.raises(VoiceprintError, match="speaker name"):
        enroll(enrolled, " ", [fsdd / "1_theo_0.wav"])
    with pytest.raises(AudioError, match="missing.wav"):
        enroll(enrolled, "ann", [fsdd / "1_theo_0.wav", tmp_path / "missing.wav"])
    assert (enrolled / FOLDER / "voiceprints.safetensors").read_bytes() == before
    with pytest.raises(VoiceprintError, match="'nobody' is not enrolled"):
        verify(enrolled, fsdd / "1_theo_9.wav", "nobody")
    bare = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                             {"command": ["a", "b"]}).save(tmp_path / "bare")
    with pytest.raises(VoiceprintError, match="no speaker is enrolled"):
        identify(bare, fsdd / "1_theo_9.wav")
    assert main(["enroll", str(enrolled), "--speaker", "ann", str(tmp_path / "nope.wav")]) == 2
    assert "nope.wav" in capsys.readouterr().err
    assert main(["eval-speakers", str(enrolled), "--data", str(tmp_path / "nothing")]) == 2


def test_a_cohort_folder_normalises_and_is_stored_with_the_voiceprints(tmp_path, fsdd, make_fsdd):
    """``--cohort DIR``: the S-norm cohort becomes DIR's speakers' mean embeddings, stored with
    a calibrated threshold and used by verify; a new cohort at enrolment resets the threshold."""
    from speechxfer.voiceprint import cohort_vectors, snorm, unit

    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                              {"command": ["a", "b"], "speaker": ["x", "y", "z"]},
                              head_options={"speaker": {"kind": "embedding", "embedding_dim": 8}})
    folder = model.save(tmp_path / "m")
    cohort = make_fsdd(tmp_path / "bg", ("yweweler", "jackson"), ("2", "3"), 2)
    data = make_fsdd(tmp_path / "d", ("george", "theo"), ("1", "4"), 3)
    plain = eval_speakers(folder, data, k=2)
    assert plain["normalisation"] == "S-norm against the head's 3 prototypes"
    report = eval_speakers(folder, data, k=2, calibrate=True, cohort=cohort)
    assert report["normalisation"] == f"S-norm against the 2 speakers of {cohort}"
    embed = Embedder(CommandClassifier.load(folder))
    vectors = cohort_vectors(embed, cohort)
    prints = read_voiceprints(folder)
    assert prints.cohort.shape == (2, 8) and prints.cohort_data == str(cohort)
    np.testing.assert_allclose(prints.cohort, vectors, atol=1e-5)
    assert prints.threshold == report["calibrated_threshold"]
    stored = eval_speakers(folder, data, k=2)  # the stored cohort, as verify will use it
    assert stored["normalisation"].endswith("(stored with the voiceprints)")
    assert stored["eer_text_dependent"] == pytest.approx(report["eer_text_dependent"])
    enroll(folder, "ann", [fsdd / "1_theo_0.wav", fsdd / "2_theo_0.wav"])  # cohort kept
    score, _ = verify(folder, fsdd / "3_theo_0.wav", "ann")
    x = embed([load(fsdd / f"{d}_theo_0.wav") for d in "123"])
    voice = unit(x[:2].mean(0, keepdims=True))
    assert score == pytest.approx(float(snorm(voice @ x[2:].T, voice, x[2:], vectors)[0, 0]),
                                  abs=1e-3)
    again = enroll(folder, "bob", [fsdd / "5_george_0.wav"], cohort=data)  # a new cohort
    assert again.cohort.shape == (2, 8) and again.cohort_data == str(data)
    assert again.calibration is None and again.threshold == pytest.approx(2.326, abs=1e-3)
    with pytest.raises(VoiceprintError, match="two speakers"):
        enroll(folder, "bob", [fsdd / "1_george_0.wav"], cohort=make_fsdd(
            tmp_path / "one", ("theo",), ("5",), 2))


def test_a_cohort_shape_that_does_not_match_is_refused(tmp_path, fsdd, make_fsdd):
    from speechxfer.recognizer import ModelError

    torch.manual_seed(0)
    folder = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                               {"command": ["a", "b"]}).save(tmp_path / "m")
    cohort = make_fsdd(tmp_path / "bg", ("yweweler", "jackson", "george"), ("2",), 1)
    enroll(folder, "ann", [fsdd / "1_theo_0.wav"], cohort=cohort)
    config = tmp_path / "m" / FOLDER / "voiceprints.json"
    text = json.loads(config.read_text())
    assert text["cohort"]["speakers"] == 3
    text["cohort"]["speakers"] = 2
    config.write_text(json.dumps(text))
    with pytest.raises(ModelError, match="voiceprints.safetensors"):
        read_voiceprints(folder)


def test_gmm_ubm_s_norm_against_a_cohort_folder(make_fsdd, tmp_path, capsys):
    """The GMM-UBM takes the same ``--cohort``: LLRs S-normed against the cohort's speaker
    models and clips (impostor scores centred near 0), still separating voices."""
    from speechxfer.audio import load as read
    from speechxfer.classic.gmmubm import GMMUBMBackend
    from speechxfer.data import load_dataset
    from speechxfer.voiceprint import speaker_clips

    background = make_fsdd(tmp_path / "bg", ("yweweler", "jackson"), ("2", "3"), 3)
    cohort = make_fsdd(tmp_path / "co", ("yweweler", "jackson"), ("5", "6"), 3)
    data = make_fsdd(tmp_path / "d", ("george", "theo"), ("1", "4", "7", "9"), 4)
    assert main(["eval-speakers", f"gmm-ubm:{background}", "--data", str(data), "--enroll", "2",
                 "--cohort", str(cohort), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["normalisation"] == f"S-norm against the 2 speakers of {cohort}"
    assert report["eer_text_dependent"] < 0.45 and report["id_accuracy"] > 0.34
    gmm = GMMUBMBackend.fit_folder(background)
    clips = load_dataset(data).clips
    feats = gmm.features([read(c.path) for c in clips])
    models = [("george", [i for i, c in enumerate(clips) if c.speaker == "george"][:2])]
    raw = gmm.scores(models, feats)
    kept, cohort_waves, _ = speaker_clips(cohort, gmm.sample_rate)
    gmm.set_cohort(cohort_waves, [c.speaker for c in kept])
    normed = gmm.scores(models, feats)
    assert gmm.normalisation.startswith("S-norm against the 2 speakers")
    others = np.array([c.speaker != "george" for c in clips])
    assert abs(normed[0, others].mean()) < abs(raw[0, others].mean()) / raw[0, others].std()
    assert not np.allclose(raw, normed)


def test_gmm_ubm_cohort_takes_the_clips_of_named_speakers_only(make_fsdd, fsdd, tmp_path, capsys):
    """A clip whose file name names no speaker is left out of the GMM-UBM's cohort, as it is of
    the embeddings' (``speaker_clips``), not made one more cohort "speaker"."""
    background = make_fsdd(tmp_path / "bg", ("theo", "yweweler"), ("2", "3"), 3)
    data = make_fsdd(tmp_path / "d", ("jackson", "george"), ("1", "4"), 4)
    words = tmp_path / "co" / "five"  # folders layout: word/<speaker>_nohash_<n>.wav
    words.mkdir(parents=True)
    for speaker in ("theo", "yweweler"):
        for take in range(3):
            shutil.copy(fsdd / f"5_{speaker}_{take}.wav", words / f"{speaker}_nohash_{take}.wav")
    shutil.copy(fsdd / "5_jackson_0.wav", words / "unnamed.wav")
    cohort = words.parent
    assert main(["eval-speakers", f"gmm-ubm:{background}", "--data", str(data), "--enroll", "2",
                 "--cohort", str(cohort), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["normalisation"] == f"S-norm against the 2 speakers of {cohort}"


def _ds_cnn(folder, speaker_head: bool = True):
    """A small untrained model saved in ``folder``: a speaker embedding head, or none (pooled)."""
    torch.manual_seed(0)
    tasks = {"command": ["a", "b"]} | ({"speaker": ["x", "y", "z"]} if speaker_head else {})
    options = {"speaker": {"kind": "embedding", "embedding_dim": 8}} if speaker_head else None
    return CommandClassifier(build_encoder("ds-cnn", pretrained=False), tasks,
                             head_options=options).save(folder)


def test_too_few_pooled_voiceprints_leave_predict_working(tmp_path, fsdd, capsys, caplog):
    """Pooled-feature voiceprints are normalised against the other enrolled speakers: with one
    enrolled, enrolment warns, predict still gives the word (no speaker) and verify says why."""
    folder = _ds_cnn(tmp_path / "m", speaker_head=False)
    enroll(folder, "ann", [fsdd / "1_theo_0.wav", fsdd / "2_theo_0.wav"])
    assert "3 or more enrolled" in caplog.text
    assert main(["predict", str(folder), str(fsdd / "3_theo_0.wav"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["label"] in ("a", "b") and "speaker" not in line
    with pytest.raises(VoiceprintError, match="3 or more enrolled"):
        verify(folder, fsdd / "3_theo_0.wav", "ann")


def test_enrolling_again_or_twice_or_oddly_named_is_said(tmp_path, fsdd, caplog):
    folder = _ds_cnn(tmp_path / "m")
    enroll(folder, "ann", [fsdd / "1_theo_0.wav", fsdd / "2_theo_0.wav"])
    before = (folder / FOLDER / "voiceprints.safetensors").read_bytes()
    with pytest.raises(VoiceprintError, match="1_theo_0.wav is given twice"):  # would weigh double
        enroll(folder, "bob", [fsdd / "1_theo_0.wav", fsdd / ".." / "recordings" / "1_theo_0.wav"])
    for odd in ("a\x7fb", "zero\u200bwidth"):
        with pytest.raises(VoiceprintError, match="speaker name"):
            enroll(folder, odd, [fsdd / "1_theo_1.wav"])
    assert (folder / FOLDER / "voiceprints.safetensors").read_bytes() == before
    caplog.clear()
    prints = enroll(folder, " ann", [fsdd / "3_theo_0.wav"])
    assert prints.names == ["ann"] and prints.clips == [["3_theo_0.wav"]]
    assert "'ann' was enrolled already (from 2 clip(s)); that voiceprint is replaced" in caplog.text
    score, _ = verify(folder, fsdd / "4_theo_0.wav", "ann ")  # the name as enroll stored it
    assert np.isfinite(score)


def test_enrolling_one_clip_or_a_generator_of_clips(tmp_path, fsdd):
    """One clip for the list was read letter by letter ("/ is given twice"), a Path or 1-D
    array was a TypeError/ValueError of Python's; a generator was spent by the duplicate check
    and then blamed on the model ("voiceprints were made by ... not this model's ...")."""
    import soundfile as sf

    folder = _ds_cnn(tmp_path / "m")
    clip = fsdd / "1_theo_0.wav"
    samples, rate = sf.read(clip, dtype="float32")
    for one in (str(clip), clip, samples, torch.from_numpy(samples)):
        with pytest.raises(VoiceprintError, match="one clip, not a list of them"):
            enroll(folder, "ann", one, sample_rate=rate)
    assert not (folder / FOLDER).exists()
    enroll(folder, "ann", [clip, fsdd / "2_theo_0.wav"])
    prints = enroll(folder, "ann", (fsdd / f"{d}_theo_0.wav" for d in "12"))
    assert prints.names == ["ann"] and prints.clips == [["1_theo_0.wav", "2_theo_0.wav"]]


def test_enrolling_with_the_same_cohort_keeps_the_calibrated_threshold(tmp_path, fsdd, make_fsdd,
                                                                        caplog):
    folder = _ds_cnn(tmp_path / "m")
    cohort = make_fsdd(tmp_path / "bg", ("yweweler", "jackson"), ("2", "3"), 2)
    data = make_fsdd(tmp_path / "d", ("george", "theo"), ("1", "4"), 3)
    calibrated = eval_speakers(folder, data, k=2, calibrate=True, cohort=cohort)
    threshold = calibrated["calibrated_threshold"]
    kept = enroll(folder, "ann", [fsdd / "5_theo_0.wav"], cohort=cohort)  # the same folder again
    assert kept.threshold == threshold and kept.calibration is not None
    assert "falls back" not in caplog.text
    other = make_fsdd(tmp_path / "bg2", ("yweweler", "jackson"), ("6", "7"), 2)
    reset = enroll(folder, "bob", [fsdd / "5_george_0.wav"], cohort=other)
    assert reset.calibration is None and reset.threshold == pytest.approx(2.326, abs=1e-3)
    assert f"calibrated threshold {threshold:.3f} falls back to the default" in caplog.text


def test_a_background_holding_a_scored_voice_is_refused(tmp_path, fsdd, make_fsdd):
    """A cohort or UBM background with a scored speaker (or an enrolment clip, copied or not)
    would judge that voice against itself: refused with the folder and the overlap named."""
    folder = _ds_cnn(tmp_path / "m")
    data = make_fsdd(tmp_path / "d", ("george", "theo"), ("1", "4"), 3)
    mixed = make_fsdd(tmp_path / "bg", ("yweweler", "theo"), ("2",), 2)
    with pytest.raises(VoiceprintError, match=rf"{mixed}: --cohort holds 1 of the speakers "
                                              r"scored \(theo\)"):
        eval_speakers(folder, data, k=2, cohort=mixed)
    with pytest.raises(VoiceprintError, match="GMM-UBM's background holds 1 of the speakers"):
        eval_speakers(f"gmm-ubm:{mixed}", data, k=2)
    with pytest.raises(VoiceprintError, match=r"cohort holds 1 of the enrolment clips \(e.g. "
                                              r".*2_theo_1.wav\)"):
        enroll(folder, "ann", [fsdd / "2_theo_1.wav", fsdd / "3_theo_1.wav"], cohort=mixed)
    assert read_voiceprints(folder) is None  # nothing written


def test_eval_speakers_refuses_a_seed_twice_and_says_why_there_are_no_trials(
        tmp_path, make_fsdd, make_svm, fsdd):
    from speechxfer.recognizer import ModelError

    folder = _ds_cnn(tmp_path / "m")
    data = make_fsdd(tmp_path / "d", ("george", "theo"), ("1", "4"), 3)
    with pytest.raises(VoiceprintError, match="seed 0 is given twice"):  # same draw: sd 0
        eval_speakers(folder, data, k=2, seed=[0, 0])
    with pytest.raises(VoiceprintError, match=rf"{data}: no trials with k=5 .* most is 3\).*"
                                              r"most clips is 6"):
        eval_speakers(folder, data, k=5)
    pooled = _ds_cnn(tmp_path / "p", speaker_head=False)  # cohort: the trials' other voices
    one_word = make_fsdd(tmp_path / "w", ("george", "theo"), ("1",), 4)
    with pytest.raises(VoiceprintError, match=rf"{one_word}: .*use more speakers, or --cohort"):
        eval_speakers(pooled, one_word, k=2)
    cohort = make_fsdd(tmp_path / "bg", ("yweweler", "jackson"), ("2",), 2)
    assert eval_speakers(pooled, one_word, k=2, cohort=cohort)["eer_text_dependent"] is not None
    svm = make_svm(tmp_path / "svm", ("1", "2"), range(2))
    with pytest.raises(ModelError, match=rf"{svm}: a classic-svm system has no neural encoder"):
        enroll(svm, "ann", [fsdd / "1_theo_0.wav"])


def test_raw_samples_need_their_rate_and_are_checked(tmp_path, fsdd):
    import soundfile as sf

    folder = _ds_cnn(tmp_path / "m")
    enroll(folder, "ann", [fsdd / "1_theo_0.wav", fsdd / "2_theo_0.wav"])
    samples, rate = sf.read(fsdd / "3_theo_0.wav", dtype="float32")
    with pytest.raises(AudioError, match="need their sample_rate"):  # never assumed at 16 kHz
        verify(folder, torch.from_numpy(samples), "ann")
    with pytest.raises(AudioError, match="NaN"):
        verify(folder, torch.full((8000,), float("nan")), "ann", sample_rate=8000)
    stereo = np.stack([samples, samples], axis=1)  # [time, channels], as soundfile reads it
    assert verify(folder, stereo, "ann", sample_rate=rate)[0] == pytest.approx(
        verify(folder, fsdd / "3_theo_0.wav", "ann")[0], abs=1e-4)
    assert identify(folder, samples, sample_rate=rate)["name"] == "ann"
    prints = enroll(folder, "bob", [samples], sample_rate=rate)
    assert prints.clips[-1] == ["<samples>"]


def test_two_enrolments_at_once_keep_both_speakers(tmp_path, fsdd, monkeypatch):
    """Enrolment reads the set, adds a speaker and writes the set: the model folder's lock
    makes a second enrolment wait, so neither speaker is lost."""
    import threading
    import time

    from speechxfer import voiceprint

    folder = _ds_cnn(tmp_path / "m")
    write, first = voiceprint.write_voiceprints, threading.Event()

    def slow_write(model_dir, prints):
        if not first.is_set():
            first.set()
            time.sleep(1.0)  # the second enrolment reads the set meanwhile, unless it waits
        return write(model_dir, prints)

    monkeypatch.setattr(voiceprint, "write_voiceprints", slow_write)
    ann = threading.Thread(target=enroll, args=(folder, "ann", [fsdd / "1_theo_0.wav"]))
    ann.start()
    assert first.wait(30)
    enroll(folder, "bob", [fsdd / "1_george_0.wav"])
    ann.join()
    assert sorted(read_voiceprints(folder).names) == ["ann", "bob"]


def test_a_tampered_voiceprints_file_is_refused_naming_it(tmp_path, fsdd):
    from speechxfer.recognizer import ModelError

    folder = _ds_cnn(tmp_path / "m")
    for name, take in (("ann", "1_theo_0"), ("bob", "1_george_0")):
        enroll(folder, name, [fsdd / f"{take}.wav"])
    config = folder / FOLDER / "voiceprints.json"
    good = config.read_text()
    text = json.loads(good)
    text["speakers"][1]["name"] = "ann"  # two voices under one name
    config.write_text(json.dumps(text))
    with pytest.raises(ModelError, match=r"voiceprints.json: unreadable .*'ann' is listed twice"):
        verify(folder, fsdd / "1_george_1.wav", "ann")
    text["speakers"][1]["name"] = "bob"
    text["speakers"].append({"name": "carl", "clips": []})  # a name without a vector
    config.write_text(json.dumps(text))
    with pytest.raises(ModelError, match="voiceprints.json does not match voiceprints.safetensors"):
        read_voiceprints(folder)


def test_voiceprints_of_another_model_are_refused(tmp_path, fsdd):
    """Voiceprints copied beside a retrained model (same head, same size) are known by the
    mark of the model that made them; beside the same weights they still work."""
    from speechxfer.recognizer import ModelError

    made = _ds_cnn(tmp_path / "made")
    for name, take in (("ann", "1_theo_0"), ("bob", "1_george_0")):
        enroll(made, name, [fsdd / f"{take}.wav"])
    same = _ds_cnn(tmp_path / "same")  # the same seed: the same weights
    shutil.copytree(made / FOLDER, same / FOLDER)
    assert np.isfinite(verify(same, fsdd / "1_theo_1.wav", "ann")[0])
    torch.manual_seed(1)
    other = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                              {"command": ["a", "b"], "speaker": ["x", "y", "z"]},
                              head_options={"speaker": {"kind": "embedding", "embedding_dim": 8}}
                              ).save(tmp_path / "other")
    shutil.copytree(made / FOLDER, other / FOLDER)
    with pytest.raises(ModelError, match=rf"{other / FOLDER}: made by another model"):
        verify(other, fsdd / "1_theo_1.wav", "ann")
    with pytest.raises(ModelError, match="made by another model"):
        enroll(other, "carl", [fsdd / "1_jackson_0.wav"])


def test_unknown_word_clips_make_no_text_dependent_trials(tmp_path):
    """An ``_unknown_/`` folder holds other words, unnamed: pairing them as "the same word"
    would count different words as text-dependent trials."""
    from speechxfer.audio import Clip

    clips = [Clip(tmp_path / f"{w}_{s}_{t}.wav", {"command": w}, s)
             for w in ("one", "_unknown_") for s in ("ann", "bob") for t in range(3)]
    td, ti = build_trials(clips, 2, seed=0)
    assert {clips[e[0]].label for _, e in td.models} == {"one"}
    assert all(clips[i].label == "one" for _, i, _ in td.pairs)
    assert len(ti.models) == 2  # they still enrol and score text-independently
