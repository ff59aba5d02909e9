from collections import Counter
from pathlib import Path

import pytest

from speechxfer.audio import load
from speechxfer.data import DatasetError, load_dataset, split_dataset
from speechxfer.vocab import (
    SILENCE,
    UNKNOWN,
    apply_commands,
    load_with_silence,
    map_for_model,
    negatives,
    parse_commands,
    shots,
    with_silence,
    written_otherwise,
)

SPEECH_COMMANDS = Path(__file__).resolve().parents[1] / "data" / "speech_commands"
TEN = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


@pytest.fixture(scope="module")
def commands():
    return apply_commands(load_with_silence(SPEECH_COMMANDS), TEN)


def test_silence_clips_are_read_with_pseudo_speakers():
    plain = load_dataset(SPEECH_COMMANDS)
    data = load_with_silence(SPEECH_COMMANDS)
    silent = [c for c in data.clips if c.label == SILENCE]
    assert SILENCE not in plain.labels and len(silent) == 204
    assert data.speakers == plain.speakers  # no fake speaker to hold out by name
    assert all(c.speaker in plain.speakers and "speaker" not in c.labels for c in silent)
    # spread round-robin: no speaker carries more than its share
    assert max(Counter(c.speaker for c in silent).values()) == -(-204 // len(plain.speakers))
    assert float(load(silent[0].path).abs().max()) > 0  # readable as audio, not rejected
    assert len(with_silence(data).clips) == len(data.clips)  # never added twice


def test_twelve_class_mapping(commands):
    counts = Counter(c.label for c in commands.clips)
    assert set(counts) == set(TEN) | {UNKNOWN, SILENCE}
    assert counts[UNKNOWN] == 87 + 55 and counts[SILENCE] == 204
    assert sum(counts[w] for w in TEN) == 1307
    by_path = {c.path: c.label for c in commands.clips}
    assert by_path[next((SPEECH_COMMANDS / "marvin").iterdir())] == UNKNOWN
    assert by_path[next((SPEECH_COMMANDS / "yes").iterdir())] == "yes"


def test_bad_command_lists_are_refused():
    data = load_with_silence(SPEECH_COMMANDS)
    with pytest.raises(DatasetError, match="yse"):
        apply_commands(data, ["yes", "yse"])
    with pytest.raises(DatasetError, match="no command"):
        apply_commands(data, [])
    with pytest.raises(DatasetError, match="_unknown_"):
        apply_commands(data, ["yes", UNKNOWN])
    assert parse_commands(" yes,no ,up") == ["yes", "no", "up"]
    for bad in ("yes,,no", "yes,yes", "yes,_silence_"):
        with pytest.raises(ValueError):
            parse_commands(bad)


def test_speaker_split_spreads_silence_deterministically(commands):
    held_out = commands.speakers[::5]
    first = split_dataset(commands, test_speakers=held_out)
    again = split_dataset(commands, test_speakers=held_out)
    assert [c.path for c in first.test] == [c.path for c in again.test]
    test_sil = [c for c in first.test if c.label == SILENCE]
    train_sil = [c for c in first.train + first.validation if c.label == SILENCE]
    share = len(held_out) / len(commands.speakers)
    assert abs(len(test_sil) - share * 204) <= 3 and len(train_sil) == 204 - len(test_sil)
    assert not {c.speaker for c in first.test} & {c.speaker for c in first.train}


def test_shots_round_robin_over_speakers(commands):
    few = shots(commands.clips, 10, seed=1)
    for word in TEN:
        picked = [c for c in few if c.label == word]
        assert len(picked) == 10 and len({c.speaker for c in picked}) == 10
    kept = Counter(c.label for c in few)
    assert kept[UNKNOWN] == 142 and kept[SILENCE] == 204  # kept as given
    assert [c.path for c in few] == [c.path for c in shots(commands.clips, 10, seed=1)]
    assert {c.path for c in shots(commands.clips, 3, seed=1)} <= {c.path for c in few}
    assert {c.path for c in shots(commands.clips, 10, seed=2)} != {c.path for c in few}
    everything = shots(commands.clips, 10_000)
    assert len(everything) == len(commands.clips)
    with pytest.raises(ValueError):
        shots(commands.clips, 0)


def test_eval_mapping_for_a_model(commands):
    data = load_with_silence(SPEECH_COMMANDS)
    mapped = map_for_model(data, ["go", "stop", UNKNOWN, SILENCE])
    counts = Counter(c.label for c in mapped.clips)
    assert set(counts) == {"go", "stop", UNKNOWN, SILENCE} and counts[SILENCE] == 204
    assert counts[UNKNOWN] == len(data.clips) - 204 - counts["go"] - counts["stop"]


def test_silence_only_folder(tmp_path):
    (tmp_path / SILENCE).mkdir()
    clip = next((SPEECH_COMMANDS / SILENCE).iterdir())
    (tmp_path / SILENCE / clip.name).write_bytes(clip.read_bytes())
    data = load_with_silence(tmp_path)
    assert [c.label for c in data.clips] == [SILENCE] and data.clips[0].speaker is None
    with pytest.raises(DatasetError):
        load_with_silence(tmp_path / "missing")


def test_negatives_that_hold_the_runs_own_clips_are_refused(small_fsdd, tmp_path):
    """Linked under other names (no held-out speaker to catch them), the run's own clips would
    train as "none of these", a test clip among them: refused, naming the set and a clip."""
    links = tmp_path / "links"
    links.mkdir()
    for i, p in enumerate(sorted(small_fsdd.glob("*_theo_*.wav"))):
        (links / f"word_anon_{i}.wav").symlink_to(p)
    own = [c.path for c in load_dataset(small_fsdd).clips]
    assert len(negatives(links, ["1"], ["theo"])) == 12  # the speaker check cannot see them
    with pytest.raises(DatasetError, match=r"links: negatives hold 12 clip\(s\) of the training "
                                           r"data itself \(first: .*word_anon_0\.wav\)"):
        negatives(links, ["1"], ["theo"], own)


def test_a_command_typed_in_another_unicode_form_than_its_folder_is_that_word(small_fsdd, tmp_path):
    """A macOS folder "café" (NFD) and --commands café (NFC): the clips trained and scored as
    _unknown_, or the command "had no clips"."""
    import shutil
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")
    root = tmp_path / "sc"
    for digit, word in (("1", nfd), ("4", "tea"), ("7", "dog")):
        (root / word).mkdir(parents=True)
        for take in range(2):
            shutil.copy(small_fsdd / f"{digit}_theo_{take}.wav",
                        root / word / f"theo_nohash_{take}.wav")
    data = load_dataset(root)
    assert parse_commands(f"{nfd},tea") == ["café", "tea"]
    with pytest.raises(ValueError, match="repeated"):
        parse_commands(f"café,{nfd}")
    counts = Counter(c.label for c in apply_commands(data, [nfd, "tea"]).clips)
    assert counts == {"café": 2, "tea": 2, UNKNOWN: 2}
    mapped = Counter(c.label for c in map_for_model(data, ["café", "tea", UNKNOWN]).clips)
    assert mapped == {"café": 2, "tea": 2, UNKNOWN: 2}
    # a model saved with a decomposed name: its command, written otherwise (eval warns)
    assert written_otherwise("café", [nfd]) == nfd


def test_broken_and_looping_silence_links_are_listed_and_reported(small_fsdd, tmp_path):
    """Listing only files, ``_silence_/`` dropped a dangling link, or two links naming each
    other, without a word: now read and reported as skipped, as in a word folder; and a looping
    link among the run's clips no longer crashes --negatives (Path.resolve raised)."""
    from speechxfer.data import load_waves

    silence = small_fsdd / SILENCE
    silence.mkdir()
    (silence / "hum.wav").write_bytes((small_fsdd / "1_theo_0.wav").read_bytes())
    (silence / "gone.wav").symlink_to(tmp_path / "moved.wav")
    (silence / "a.wav").symlink_to(silence / "b.wav")
    (silence / "b.wav").symlink_to(silence / "a.wav")
    data = load_with_silence(small_fsdd)
    quiet = [c for c in data.clips if c.label == SILENCE]
    assert sorted(c.path.name for c in quiet) == ["a.wav", "b.wav", "gone.wav", "hum.wav"]
    _, kept, skipped = load_waves(quiet, 16_000)
    assert [c.path.name for c in kept] == ["hum.wav"]
    assert sorted(Path(p).name for p, _ in skipped) == ["a.wav", "b.wav", "gone.wav"]
    assert all(problem.startswith("a broken symbolic link") for _, problem in skipped)
    other = tmp_path / "other"
    other.mkdir()
    (other / "9_ann_0.wav").write_bytes((small_fsdd / "1_theo_1.wav").read_bytes())
    assert len(negatives(other, ["1"], [], [c.path for c in data.clips])) == 1
