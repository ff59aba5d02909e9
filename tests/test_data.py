import json
import shutil

import pytest

from speechxfer.data import DatasetError, load_dataset, load_waves, per_class, split_dataset


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
