"""speechxfer synth: synthetic-voice datasets (espeak-ng and the bundled Piper voice)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechxfer.cli import main
from speechxfer.data import load_dataset, load_waves, split_dataset
from speechxfer.synth import (
    DEFAULT_UNKNOWN_WORDS,
    ENGLISH_VOICES,
    SynthConfig,
    SynthError,
    Voice,
    _file_name,
    accent_phonemes,
    distractors,
    plan,
    read_word_list,
    synthesise,
    trim,
)
from speechxfer.vocab import UNKNOWN, apply_commands

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (.ci/run installs it)")


def small(**kw) -> SynthConfig:
    settings = {"words": ("yes", "lights on"), "unknown_words": ("table", "water"),
                "per_word": 3, "unknown_clips": 2, "seed": 1, "engines": ("espeak",)} | kw
    if not settings["unknown_words"]:  # unknown clips need unknown words to say
        settings["unknown_clips"] = None
    return SynthConfig(**settings)


@needs_espeak
def test_layout_rate_manifest_and_loading(tmp_path: Path) -> None:
    result = synthesise(small(), tmp_path / "syn")
    assert result.labels == {"yes": 3, "lights on": 3, UNKNOWN: 2}
    rows = list(csv.DictReader((tmp_path / "syn" / "manifest.csv").open()))
    assert [r["label"] for r in rows].count("lights on") == 3
    for r in rows:
        path = tmp_path / "syn" / r["path"]
        assert path.parent.name == r["label"] and path.is_file()
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16_000, 1)
        assert 0.1 < info.duration < 2.0, (path, info.duration)
    data = load_dataset(tmp_path / "syn")
    assert data.layout == "manifest" and data.labels == sorted(["yes", "lights on", UNKNOWN])
    assert all(s.startswith("espeak-") for s in data.speakers) and len(data.speakers) >= 3
    waves, kept, skipped = load_waves(data.clips, 16_000)
    assert len(kept) == 8 and not skipped and all(w.abs().max() > 0.1 for w in waves)
    # --commands keeps the listed words and the distractors stay _unknown_
    assert apply_commands(data, ["yes"]).labels == sorted(["yes", UNKNOWN])


@needs_espeak
def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    config = small(engines=("espeak", "piper"), words=("go",), unknown_words=(), per_word=4)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesise(replace(config, seed=seed), tmp_path / name)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert any("piper" in str(f) for f in files) and any("espeak" in str(f) for f in files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a = [sf.read(tmp_path / "a" / f)[0] for f in files]
    c = [sf.read(p)[0] for p in sorted((tmp_path / "c").rglob("*.wav"))]
    assert any(len(x) != len(y) or not np.allclose(x, y) for x, y in zip(a, c))


@needs_espeak
def test_a_run_that_fails_half_way_leaves_the_earlier_dataset(tmp_path: Path, monkeypatch) -> None:
    """The new dataset replaces the old one whole at the end: a crash mid-synthesis loses
    nothing that was there and leaves no half-written folder."""
    from speechxfer import synth

    config = small(engines=("espeak",), words=("go",), unknown_words=(), per_word=3)
    out = tmp_path / "out"
    synthesise(config, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing_trim(samples):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return samples

    monkeypatch.setattr(synth, "trim", failing_trim)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesise(replace(config, seed=9), out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@needs_espeak
def test_ctrl_c_during_synth_says_so_and_keeps_the_earlier_dataset(tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    from speechxfer import synth

    out = tmp_path / "out"
    args = ["synth", "--words", "go", "--per-word", "2", "--engines", "espeak", "--out", str(out)]
    assert main(args) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(samples):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "trim", interrupted)
    capsys.readouterr()
    assert main([*args, "--seed", "4"]) == 130
    assert "speechxfer synth: interrupted" in capsys.readouterr().err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_voices_and_takes_are_spread() -> None:
    jobs = plan(SynthConfig(words=("up",), per_word=12, engines=("espeak", "piper")))
    voices = [v for _, _, _, v in jobs]
    assert len({v.speaker for v in voices}) >= 9  # a voice per take, Piper's one aside
    assert sum(v.engine == "piper" for v in voices) == 4  # English, accent, Piper take turns
    assert sum(v.name in ENGLISH_VOICES for v in voices if v.engine == "espeak") == 4
    only_english = plan(SynthConfig(words=("up",), per_word=6, engines=("espeak",), accents=False))
    assert all(v.name in ENGLISH_VOICES for _, _, _, v in only_english)


def test_distractors_skip_commands_and_are_seeded(tmp_path: Path) -> None:
    shipped = read_word_list(DEFAULT_UNKNOWN_WORDS)
    assert len(shipped) >= 100 and "light" in shipped
    picked = distractors(20, ["light", "yes"], seed=2)
    assert len(picked) == 20 and "light" not in picked and set(picked) <= set(shipped)
    assert picked == distractors("20", ["light", "yes"], seed=2) != distractors(20, [], seed=3)
    listed = tmp_path / "words.txt"
    listed.write_text("# mine\nbanana\n\nLights  On\nbanana\n")
    assert distractors(listed, ["lights on"]) == ["banana"]
    assert distractors(None, ["x"]) == []
    with pytest.raises(SynthError, match="shipped list has"):
        distractors(10_000, [])
    with pytest.raises(SynthError, match="missing.txt"):
        distractors(tmp_path / "missing.txt", [])


def test_accent_phonemes_keep_the_english_sounds_in_plain_phonemes() -> None:
    assert accent_phonemes("s'Ev@n") == "s'even"
    assert accent_phonemes("n'aIn") == "n'ain"
    assert accent_phonemes("Tr'i:") == "tr'i:"
    assert accent_phonemes("'O2n") == "'on"


def test_trim_cuts_silence_at_both_ends() -> None:
    rate = 22_050
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(rate // 2) / rate)
    padded = np.concatenate([np.zeros(rate), tone, np.zeros(rate)]).astype(np.float32)
    cut = trim(padded)
    assert len(tone) <= len(cut) < len(tone) + rate // 10


def test_missing_espeak_is_named_and_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(SynthError, match="espeak-ng is not installed.*apt-get install espeak-ng"):
        synthesise(small(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    code = main(["synth", "--words", "yes", "--out", str(tmp_path / "cli")])
    assert code == 2 and not (tmp_path / "cli").exists()


def test_missing_piper_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper now fails
    with pytest.raises(SynthError, match=r"Piper is not installed.*speechxfer\[synth\]"):
        synthesise(small(engines=("piper",)), tmp_path / "out")


@needs_espeak
def test_too_few_takes_for_every_engine_are_warned_of(tmp_path: Path, monkeypatch,
                                                     caplog) -> None:
    """One take a word goes to espeak-ng's English voices alone: Piper, asked for, says nothing
    (and, not being needed, need not be installed)."""
    monkeypatch.setitem(sys.modules, "piper", None)
    config = small(engines=("espeak", "piper"), words=("go",), unknown_words=(), per_word=1)
    assert synthesise(config, tmp_path / "out").n_clips == 1
    assert any(m.startswith("no clip from piper") and "--per-word 1" in m
               for m in caplog.messages)


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeated"):
        SynthConfig(words=("yes", "yes"))
    with pytest.raises(ValueError, match="engines"):
        SynthConfig(words=("yes",), engines=("festival",))
    with pytest.raises(ValueError, match="added for you"):
        SynthConfig(words=(UNKNOWN,))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not an empty folder"):
        synthesise(small(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("settings", "problem"), [
    ({"words": ("Yes", "yes")}, "'Yes' and 'yes' are said alike"),
    ({"words": ("lights on", "Lights-On!")}, "said alike"),
    ({"words": ("café", "cafe\u0301")}, "said alike"),  # one folder on macOS, one label
    ({"words": ("..", "up")}, "names its folder"),  # its clips would land beside --out
    ({"words": (".",)}, "names its folder"),
    ({"words": ("_silence_",)}, "names its folder"),
    ({"words": ("please " * 30,)}, "200 bytes at most"),  # past 255: "File name too long"
    ({"words": ("?!", "up")}, "nothing to say"),  # espeak-ng reads it as silence
    ({"words": ("up",), "unknown_words": ("...",)}, "nothing to say"),
    ({"words": ("up",), "unknown_words": ("UP!",)}, "said like a command word"),
    ({"words": ("up",), "unknown_clips": 3}, "no unknown words"),
    ({"words": ("привет",)}, "not in the Latin alphabet"),  # spelt letter by letter
    ({"words": ("up",), "unknown_words": ("東京",)}, "not in the Latin alphabet"),
])
def test_words_that_would_mislabel_or_misplace_clips_are_refused(settings, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        SynthConfig(**settings)


def test_a_long_distractor_sentence_gets_a_short_file_name() -> None:
    name = _file_name(Voice("espeak", "en-us", "m1"), "lights on in the kitchen please " * 9, 7)
    assert len(name) < 100 and name.startswith("espeak-en-us-m1_nohash_lights-on-in-the-kitchen")
    assert name.endswith("-7.wav")


def test_cli_refuses_a_word_that_leaves_the_out_folder(tmp_path: Path, capsys) -> None:
    before = sorted(tmp_path.iterdir())
    code = main(["synth", "--words", "..,up", "--per-word", "1", "--engines", "espeak",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "'..'" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == before


def test_a_distractor_list_of_command_words_is_an_error_naming_it(tmp_path: Path) -> None:
    listed = tmp_path / "words.txt"
    listed.write_text("Yes!\n  # a comment\nlights-on\n")
    with pytest.raises(SynthError, match="words.txt: every word of the list is a command"):
        distractors(listed, ["yes", "lights on"])
    listed.write_text("Yes!\n  # a comment\ntable\n")
    assert distractors(listed, ["yes"]) == ["table"]
    listed.write_text("table\n?!\n")
    with pytest.raises(SynthError, match=r"words.txt: \['\?!'\] say nothing"):
        distractors(listed, ["yes"])
    listed.write_text("banana\n\n# fruit\nBanana!\ncafé\n")  # said alike: said once
    assert distractors(listed, ["yes"]) == ["banana", "café"]
    listed.write_text("table\nпривет\n")
    with pytest.raises(SynthError, match=r"words.txt: \['привет'\] are not in the Latin"):
        distractors(listed, ["yes"])


@needs_espeak
def test_files_added_to_a_synthesised_folder_stop_it_being_replaced(tmp_path: Path) -> None:
    """A recording dropped into a word's folder would go with the old dataset."""
    config = small(words=("go",), unknown_words=(), per_word=1)
    out = tmp_path / "out"
    synthesise(config, out)
    (out / ".DS_Store").write_text("finder")  # hidden files do not count
    synthesise(config, out)
    (out / "go" / "mine.wav").write_bytes(b"my own take")
    with pytest.raises(SynthError, match=r"go/mine.wav: synth did not write it"):
        synthesise(config, out)
    assert (out / "go" / "mine.wav").read_bytes() == b"my own take"


def speech_commands(root: Path, fsdd: Path) -> Path:
    """A Speech Commands layout (a folder per word, ``{speaker}_nohash_{n}`` names) with its
    own validation and test lists, from real clips."""
    for digit in ("1", "4"):
        (root / digit).mkdir(parents=True)
        for speaker in ("jackson", "george", "theo"):
            for take in range(2):
                (root / digit / f"{speaker}_nohash_{take}.wav").write_bytes(
                    (fsdd / f"{digit}_{speaker}_{take}.wav").read_bytes())
    (root / "testing_list.txt").write_text("1/theo_nohash_0.wav\n4/theo_nohash_0.wav\n")
    (root / "validation_list.txt").write_text("1/george_nohash_0.wav\n4/george_nohash_0.wav\n")
    return root


@needs_espeak
def test_with_data_keeps_the_datas_own_splits_and_task_labels(tmp_path: Path, fsdd: Path,
                                                              caplog) -> None:
    """A test list dropped here would train on the test clips; a task column, lose its task."""
    real = speech_commands(tmp_path / "sc", fsdd)
    (real / "1" / "more").mkdir()  # not read: said now, as a training on real would say it
    (real / "1" / "more" / "x.wav").write_bytes((fsdd / "1_jackson_9.wav").read_bytes())
    manifest = tmp_path / "extra.csv"
    manifest.write_text(f"path,label,speaker,split,gender\n{fsdd / '7_jackson_0.wav'},7,jackson,"
                        f"test,m\n{fsdd / '7_george_0.wav'},7,george,,m\n")
    out = tmp_path / "mix"
    synthesise(small(words=("1",), unknown_words=(), per_word=1), out, [real, manifest])
    data = load_dataset(out)
    split = {p.resolve(): s for p, s in data.split.items()}
    assert {p.name for p, s in split.items() if s == "test"} == {"theo_nohash_0.wav",
                                                                 "7_jackson_0.wav"}
    assert sum(s == "validation" for s in split.values()) == 2
    tested = split_dataset(data, seed=0)
    assert {c.path.resolve() for c in tested.test} == {p for p, s in split.items() if s == "test"}
    genders = {c.path.name: c.labels.get("gender") for c in data.clips}
    assert genders["7_george_0.wav"] == "m" and genders["theo_nohash_1.wav"] is None
    assert any("skipped" in m and "more" in m for m in caplog.messages)


@needs_espeak
def test_with_data_refuses_synthetic_clips_and_clips_listed_twice(tmp_path: Path, small_fsdd: Path,
                                                                  make_fsdd) -> None:
    out = tmp_path / "syn"
    synthesise(small(words=("1",), unknown_words=(), per_word=1), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # --with-data OUT: its rows would point at the clips the new dataset deletes
    with pytest.raises(SynthError, match="is a dataset speechxfer synth wrote"):
        synthesise(small(words=("1",), unknown_words=(), per_word=1), out, [out])
    inside = make_fsdd(out / "real", ("jackson",), ("1", "4"), 2)  # replaced with out
    with pytest.raises(SynthError, match="lies in --out"):
        synthesise(small(words=("1",), unknown_words=(), per_word=1), out, [inside])
    shutil.rmtree(inside)
    with pytest.raises(SynthError, match="already listed by --with-data"):
        synthesise(small(words=("1",), unknown_words=(), per_word=1), tmp_path / "b",
                   [small_fsdd, small_fsdd])
    manifest = tmp_path / "real.csv"
    manifest.write_text(f"path,label,speaker\n{small_fsdd / '1_theo_0.wav'},yes,theo\n")
    with pytest.raises(SynthError, match="label 'yes' is the word 'Yes!' spelt otherwise"):
        synthesise(small(words=("Yes!",), unknown_words=(), per_word=1), tmp_path / "b",
                   [manifest])
    manifest.write_text(f"path,label,speaker\n{small_fsdd / '1_theo_0.wav'},_unknown_,theo\n")
    synthesise(small(words=("unknown",), unknown_words=(), per_word=1), tmp_path / "c",
               [manifest])  # a word "unknown" is not the label _unknown_
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and not (tmp_path / "b").exists()


@needs_espeak
def test_cli_synth_with_real_data_trains_on_both(tmp_path: Path, small_fsdd: Path, capsys) -> None:
    out = tmp_path / "mix"
    code = main(["synth", "--words", "1,4", "--per-word", "2", "--engines", "espeak",
                 "--unknown-words", "3", "--unknown-clips", "3", "--out", str(out),
                 "--with-data", str(small_fsdd), "--augment"])
    assert code == 0 and f"--data {out}" in capsys.readouterr().out
    data = load_dataset(out)
    real = {"jackson", "george", "theo"}
    assert real <= set(data.speakers) and len(set(data.speakers) - real) >= 2
    assert sum(c.speaker in real for c in data.clips) == 36  # 3 speakers x 3 digits x 4 takes
    assert sorted(data.labels) == ["1", "4", "7", UNKNOWN]
    # synthetic voices only train: validation and calibration are the real speakers
    synthetic = {c.path for c in data.clips if c.speaker not in real}
    assert synthetic and all(data.split.get(p) == "train" for p in synthetic)
    assert not synthetic & {c.path for c in split_dataset(data, seed=0).validation}
    # the same folder can be synthesised into again: an earlier synthesised dataset is replaced
    assert main(["synth", "--words", "1", "--per-word", "1", "--engines", "espeak",
                 "--out", str(out)]) == 0
    assert not list((out / "4").glob("*.wav")) and len(list((out / "1").glob("*.wav"))) == 1


@needs_espeak
@pytest.mark.slow
def test_the_default_model_trained_on_synthetic_digits_only_recognises_real_speakers(
        tmp_path: Path, make_fsdd, capsys) -> None:
    """The README's two steps: synth, then train on the folder (default strategy)."""
    digits = ("1", "4", "7")
    out = tmp_path / "syn"
    assert main(["synth", "--words", ",".join(digits), "--per-word", "12", "--out", str(out)]) == 0
    model = tmp_path / "model"
    assert main(["train", "--data", str(out), "--out", str(model)]) == 0
    real = make_fsdd(tmp_path / "real", ("jackson", "george", "theo", "yweweler"), digits, 5)
    capsys.readouterr()
    assert main(["eval", str(model), "--data", str(real), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 60 and report["accuracy"] >= 0.9  # chance: 1/3
