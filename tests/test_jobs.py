"""The strategy table: every strategy has a job the CLI offers, every summary has the same keys,
the generative job runs end to end, extra tasks survive the default (combined) strategy and are
refused, with a clear message, by the strategies that train no head."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from speechxfer import jobs, load_model
from speechxfer.audio import Clip
from speechxfer.cli import build_parser, main
from speechxfer.data import DatasetError
from speechxfer.decoder.combined import CombinedRecognizer
from speechxfer.decoder.generative import GenerativeRecognizer
from speechxfer.jobs import (
    DEFAULT_STRATEGY,
    JOBS,
    TrainedNeural,
    held_out_accuracy,
    held_out_speaker_probs,
    speaker_groups,
    strategy_of,
    train_job,
)


def test_the_cli_offers_every_strategy_of_the_table():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    strategy = next(a for a in train._actions if a.dest == "strategy")
    assert tuple(strategy.choices) == tuple(JOBS) and DEFAULT_STRATEGY in JOBS


@pytest.mark.parametrize("strategy", ["zero-shot", "generative", "svm", "gmm-hmm", "dtw"])
def test_extra_tasks_without_a_head_are_refused(strategy, small_fsdd, tmp_path, capsys):
    with pytest.raises(ValueError, match=f"--task speaker: the {strategy} strategy trains no"):
        strategy_of(strategy, ("command", "speaker"))
    assert main(["train", "--data", str(small_fsdd), "--strategy", strategy, "--task", "speaker",
                 "--out", str(tmp_path / "m")]) == 2
    assert "trains no classifier head" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("strategy, options, named", [
    ("zero-shot", ["--epochs", "3"], "--epochs 3"),
    ("generative", ["--keep", "last"], "--keep last"),
    ("svm", ["--window", "2s", "--pooling", "attentive"], "--pooling attentive, --window 2s"),
    ("frozen", ["--k", "3"], "--k 3"),
    ("combined", ["--k", "1"], "--k 1"),
    ("dtw", ["--layer", "2"], "--layer 2"),
    ("gmm-hmm", ["--encoder", "whisper-base"], "--encoder whisper-base"),
    ("zero-shot", ["--head-option", "command.dropout=0.5"], "--head-option (or --task NAME:KIND)"),
])
def test_an_option_the_strategy_ignores_is_refused(strategy, options, named, tmp_path, capsys):
    """The model would be trained without it and saved as if it had been: refused before the
    data is read (this folder does not exist)."""
    assert main(["train", "--data", str(tmp_path / "none"), "--strategy", strategy, *options,
                 "--out", str(tmp_path / "m")]) == 2
    assert f"{named}: the {strategy} strategy does not use" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("strategy", ["combined", "zero-shot", "generative"])
def test_a_decoder_strategy_on_an_encoder_without_a_decoder_is_refused(strategy, tmp_path, capsys):
    """Before: "'ds-cnn' is not a Whisper model" from deep inside training (with combined, the
    default strategy, after the head had trained); now the CLI says what to give instead."""
    assert main(["train", "--data", str(tmp_path / "none"), "--strategy", strategy,
                 "--encoder", "ds-cnn", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"--encoder ds-cnn: the {strategy} strategy scores words with Whisper's decoder" in err
    assert "frozen, top-k, full, reinit-k, scratch" in err
    assert not (tmp_path / "m").exists()


def test_the_options_a_strategy_uses_pass_the_check():
    jobs.check_options("top-k", k=1, epochs=2, keep="last", layer=-1, pooling="attentive",
                       head_options={"command": {"dropout": 0.2}}, window="clip")
    jobs.check_options("svm", k=2, epochs=None, keep="best", layer=None, pooling="mean",
                       head_options={}, window=None)  # the CLI's defaults


@pytest.mark.parametrize("options, said", [
    ({"per_class_n": 5}, ("--per-class 5: the training clips hold at most 2 of a label from "
                          "one speaker; every clip is kept")),
    ({"shots": 9}, "--shots 9: the training clips hold at most 4 of a command; every clip is kept"),
])
def test_asking_for_more_clips_than_there_are_says_so(options, said, make_fsdd, tmp_path, caplog):
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4"), 2)
    summary = train_job(data, strategy="svm", test_speakers=["theo"], evaluate=False,
                        out=tmp_path / "m", **options)
    assert said in caplog.text and summary["n_train"] == 8
    caplog.clear()
    train_job(data, strategy="svm", test_speakers=["theo"], evaluate=False, out=tmp_path / "m",
              per_class_n=2)
    assert "every clip is kept" not in caplog.text


def test_zero_epochs_are_refused_not_taken_as_the_default(tmp_path):
    with pytest.raises(ValueError, match="--epochs must be 1 or more, got 0"):
        train_job(tmp_path / "none", strategy="frozen", epochs=0, out=tmp_path / "m")


def test_generative_job_end_to_end(make_fsdd, tmp_path):
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4"), 2)
    out = tmp_path / "gen"
    summary = train_job(data, strategy="generative", test_speakers=["theo"], out=out,
                        device="cpu")
    assert summary["strategy"]["strategy"] == "generative" and summary["n_train"] == 8
    assert summary["strategy"]["steps"] > 0 and summary["strategy"]["device"] == "cpu"
    assert summary["test"]["n"] == 4 and summary["test"]["accuracy"] >= 0.75  # chance: 0.5
    assert not (tmp_path / "gen.partial").exists()  # the checkpoint went with the work folder
    system = load_model(out)
    assert isinstance(system, GenerativeRecognizer) and system.labels == ["1", "4"]
    assert system.info["metrics"]["accuracy"] == summary["test"]["accuracy"]
    neural = json.loads((out / "train_summary.json").read_text())
    assert set(neural) >= {"data", "strategy", "train_speakers", "test_speakers", "n_train",
                           "n_validation", "n_test", "train_seconds", "skipped", "rejection"}


def test_multitask_under_the_default_strategy_keeps_the_speaker_head(make_fsdd, tmp_path,
                                                                     capsys):
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "7"), 2)
    out = tmp_path / "combined"
    assert main(["train", "--data", str(data), "--test-speaker", "theo", "--task",
                 "speaker", "--epochs", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["strategy"]["strategy"] == DEFAULT_STRATEGY == "combined"
    assert summary["tasks"] == ["command", "speaker"]
    speaker = summary["test"]["tasks"]["speaker"]
    assert speaker["n"] == 4 and "speaker (" in printed
    system = load_model(out)
    assert isinstance(system, CombinedRecognizer)
    from speechxfer.export import fast_path_available

    if fast_path_available():  # train wrote the fast path, and load_model picked it
        assert system.fast is not None and "fast path (int8 ONNX) written" in printed
    assert system.head.tasks["speaker"] == ["george", "jackson"]
    pred = system.predict(data / "7_theo_0.wav")
    assert set(pred.tasks) == {"command", "speaker"} and pred.tasks["command"] == pred.probabilities
    assert main(["eval", str(out), "--data", str(data), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"]["speaker"]["n"] == 12


def test_generative_loop_resumes_from_its_checkpoint_as_if_never_stopped(fsdd, tmp_path, caplog):
    """A run of 12 steps checkpoints at step 10; a second run finds that checkpoint and must end
    with the same weights after only the last 2 steps (batches, optimizer state and all)."""
    import torch

    from speechxfer.audio import load
    from speechxfer.train import fit_generative

    waves = [load(fsdd / f"{d}_jackson_{t}.wav") for d in ("1", "4") for t in range(3)]
    truth = [d for d in ("1", "4") for _ in range(3)]
    runs = []
    caplog.set_level("INFO", logger="speechxfer")
    for _ in range(2):
        gen = GenerativeRecognizer(["1", "4"], window="clip")
        info = fit_generative(gen, waves, truth, steps=12, batch_size=4, lr=3e-4, device="cpu",
                              checkpoint_dir=tmp_path / "ckpt", identity={"run": "same"})
        runs.append((info, {k: v.detach().clone() for k, v in gen.tuned_parameters().items()}))
    (first, weights), (second, again) = runs
    assert first["resumed_from_step"] is None and second["resumed_from_step"] == 10
    assert caplog.text.count("resuming from the checkpoint") == 1 and "step 10 of 12" in caplog.text
    assert first["last_loss"] == second["last_loss"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_speaker_groups_deal_every_speaker_once_into_at_most_the_folds():
    groups = speaker_groups(["d", "a", "b", "c", "a", "e", "f", "g"], folds=3)
    assert groups == [{"a", "d", "g"}, {"b", "e"}, {"c", "f"}]
    assert speaker_groups(["x", "y"], folds=5) == [{"x"}, {"y"}]


def test_held_out_speaker_probs_fills_each_speakers_rows_from_the_head_without_them():
    clips = [Clip(Path(f"{i}.wav"), {"command": "1"}, s) for i, s in enumerate("abab")]
    asked = []

    def held_out_probs(left_out):
        asked.append(left_out)
        return np.full((2, 2), 0.9 if left_out == {"a"} else 0.1)

    def trained(clips, heard=("a", "b")):
        return TrainedNeural(SimpleNamespace(labels=["1", "2"]), {"train_speakers": list(heard)},
                             [], clips, held_out_probs)

    probs = held_out_speaker_probs(trained(clips))
    assert asked == [{"a"}, {"b"}] and probs[:, 0].tolist() == pytest.approx([0.9, 0.1, 0.9, 0.1])
    assert held_out_speaker_probs(trained(clips[::2])) is None  # one speaker: nobody to hold out
    assert held_out_speaker_probs(trained(clips, heard=("c",))) is None  # never trained on them
    assert held_out_speaker_probs(trained(clips, heard=("a",))) is None  # no one left without a
    assert held_out_speaker_probs(trained([*clips, Clip(Path("x.wav"), {}, None)])) is None
    assert len(asked) == 2


def test_the_prior_weight_is_chosen_on_speakers_the_head_never_heard(make_fsdd, tmp_path,
                                                                     monkeypatch):
    """The head fits its own speakers' validation takes better than a new voice's: the weight
    is chosen on each speaker's takes as a head trained without that speaker scores them."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "7"), 6)
    seen = {}

    def spy(trained, *args):
        seen["trained"], seen["probs"] = trained, held_out_speaker_probs(trained, *args)
        return seen["probs"]

    monkeypatch.setattr(jobs, "held_out_speaker_probs", spy)
    summary = train_job(data, strategy="combined", test_speakers=["theo"], out=tmp_path / "m",
                        device="cpu", epochs=5)
    choice = summary["strategy"]["prior_weight"]
    assert choice["head_probabilities"] == "held out by speaker" and choice["folds"] == 2
    # the combined summary records its head's options (its strategy entry has none of them)
    assert (summary["seed"], summary["epochs"], summary["pooling"]) == (0, 5, "mean")
    trained, held_out = seen["trained"], seen["probs"]
    truth = [trained.model.labels.index(c.label) for c in trained.val]
    rows = np.arange(len(truth))
    own = trained.model.predict_proba(trained.val_waves)[rows, truth]
    assert held_out.shape == (len(truth), 2) and np.allclose(held_out.sum(1), 1, atol=1e-5)
    assert held_out[rows, truth].mean() < own.mean()
    held = summary["held_out_by_speaker"]  # those clips' accuracy as new voices, per speaker
    assert held["n"] == len(truth) and set(held["per_speaker"]) == {"george", "jackson"}
    assert 0.5 < held["accuracy"] <= 1


def test_held_out_accuracy_counts_each_speakers_clips():
    clips = [Clip(Path(f"{i}.wav"), {"command": lab}, spk)
             for i, (lab, spk) in enumerate([("1", "a"), ("7", "a"), ("1", "b"), ("7", "b")])]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    held = held_out_accuracy(probs, ["1", "7"], clips)
    assert held == {"accuracy": 0.5, "n": 4, "per_speaker": {"a": 1.0, "b": 0.0}}


def test_the_default_data_trains_every_speaker(small_fsdd, tmp_path, monkeypatch):
    """No test speaker is held out of the bundled digits: a shipped model is for new voices,
    and more training voices help there (README "Speakers outside FSDD")."""
    monkeypatch.setattr(jobs, "default_data", lambda: small_fsdd)
    summary = train_job(strategy="svm", out=tmp_path / "m")
    assert summary["test_speakers"] == [] and summary["n_test"] == 0
    assert summary["train_speakers"] == ["george", "jackson", "theo"]


def test_a_label_the_training_speakers_lack_is_refused(make_fsdd, tmp_path):
    """A word only test (or validation) clips hold, a command or not, can never be predicted:
    trained without it, the model was saved and scored every such clip wrong."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4"), 2)
    make_fsdd(data, ("theo",), ("9",), 2)
    for commands in (None, ["1", "9"]):
        with pytest.raises(DatasetError, match=r"data: label\(s\) \['9'\] have no training "
                                               r"clips \(only validation or test ones\)"):
            train_job(data, strategy="svm", test_speakers=["theo"], commands=commands,
                      out=tmp_path / "m")
    manifest = tmp_path / "m.csv"  # one only validation clips hold: the same
    manifest.write_text("path,label,speaker,split\n" + "".join(
        f"{p},{p.stem[0]},{p.stem.split('_')[1]},{'validation' if p.stem[0] == '9' else ''}\n"
        for p in sorted(data.iterdir())))
    with pytest.raises(DatasetError, match=r"m\.csv: label\(s\) \['9'\] have no training"):
        train_job(manifest, strategy="frozen", test_speakers=["george"], out=tmp_path / "m")
    with pytest.raises(DatasetError, match=r"data: every clip is a validation or test clip "
                                           r"\(test speakers \['george', 'jackson', 'theo'\]\)"):
        train_job(data, strategy="svm", test_speakers=["theo", "george", "jackson"],
                  out=tmp_path / "m")  # was "expected a non-empty list of 1-D waveforms"
    one = make_fsdd(tmp_path / "one", ("jackson", "george"), ("1",), 2)
    with pytest.raises(DatasetError, match=r"one: the training clips hold 1 label\(s\) \['1'\]"):
        train_job(one, strategy="svm", out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_per_class_keeps_every_negative(make_fsdd, tmp_path):
    """--per-class thins the data's own clips; --negatives adds every clip of its set."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4", "7"), 2)
    more = make_fsdd(tmp_path / "neg", ("yweweler",), ("9",), 4)
    summary = train_job(data, strategy="svm", test_speakers=["theo"], commands=["1", "4"],
                        per_class_n=1, negatives=[more], evaluate=False, out=tmp_path / "m")
    assert summary["n_train"] == 2 * 3 + 4  # 2 speakers x (1, 4, _unknown_), and all 4 negatives


def test_eval_of_only_unreadable_clips_names_one(tmp_path, make_svm, capsys):
    """"No usable clips" alone left the user to scroll back for which file and why."""
    model = make_svm(tmp_path / "m", ("1", "4"), range(2))
    data = tmp_path / "data"
    data.mkdir()
    (data / "1_ann_0.wav").write_bytes(b"junk")
    assert main(["-q", "eval", str(model), "--data", str(data)]) == 2
    assert f"the first, {data / '1_ann_0.wav'}: not readable as audio" in capsys.readouterr().err


def test_a_test_set_with_no_readable_clip_does_not_lose_the_trained_model(make_fsdd, tmp_path):
    """The test clips are read after training: an error there threw the trained system away."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4"), 2)
    for p in data.glob("*_theo_*.wav"):
        p.write_bytes(b"junk")
    summary = train_job(data, strategy="svm", test_speakers=["theo"], out=tmp_path / "m")
    assert "test" not in summary and load_model(tmp_path / "m").labels == ["1", "4"]
    assert len([s for s in summary["skipped"] if "_theo_" in s["path"]]) == 4


def test_negatives_may_share_a_voice_that_trains(make_fsdd, tmp_path):
    """A tenth of each speaker's takes validate; the speaker still trains, so negatives in that
    voice leak nothing (were refused as a "held-out speaker"); a test voice is still refused."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4", "7"), 6)
    george = make_fsdd(tmp_path / "george", ("george",), ("9",), 2)
    summary = train_job(data, strategy="svm", test_speakers=["theo"], commands=["1", "4"],
                        negatives=[george], evaluate=False, out=tmp_path / "m")
    assert summary["n_validation"] == 6 and summary["n_train"] == 2 * 3 * 5 + 2
    theo = make_fsdd(tmp_path / "theo", ("theo",), ("9",), 2)
    with pytest.raises(DatasetError, match=r"held-out speaker\(s\) \['theo'\]"):
        train_job(data, strategy="svm", test_speakers=["theo"], commands=["1", "4"],
                  negatives=[theo], out=tmp_path / "m")


@pytest.mark.parametrize("strategy", ["svm", "frozen"])
def test_a_label_whose_every_training_clip_is_unreadable_is_refused(strategy, make_fsdd,
                                                                     tmp_path):
    """Skipped clip by clip, the label vanished: svm was saved without it, frozen with a class
    it never saw."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4", "7"), 2)
    make_fsdd(data, ("jackson",), ("9",), 1)
    (data / "9_jackson_0.wav").write_bytes(b"junk")
    (data / "1_jackson_0.wav").write_bytes(b"junk")  # skipped first, but 1 keeps other clips
    with pytest.raises(DatasetError, match=r"no usable clips left of label\(s\) \['9'\] in the "
                                           r"training set \(the first, .*9_jackson_0\.wav: not "
                                           r"readable"):
        train_job(data, strategy=strategy, test_speakers=["theo"], epochs=1, out=tmp_path / "m")


def test_commands_given_in_another_unicode_form_than_the_data_train_as_those_words(make_fsdd,
                                                                                  tmp_path):
    """A library caller's "café" typed decomposed (NFD) named no folder "café" (NFC): the run
    refused it or, beside the data's words, kept the caller's spelling in the saved model."""
    import unicodedata

    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "4"), 2)
    for p in sorted(data.glob("4_*.wav")):
        p.rename(p.with_name("caf\u00e9" + p.name[1:]))
    summary = train_job(data, strategy="svm", test_speakers=["theo"], evaluate=False,
                        out=tmp_path / "m", commands=[unicodedata.normalize("NFD", "café"), "1"])
    assert summary["commands"] == ["caf\u00e9", "1"]
    assert "caf\u00e9" in load_model(tmp_path / "m").labels


def test_manifest_rows_without_a_label_are_reported_neither_trained_nor_scored(make_fsdd,
                                                                               tmp_path):
    """An empty label cell: the training clip was counted as trained without a word, and the
    test clip crashed the scoring after training, losing the model."""
    data = make_fsdd(tmp_path / "data", ("jackson", "theo"), ("1", "4"), 3)
    rows = [f"{p.name},{'' if p.stem.endswith('_2') else p.name[0]},{p.name.split('_')[1]}"
            for p in sorted(data.glob("*.wav"))]
    (data / "manifest.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    summary = train_job(data, strategy="svm", test_speakers=["theo"], out=tmp_path / "m")
    assert summary["n_train"] == 4 and summary["test"]["n"] == 4
    assert {Path(s["path"]).name: s["problem"] for s in summary["skipped"]} == {
        f"{d}_{s}_2.wav": f"no command label: nothing to {what}"
        for d in ("1", "4") for s, what in (("jackson", "train on"), ("theo", "score it against"))}
    assert load_model(tmp_path / "m").labels == ["1", "4"]


def test_labels_differing_only_in_case_are_warned_about(make_fsdd, tmp_path, caplog):
    """Folders "one" and "One" (two sources of one word) trained two classes without a word."""
    caplog.set_level("WARNING", logger="speechxfer")  # whatever level an earlier CLI test left
    data = make_fsdd(tmp_path / "data", ("jackson", "george"), ("1", "4"), 2)
    for p in sorted(data.glob("1_george_*.wav")):
        p.rename(p.with_name("One" + p.name[1:]))
    for p in sorted(data.glob("1_jackson_*.wav")):
        p.rename(p.with_name("one" + p.name[1:]))
    summary = train_job(data, strategy="svm", evaluate=False, out=tmp_path / "m")
    assert load_model(tmp_path / "m").labels == ["4", "One", "one"] and summary["n_train"] == 8
    assert "labels ['One', 'one'] differ only in case" in caplog.text


def test_per_class_trains_a_readable_clip_where_a_corrupt_one_was_drawn(make_fsdd, tmp_path):
    """--per-class 1 drew a corrupt take and that (label, speaker) group trained with none,
    though a readable take was there; a broken link in --noise stopped the run only after
    every clip was read (or not at all: it was left out of the noises)."""
    from speechxfer.audio import AudioError
    from speechxfer.data import load_dataset, load_waves, per_class, split_dataset

    data = make_fsdd(tmp_path / "data", ("jackson", "george"), ("1", "4"), 2)
    ds = load_dataset(data)
    split = split_dataset(ds)
    bad = per_class(split.train + split.validation, 1, seed=0)[0]
    bad.path.write_bytes(b"RIFF junk")
    run = jobs.Run(ds=ds, split=split, out=tmp_path / "m", work=tmp_path / "w",
                   strategy="svm", per_class_n=1)
    train, val = run.pools()
    _, kept, skipped = load_waves(train, 16_000)
    assert val == [] and [str(p) for p, _ in skipped] == [str(bad.path)]
    assert sorted((c.label, c.speaker) for c in kept) == sorted(
        (d, s) for d in "14" for s in ("george", "jackson"))
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "hum.wav").write_bytes((data / "1_jackson_0.wav").read_bytes())
    identity = jobs.augment_options(True, noise, None, 0)["noise_files"]
    (noise / ".DS_Store").write_bytes(b"Finder rewrites this")  # no noise: the same run
    assert jobs.augment_options(True, noise, None, 0)["noise_files"] == identity
    (noise / "fan.wav").symlink_to(tmp_path / "gone.wav")
    with pytest.raises(AudioError, match=r"fan\.wav: a broken symbolic link"):
        jobs.augment_options(True, noise, None, 0)


def test_the_command_task_figure_is_the_systems_decision_not_the_heads_argmax():
    """With a threshold every command is rejected, so every `_unknown_` clip is right: the
    command task's accuracy (beside the speaker head's) is the headline's, not the bare argmax's
    of a head that often puts a command first (a combined model's prior is likewise counted)."""
    import torch

    from speechxfer.encoders import build_encoder
    from speechxfer.model import CommandClassifier

    torch.manual_seed(0)
    model = CommandClassifier(build_encoder("ds-cnn", pretrained=False),
                              {"command": ["_unknown_", "no", "yes"], "speaker": ["a", "b"]}).eval()
    model.threshold = 1.0 + 1e-9  # rejects every command
    waves = [torch.randn(8000) * 0.1 for _ in range(8)]
    clips = [Clip(Path(f"{i}.wav"), {"command": "_unknown_", "speaker": "ab"[i % 2]}, "ab"[i % 2])
             for i in range(8)]
    report = jobs.evaluate_system(model, waves, [c.label for c in clips])
    assert report["accuracy"] == 1.0
    argmax = model.predict_proba(waves).argmax(1)
    assert (argmax != 0).any()  # the head alone gets some wrong
    tasks = jobs.system_task_metrics(model, waves, clips, report)
    assert tasks["command"]["accuracy"] == 1.0 and tasks["command"]["n"] == 8
    assert set(tasks["speaker"]) >= {"accuracy", "n_known"}


def test_max_false_accept_on_data_with_nothing_to_reject_is_refused(small_fsdd, tmp_path,
                                                                      capsys):
    """Digits alone have no _unknown_ or _silence_ clip: the rate was silently ignored and the
    model saved without a threshold; refused now, nothing written."""
    assert main(["train", "--data", str(small_fsdd), "--strategy", "svm", "--max-false-accept",
                 "0.1", "--out", str(tmp_path / "m")]) == 2
    assert "--max-false-accept 0.1:" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_write_results_keeps_a_cut_run_beside_the_finished_results(tmp_path):
    """The recipes' one rule for results while a run goes on (pipeline_vs_e2e, speech_commands):
    a run cut short never replaces the last finished results; a finished one leaves no
    stale partial files."""
    (tmp_path / "results.json").write_text("earlier")

    def files(suffix: str) -> list[Path]:
        return [tmp_path / f"results{suffix}.json", tmp_path / f"plot{suffix}.png"]

    def write(runs: int):
        return lambda suffix: [p.write_text(f"{runs} runs") for p in files(suffix)]

    jobs.write_results(write(1), files, "", finished=False)
    assert (tmp_path / "results.json").read_text() == "earlier"
    assert (tmp_path / "plot_partial.png").read_text() == "1 runs"
    jobs.write_results(write(2), files, "", finished=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "results.json"]
    assert (tmp_path / "results.json").read_text() == "2 runs"


def test_the_summary_records_every_option_that_changes_the_model(make_fsdd, tmp_path):
    """Recipes keep a finished run by its summary (``finished_run``); seed, epochs, pooling,
    layer and keep were not in it, so a run with other ones passed for the one asked for."""
    data = make_fsdd(tmp_path / "data", ("jackson", "george", "theo"), ("1", "7"), 2)
    out = tmp_path / "m"
    train_job(data, strategy="frozen", test_speakers=["theo"], out=out, device="cpu", epochs=1,
              seed=3, pooling="attentive", layer=2, keep="last")
    saved = json.loads((out / "train_summary.json").read_text())
    assert {key: saved[key] for key in jobs.MODEL_OPTIONS} == {
        "seed": 3, "epochs": 1, "k": 2, "pooling": "attentive", "layer": 2, "keep": "last",
        "lr_encoder": 1e-4, "lr_head": 2e-3, "batch_size": 32, "head_options": None,
        "task_weights": None, "max_false_accept": jobs.DEFAULT_MAX_FALSE_ACCEPT}
    wanted = {"data": saved["data"], "test_speakers": ["theo"], "strategy": "frozen", "seed": 3,
              "epochs": 1, "pooling": "attentive", "layer": 2, "keep": "last"}
    assert jobs.finished_run(out, wanted) == saved
    for key, other in (("seed", 0), ("epochs", 2), ("pooling", "mean"), ("keep", "best"),
                       ("layer", None), ("k", 3), ("lr_head", 1e-3)):  # None, absent: default
        with pytest.raises(ValueError, match=f"m: trained with other options \\({key} "):
            jobs.finished_run(out, {**wanted, key: other})


def test_model_options_are_the_ones_a_run_trains_with():
    """What ``finished_run`` compares an option the recipe does not name with: the default
    the run trained with, epochs resolved as ``train_neural`` does."""
    assert jobs.model_options("combined")["epochs"] == jobs.default_epochs("combined")
    assert jobs.model_options("full")["epochs"] == jobs.default_epochs("full")
    assert jobs.model_options("svm")["epochs"] is None  # trains in no epochs
    given = jobs.model_options("frozen", epochs=2, max_false_accept=None, head_options={},
                               task_weights={"speaker": 0.5})
    assert given["epochs"] == 2 and given["max_false_accept"] == jobs.DEFAULT_MAX_FALSE_ACCEPT
    assert given["head_options"] is None and given["task_weights"] == {"speaker": 0.5}


def test_a_run_saved_before_the_summary_recorded_its_options_is_refused(tmp_path):
    """Its seed, epochs, k or pooling cannot be told: never taken as matching."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    summary = {"data": str(tmp_path), "test_speakers": [], "strategy": {"strategy": "combined"},
               **jobs.model_options("combined")}
    (tmp_path / "m" / "train_summary.json").write_text(json.dumps(summary))
    assert jobs.finished_run(tmp_path / "m", {"data": tmp_path}) == summary
    del summary["layer"], summary["seed"]
    (tmp_path / "m" / "train_summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="m: saved before train_summary.json recorded the options "
                                         "it was trained with \\(seed, layer\\).*remove it"):
        jobs.finished_run(tmp_path / "m", {"data": tmp_path})
