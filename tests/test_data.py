import json
import re
import shutil
from pathlib import Path

import pytest

from speechxfer.data import (
    DatasetError,
    load_dataset,
    load_waves,
    per_class,
    readable,
    split_dataset,
)


def test_fsdd_layout(small_fsdd):
    ds = load_dataset(small_fsdd)
    assert ds.layout == "fsdd"
    assert ds.labels == ["1", "4", "7"] and ds.speakers == ["george", "jackson", "theo"]
    assert len(ds.clips) == 36


def test_speaker_disjoint_split(small_fsdd):
    split = split_dataset(load_dataset(small_fsdd), ["theo"], val_fraction=0.25)
    assert {c.speaker for c in split.test} == {"theo"}
    assert "theo" not in {c.speaker for c in split.train + split.validation}
    assert split.validation and not {c.path for c in split.train} & {c.path for c in split.validation}


def test_unknown_test_speaker(small_fsdd):
    with pytest.raises(DatasetError, match="unknown test speaker"):
        split_dataset(load_dataset(small_fsdd), ["nobody"])


def test_per_class_is_seeded(small_fsdd):
    clips = load_dataset(small_fsdd).clips
    a, b = per_class(clips, 2, seed=1), per_class(clips, 2, seed=1)
    assert len(a) == 2 * 3 * 3 and [c.path for c in a] == [c.path for c in b]
    assert [c.path for c in per_class(clips, 2, seed=2)] != [c.path for c in a]


def test_per_class_replaces_a_drawn_clip_that_does_not_read(small_fsdd):
    """A corrupt clip drawn by --per-class 1 left its (label, speaker) group with no clip,
    though three readable takes were there; it stays in (reading reports it) beside a readable
    take of its group. Where every drawn clip reads, the seed chooses as without the check."""
    clips = load_dataset(small_fsdd).clips
    plain = per_class(clips, 1, seed=3)
    assert [c.path for c in per_class(clips, 1, seed=3, check=readable)] == [c.path for c in plain]
    bad = plain[0]
    bad.path.write_bytes(b"RIFF junk")
    drawn = per_class(clips, 1, seed=3, check=readable)
    assert drawn[0] is bad and drawn[2:] == plain[1:]  # the other groups draw as before
    assert (drawn[1].label, drawn[1].speaker) == (bad.label, bad.speaker)
    _, kept, skipped = load_waves(drawn, 16_000)
    assert [str(p) for p, _ in skipped] == [str(bad.path)] and len(kept) == len(plain)
    assert per_class(clips, 1, seed=3, check=readable) == drawn  # seeded


def test_label_folders_with_split_lists(small_fsdd, tmp_path):
    root = tmp_path / "sc"
    for p in sorted(small_fsdd.iterdir()):
        digit, speaker, take = p.stem.split("_")
        (root / digit).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / digit / f"{speaker}_nohash_{take}.wav")
    (root / "_background_noise_").mkdir()
    (root / "testing_list.txt").write_text("1/theo_nohash_0.wav\n4/theo_nohash_0.wav\n")
    (root / "validation_list.txt").write_text("7/george_nohash_1.wav\n")
    ds = load_dataset(root)
    assert ds.layout == "folders" and ds.labels == ["1", "4", "7"]
    split = split_dataset(ds)
    assert len(split.test) == 2 and len(split.validation) == 1
    assert split.test[0].speaker == "theo"
    # test speakers given: the validation list still holds, less their clips
    (root / "validation_list.txt").write_text("7/george_nohash_1.wav\n7/jackson_nohash_1.wav\n")
    split = split_dataset(load_dataset(root), ["jackson"])
    assert [c.path.name for c in split.validation] == ["george_nohash_1.wav"]
    assert {c.speaker for c in split.test} == {"jackson"} and len(split.train) == 36 - 12 - 1


def test_clips_marked_train_never_validate(small_fsdd, tmp_path):
    """Twelve speakers, six of them marked train only (say synthetic voices): whatever the seed,
    validation speakers come from the other six, and every marked clip trains."""
    rows = ["path,label,speaker,split"]
    for i, p in enumerate(sorted(small_fsdd.iterdir())):
        speaker = f"s{i % 12}"
        rows.append(f"{p},{p.stem.split('_')[0]},{speaker},{'train' if i % 12 < 6 else ''}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(tmp_path / "m.csv")
    pinned = {c.path for c in data.clips if data.split.get(c.path) == "train"}
    assert len(pinned) == 18
    for seed in range(8):
        split = split_dataset(data, seed=seed)
        assert split.validation and not pinned & {c.path for c in split.validation}
        assert pinned <= {c.path for c in split.train}


def test_the_bundled_digits_manifest_lists_every_digit_clip():
    """data/digits.csv (the default training set): FSDD's 2,000 clips, a tenth validating,
    and the 87 digits of the 38 Speech Commands speakers, all training, labelled 0-9."""
    root = Path(__file__).resolve().parents[1] / "data"
    ds = load_dataset(root / "digits.csv")
    assert all(c.path.is_file() for c in ds.clips)
    assert ds.labels == [str(d) for d in range(10)] and len(ds.speakers) == 42
    split = split_dataset(ds)
    assert len(split.validation) == 200 and not split.test
    assert {c.speaker for c in split.validation} == {"george", "jackson", "theo", "yweweler"}
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    sc = [c for c in split.train if c.path.parent.parent.name == "speech_commands"]
    assert len(sc) == 87 and all(words[int(c.label)] == c.path.parent.name for c in sc)


def test_manifests(small_fsdd, tmp_path):
    files = sorted(small_fsdd.iterdir())[:4]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,speaker,mood\n" + "".join(
        f"{p},{p.stem[0]},{p.stem.split('_')[1]},{'calm' if i % 2 else ''}\n"
        for i, p in enumerate(files)))
    ds = load_dataset(csv_path)
    assert ds.layout == "manifest" and len(ds.clips) == 4
    assert ds.clips[1].labels["mood"] == "calm" and "mood" not in ds.clips[0].labels
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"path": p.name, "label": "x"}) + "\n" for p in files))
    shutil.copytree(small_fsdd, tmp_path, dirs_exist_ok=True)
    assert load_dataset(jsonl).clips[0].path.is_file()


def test_bad_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "random.wav").write_bytes(b"x")
    with pytest.raises(DatasetError, match="random.wav"):
        load_dataset(tmp_path)
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\na.wav,1\n")
    with pytest.raises(DatasetError, match="'path' column"):
        load_dataset(bad)


def test_bad_clips_are_skipped_and_reported(small_fsdd):
    (small_fsdd / "1_jackson_9.wav").write_bytes(b"garbage")
    waves, kept, skipped = load_waves(load_dataset(small_fsdd).clips, 16_000)
    assert len(waves) == len(kept) == 36
    assert skipped[0][0].endswith("1_jackson_9.wav") and "not readable" in skipped[0][1]


def test_stray_file_does_not_flip_the_fsdd_layout(small_fsdd, tmp_path):
    """FSDD keeps its clips in ``recordings/``; a misnamed file there is skipped and listed."""
    root = tmp_path / "repo"
    shutil.copytree(small_fsdd, root / "recordings")
    (root / "recordings" / "foo.wav").write_bytes((small_fsdd / "1_theo_0.wav").read_bytes())
    (root / "recordings" / "7_theo.wav").write_bytes(b"x")
    ds = load_dataset(root)
    assert ds.layout == "fsdd" and ds.labels == ["1", "4", "7"] and len(ds.clips) == 36
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["7_theo.wav", "foo.wav"]
    assert all("{label}_{speaker}_{take}" in problem for _, problem in ds.skipped)
    with pytest.raises(DatasetError, match=r"known: \['george', 'jackson', 'theo'\]"):
        split_dataset(ds, ["nobody"])


def test_mostly_misnamed_flat_folder_names_the_file(small_fsdd):
    for i in range(40):
        (small_fsdd / f"take {i}.wav").write_bytes(b"x")
    with pytest.raises(DatasetError, match="take 0.wav"):
        load_dataset(small_fsdd)


def _jsonl(tmp_path, *lines: str):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("row", ['["a.wav", "1"]', "3", '"a.wav"', "null", '{"label": "1"}',
                                 '{"path": null, "label": "1"}', '{"path": 3, "label": "1"}',
                                 '{"path": "", "label": "1"}', "{not json"])
def test_bad_jsonl_rows_name_file_and_line(tmp_path, row):
    path = _jsonl(tmp_path, '{"path": "a.wav", "label": "1"}', "", row)
    with pytest.raises(DatasetError, match=r"m\.jsonl.*line 3"):
        load_dataset(path)


def test_null_labels_are_unknown(tmp_path):
    path = _jsonl(tmp_path, '{"path": "a.wav", "label": null, "speaker": null, "mood": "calm"}',
                  '{"path": "b.wav", "label": "1", "speaker": "ann", "split": null}')
    a, b = load_dataset(path).clips
    assert a.label is None and a.speaker is None and a.labels == {"mood": "calm"}
    assert b.labels == {"command": "1", "speaker": "ann"}


def test_csv_without_label_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,speaker\na.wav,ann\n")
    with pytest.raises(DatasetError, match="m.csv.*no label column"):
        load_dataset(path)


def test_csv_rows_with_extra_cells_or_no_path(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.wav,1\nb.wav,2,extra\n")
    with pytest.raises(DatasetError, match=r"m\.csv.*line 3"):
        load_dataset(path)
    path.write_text("path,label\na.wav,1\n,2\n")
    with pytest.raises(DatasetError, match=r"m\.csv.*line 3.*path"):
        load_dataset(path)


def test_csv_with_byte_order_mark(tmp_path):
    """Spreadsheets save CSV as UTF-8 with a byte-order mark."""
    path = tmp_path / "m.csv"
    path.write_bytes("path,label\na.wav,1\n".encode("utf-8-sig"))
    (clip,) = load_dataset(path).clips
    assert clip.path == tmp_path / "a.wav" and clip.label == "1"


def test_eval_skips_and_lists_unlabeled_and_misnamed_clips(small_fsdd, tmp_path):
    """A null label at eval is 'unknown': the clip is listed as skipped, the rest is scored."""
    from speechxfer.classic import build_classic
    from speechxfer.jobs import eval_job

    clips = [c for c in load_dataset(small_fsdd).clips if c.speaker != "theo"]
    waves, kept, _ = load_waves(clips, 8000)
    system = build_classic("svm", seed=0)
    system.fit(waves, [c.label for c in kept])
    system.save(tmp_path / "model")
    theo = sorted(small_fsdd.glob("*_theo_*.wav"))
    rows = [{"path": str(p), "label": p.name[0]} for p in theo]
    rows[0]["label"] = None
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = eval_job(tmp_path / "model", manifest)
    assert report["n"] == len(theo) - 1
    assert report["skipped"] == [{"path": str(theo[0]), "problem": "no label to score against"}]
    (small_fsdd / "notes.wav").write_bytes(b"x")
    report = eval_job(tmp_path / "model", small_fsdd)
    assert report["n"] == 36 and [s["path"] for s in report["skipped"]] == [
        str(small_fsdd / "notes.wav")]


def test_training_reports_a_misnamed_file_it_skipped(small_fsdd, tmp_path):
    from speechxfer.jobs import train_job

    (small_fsdd / "foo.wav").write_bytes((small_fsdd / "1_theo_0.wav").read_bytes())
    summary = train_job(small_fsdd, strategy="svm", test_speakers=["theo"], out=tmp_path / "m")
    assert [s["path"] for s in summary["skipped"]] == [str(small_fsdd / "foo.wav")]
    assert summary["n_test"] == 12  # theo's 3 digits x 4 takes; foo.wav is in no split


def test_a_relative_data_path_is_recorded_absolute(small_fsdd, tmp_path, monkeypatch):
    """Export's parity data, recipes' reruns and benchmarks read the recorded data again from
    other folders: a path recorded as typed (``fsdd``) would point nowhere from there."""
    from speechxfer.jobs import finished_run, train_job

    (small_fsdd / "foo.wav").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    summary = train_job("fsdd", strategy="svm", test_speakers=["theo"], out="m")
    saved = json.loads((tmp_path / "m" / "train_summary.json").read_text())
    assert saved["data"] == summary["data"] == str(small_fsdd)
    assert [s["path"] for s in summary["skipped"]] == [str(small_fsdd / "foo.wav")]
    monkeypatch.chdir(small_fsdd)
    assert len(load_dataset(summary["data"]).clips) == 36
    assert finished_run(tmp_path / "m", {"data": small_fsdd})["data"] == str(small_fsdd)


def test_a_model_trained_on_a_manifest_names_the_manifest(small_fsdd, tmp_path):
    """The summary's data is what reads the clips again (the fast path's parity check does):
    the manifest file, not its folder, which need hold no dataset of its own."""
    from speechxfer.jobs import train_job

    manifest = tmp_path / "lists" / "digits.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,speaker\n" + "".join(
        f"{p},{p.stem[0]},{p.stem.split('_')[1]}\n" for p in sorted(small_fsdd.iterdir())))
    summary = train_job(manifest, strategy="svm", test_speakers=["theo"], out=tmp_path / "m")
    assert summary["data"] == str(manifest)
    assert len(load_dataset(summary["data"]).clips) == 36
    with pytest.raises(DatasetError, match=f"^{re.escape(str(manifest))}: unknown test speaker"):
        split_dataset(load_dataset(manifest), ["nobody"])


@pytest.mark.parametrize("split", ["TEST", "valid", "dev"])
def test_a_split_a_manifest_misspells_is_refused(small_fsdd, tmp_path, split):
    """Read as "train", a misspelt test split would silently train on the test clips."""
    path = tmp_path / "m.csv"
    path.write_text(f"path,label,split\n{small_fsdd}/1_theo_0.wav,1,\n"
                    f"{small_fsdd}/4_theo_0.wav,4,{split}\n")
    with pytest.raises(DatasetError, match=rf"m\.csv: line 3: split '{split}' is not one of"):
        load_dataset(path)


def test_a_clip_listed_twice_in_a_manifest_is_refused(small_fsdd, tmp_path):
    """Under two speakers one file could train and test: refused, naming both lines."""
    path = tmp_path / "m.csv"
    path.write_text(f"path,label,speaker\n{small_fsdd}/1_theo_0.wav,1,theo\n"
                    f"{small_fsdd}/4_theo_0.wav,4,theo\n{small_fsdd}/../fsdd/1_theo_0.wav,1,ann\n")
    with pytest.raises(DatasetError, match=r"m\.csv: line 4: .*1_theo_0\.wav is already listed "
                                           r"on line 2"):
        load_dataset(path)


def test_a_speech_commands_word_folder_is_not_read_as_fsdd(small_fsdd, tmp_path):
    """``{speaker}_nohash_{n}`` fits the FSDD pattern: read so, the speaker hashes became labels
    (eval of a "yes" folder scored every clip as an unknown word) and "nohash" the speaker."""
    yes = tmp_path / "yes"
    yes.mkdir()
    for i, p in enumerate(sorted(small_fsdd.iterdir())[:3]):
        shutil.copy(p, yes / f"{i:08x}_nohash_0.wav")
    with pytest.raises(DatasetError, match="00000000_nohash_0.wav.*folder per word"):
        load_dataset(yes)


def test_a_test_list_that_shares_a_speaker_with_training_is_reported(small_fsdd, tmp_path, caplog):
    rows = "".join(f"{p},{p.stem[0]},{p.stem.split('_')[1]},"
                   f"{'test' if p.stem.startswith('1_theo') else ''}\n"
                   for p in sorted(small_fsdd.iterdir()))
    (tmp_path / "m.csv").write_text("path,label,speaker,split\n" + rows)
    split = split_dataset(load_dataset(tmp_path / "m.csv"))
    assert {c.speaker for c in split.test} == {"theo"}
    assert "['theo'] have clips in the test split and outside it" in caplog.text


def test_a_folder_of_other_words_is_read_with_the_label_folders(small_fsdd, tmp_path):
    """``_unknown_/`` (what synth writes for "none of these") was skipped with the noise
    folders: those words silently never trained."""
    root = tmp_path / "sc"
    for p in sorted(small_fsdd.iterdir()):
        digit, speaker, take = p.stem.split("_")
        folder = root / (digit if digit != "7" else "_unknown_")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / f"{speaker}_nohash_{take}.wav")
    (root / "_background_noise_").mkdir()
    shutil.copy(small_fsdd / "7_theo_0.wav", root / "_background_noise_" / "noise.wav")
    ds = load_dataset(root)
    assert ds.labels == ["1", "4", "_unknown_"] and len(ds.clips) == 36


def speech_commands_copy(small_fsdd: Path, root: Path) -> Path:
    for p in sorted(small_fsdd.iterdir()):
        digit, speaker, take = p.stem.split("_")
        (root / digit).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / digit / f"{speaker}_nohash_{take}.wav")
    return root


def test_split_list_lines_that_name_no_file_are_reported(small_fsdd, tmp_path):
    """A test-list line that matches no file leaves its clip training: said, not silent."""
    root = speech_commands_copy(small_fsdd, tmp_path / "sc")
    (root / "testing_list.txt").write_text(
        "1\\theo_nohash_0.wav\n./4/theo_nohash_0.wav\nsc/7/theo_nohash_0.wav\n")
    ds = load_dataset(root)
    tested = sorted(str(p.relative_to(root)) for p, s in ds.split.items() if s == "test"
                    and p.is_file())
    assert tested == ["1/theo_nohash_0.wav", "4/theo_nohash_0.wav"]  # "\" read as "/"
    [(where, problem)] = ds.skipped
    assert where == str(root / "testing_list.txt")
    assert "1 of 3 line(s)" in problem and "sc/7/theo_nohash_0.wav" in problem
    (root / "testing_list.txt").write_text("sc/7/theo_nohash_0.wav\nsc/7/theo_nohash_1.wav\n")
    with pytest.raises(DatasetError, match=r"testing_list.txt: none of its 2 line\(s\) names"):
        load_dataset(root)


def test_clips_in_sub_folders_of_label_folders_are_reported(small_fsdd, tmp_path):
    root = speech_commands_copy(small_fsdd, tmp_path / "sc")
    (root / "7" / "more").mkdir()
    for p in sorted((root / "7").glob("theo_*.wav")):
        p.rename(root / "7" / "more" / p.name)
    ds = load_dataset(root)
    assert len(ds.clips) == 36 - 4
    [(where, problem)] = ds.skipped
    assert where == str(root / "7" / "more") and problem.startswith("4 audio file(s) in a sub")
    nested = tmp_path / "nested"
    (nested / "yes" / "alice").mkdir(parents=True)
    shutil.copy(small_fsdd / "1_theo_0.wav", nested / "yes" / "alice" / "0.wav")
    with pytest.raises(DatasetError, match=r"audio only deeper down, e\.g\. yes/alice/0\.wav"):
        load_dataset(nested)


def test_manifest_cells_and_column_names_are_read_without_their_spaces(small_fsdd, tmp_path):
    """" 4" beside "4" would be a class of its own; " speaker" a task instead of the speaker."""
    rows = ["path, label , speaker"] + [f"{p}, {p.stem.split('_')[0]} ,{p.stem.split('_')[1]} "
                                        for p in sorted(small_fsdd.iterdir())]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.labels == ["1", "4", "7"] and ds.speakers == ["george", "jackson", "theo"]
    assert all(set(c.labels) == {"command", "speaker"} for c in ds.clips)


def test_a_word_folder_beside_flat_fsdd_files_is_reported(small_fsdd, tmp_path):
    (small_fsdd / "yes").mkdir()
    shutil.copy(small_fsdd / "1_theo_0.wav", small_fsdd / "yes" / "a_nohash_0.wav")
    ds = load_dataset(small_fsdd)
    assert ds.layout == "fsdd" and len(ds.clips) == 36
    [(where, problem)] = ds.skipped
    assert where == str(small_fsdd / "yes") and problem.startswith("1 audio file(s) in a folder")


def test_names_in_either_unicode_form_are_one_label_and_speaker(small_fsdd, tmp_path):
    """macOS writes folder and file names decomposed (NFD): "café" read from a folder was
    another word than "café" typed (NFC), so its clips silently counted as none of these."""
    import unicodedata

    nfd, nfc = unicodedata.normalize("NFD", "café"), "café"
    assert nfd != nfc
    folders = tmp_path / "folders"
    for digit, word, speaker in (("1", nfd, "zoe\u0308"), ("4", "tea", "zo\u00eb")):
        (folders / word).mkdir(parents=True)
        shutil.copy(small_fsdd / f"{digit}_theo_0.wav", folders / word / f"{speaker}_nohash_0.wav")
    ds = load_dataset(folders)
    assert ds.labels == [nfc, "tea"] and ds.speakers == ["zoë"]
    assert split_dataset(ds, [unicodedata.normalize("NFD", "zoë")]).test == ds.clips
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(small_fsdd / "1_theo_0.wav", flat / f"{nfd}_theo_0.wav")
    shutil.copy(small_fsdd / "4_theo_0.wav", flat / f"{nfc}_theo_1.wav")
    assert load_dataset(flat).labels == [nfc]
    (tmp_path / "m.csv").write_text(f"path,label\n{small_fsdd / '1_theo_0.wav'},{nfd}\n"
                                    f"{small_fsdd / '4_theo_0.wav'},{nfc}\n")
    assert load_dataset(tmp_path / "m.csv").labels == [nfc]


def test_broken_and_looping_symlinks_are_skipped_and_reported(small_fsdd, tmp_path):
    """A dangling link (a clip linked from a moved folder) or two links naming each other
    vanished from the clip list without a word; as in a word folder, they are reported."""
    (small_fsdd / "4_theo_8.wav").symlink_to(tmp_path / "moved" / "4_theo_8.wav")
    (small_fsdd / "7_theo_8.wav").symlink_to(small_fsdd / "7_theo_9.wav")
    (small_fsdd / "7_theo_9.wav").symlink_to(small_fsdd / "7_theo_8.wav")
    words = tmp_path / "words"
    shutil.copytree(small_fsdd, words / "yes", symlinks=True)
    shutil.copytree(small_fsdd, words / "no", ignore=shutil.ignore_patterns("*_theo_[89].wav"))
    for data, n in ((small_fsdd, 36), (words, 72)):
        _, kept, skipped = load_waves(load_dataset(data).clips, 16_000)
        assert len(kept) == n and sorted(Path(p).stem[-6:] for p, _ in skipped) == [
            "theo_8", "theo_8", "theo_9"]
        assert all(problem.startswith("a broken symbolic link") for _, problem in skipped)


def test_a_training_speaker_differing_from_a_test_speaker_in_case_is_reported(small_fsdd, caplog):
    """"Theo" trained while "theo" was held out: the test scored a voice it had heard, silently."""
    caplog.set_level("WARNING", logger="speechxfer")
    for p in sorted(small_fsdd.glob("*_theo_0.wav")):
        p.rename(p.with_name(p.name.replace("theo", "Theo")))
    ds = load_dataset(small_fsdd)
    split = split_dataset(ds, ["theo"])
    assert "Theo" in {c.speaker for c in split.train + split.validation}
    assert "differ only in case (theo / Theo)" in caplog.text
    caplog.clear()
    split_dataset(ds, ["jackson"])
    assert "differ only in case" not in caplog.text


def test_a_file_reached_twice_through_a_link_is_read_once(tmp_path):
    """A label folder linked to another (or a file linked under another name) made each clip
    train under both labels, and a test-listed clip train as its own copy."""
    fsdd = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
    src = sorted(fsdd.glob("*_jackson_*.wav"))[:2] + sorted(fsdd.glob("*_theo_*.wav"))[:2]
    for word, clips in (("one", src[:2]), ("two", src[2:])):
        (tmp_path / word).mkdir()
        for i, clip in enumerate(clips):
            shutil.copy(clip, tmp_path / word / f"ann_nohash_{i}.wav")
    (tmp_path / "uno").symlink_to(tmp_path / "one", target_is_directory=True)
    (tmp_path / "testing_list.txt").write_text("uno/ann_nohash_0.wav\n")
    ds = load_dataset(tmp_path)
    assert sorted(c.label for c in ds.clips) == ["one", "one", "two", "two"]
    assert all("uno" not in c.path.parts for c in ds.clips)
    linked = [problem for path, problem in ds.skipped if "uno" in Path(path).parts]
    assert len(linked) == 2 and all("read once, as one" in p for p in linked)
    # the test list named the clip through the link: the clip itself is a test clip
    assert ds.split[tmp_path / "one" / "ann_nohash_0.wav"] == "test"


def test_phone_recordings_are_reported_not_left_out(tmp_path):
    """Files soundfile cannot decode (.m4a, .webm, ...) were not listed at all: a word recorded
    on a phone vanished from training and eval without a word, and a folder of Ogg Opus (.opus,
    which soundfile reads) too. They are clips now: reading reports each with how to convert."""
    import soundfile as sf

    fsdd = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
    for word, digit in (("one", 1), ("two", 2), ("four", 4)):
        (tmp_path / word).mkdir()
    shutil.copy(fsdd / "1_theo_0.wav", tmp_path / "one" / "theo_nohash_0.wav")
    (tmp_path / "one" / "theo_nohash_1.webm").write_bytes(b"\x1a\x45\xdf\xa3 not decodable")
    (tmp_path / "two" / "theo_nohash_0.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A junk")
    samples, rate = sf.read(fsdd / "4_theo_0.wav", dtype="float32")
    sf.write(tmp_path / "four" / "theo_nohash_0.opus", samples, rate, format="OGG", subtype="OPUS")
    ds = load_dataset(tmp_path)
    assert ds.labels == ["four", "one", "two"] and len(ds.clips) == 4
    _, kept, skipped = load_waves(ds.clips, 16_000)
    assert sorted(c.label for c in kept) == ["four", "one"]
    assert sorted(Path(p).suffix for p, _ in skipped) == [".m4a", ".webm"]
    assert all("ffmpeg -i IN" in problem for _, problem in skipped)


def test_videos_beside_fsdd_names_are_reported_not_offenders_or_labels(small_fsdd):
    """Holiday videos in a folder of FSDD clips made the folder "misnamed", and
    screen_recording_1.mp4 a label "screen" whose clips all failed."""
    for name in [f"holiday{i}.mov" for i in range(40)] + ["screen_recording_1.mp4"]:
        (small_fsdd / name).write_bytes(b"\x00\x00\x00\x14ftypqt  junk")
    ds = load_dataset(small_fsdd)
    assert ds.layout == "fsdd" and "screen" not in ds.labels and ds.clips
    assert len(ds.skipped) == 41 and all("ffmpeg -i IN" in why for _, why in ds.skipped)


def test_macos_and_windows_litter_is_no_clip_label_or_offender(small_fsdd, tmp_path):
    """macOS writes an AppleDouble ``._NAME.wav`` (no audio) beside each file it copies to a
    USB stick or share: each was a clip reported unreadable, and in a flat folder with one
    misnamed recording they outnumbered the good names and the folder was refused."""
    double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(4000)
    for p in sorted(small_fsdd.glob("*.wav")):
        (small_fsdd / f"._{p.name}").write_bytes(double)
    shutil.copy(small_fsdd / "1_theo_0.wav", small_fsdd / "Recording 1.wav")
    for name in (".DS_Store", "Thumbs.db", "desktop.ini"):
        (small_fsdd / name).write_bytes(bytes(64))
    ds = load_dataset(small_fsdd)
    assert ds.layout == "fsdd" and len(ds.clips) == 36
    assert [Path(p).name for p, _ in ds.skipped] == ["Recording 1.wav"]
    root = tmp_path / "words"
    for word in ("one", "four"):
        (root / word).mkdir(parents=True)
        shutil.copy(small_fsdd / f"{1 if word == 'one' else 4}_theo_0.wav",
                    root / word / "theo_nohash_0.wav")
        (root / word / "._theo_nohash_0.wav").write_bytes(double)
        (root / "__MACOSX" / word).mkdir(parents=True)
        (root / "__MACOSX" / word / "._theo_nohash_0.wav").write_bytes(double)
    (root / ".git").mkdir()
    (root / ".git" / "x.wav").write_bytes(double)
    ds = load_dataset(root)
    assert ds.labels == ["four", "one"] and len(ds.clips) == 2 and not ds.skipped


def test_a_manifest_written_on_windows_finds_its_clips(small_fsdd, tmp_path):
    """``clips\\1_theo_0.wav`` (a BOM, CRLF, backslashes: a spreadsheet on Windows) named no
    file on Linux or macOS: every clip was "file not found" and training stopped."""
    shutil.copytree(small_fsdd, tmp_path / "clips")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label,speaker\r\nclips\\1_theo_0.wav,1,theo\r\n"
                         "clips\\4_theo_0.wav,4,theo\r\n".encode("utf-8-sig"))
    clips = load_dataset(manifest).clips
    assert [c.path for c in clips] == [tmp_path / "clips" / "1_theo_0.wav",
                                      tmp_path / "clips" / "4_theo_0.wav"]
    assert len(load_waves(clips, 16_000)[1]) == 2


def test_a_folder_that_cannot_be_listed_is_reported_not_a_traceback(small_fsdd, tmp_path,
                                                                     monkeypatch):
    """``lost+found`` at the root of a disk is root's alone: listing it stopped every command
    on such a disk with a PermissionError traceback (simulated: the tests may run as root)."""
    root = tmp_path / "disk"
    for word in ("one", "four"):
        (root / word).mkdir(parents=True)
        shutil.copy(small_fsdd / f"{1 if word == 'one' else 4}_theo_0.wav",
                    root / word / "theo_nohash_0.wav")
    (root / "lost+found").mkdir()
    iterdir = Path.iterdir

    def denied(self):
        if self.name == "lost+found":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    ds = load_dataset(root)
    assert ds.labels == ["four", "one"]
    assert ds.skipped == [(str(root / "lost+found"),
                           "cannot be listed (Permission denied): not read")]
