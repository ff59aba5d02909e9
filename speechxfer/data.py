"""Dataset layouts, speaker-disjoint splits and per-class sampling.

Three layouts are detected automatically:
- a CSV or JSONL manifest (``path,label[,speaker]`` plus any further label columns), given as
  the file itself or as ``manifest.csv`` / ``manifest.jsonl`` inside a folder;
- a folder per label (Google Speech Commands), honouring ``validation_list.txt`` and
  ``testing_list.txt``; the speaker is the part of the file name before ``_nohash_``;
- flat FSDD-style names ``{label}_{speaker}_{take}.wav`` (in the folder or its ``recordings/``);
  when at least half the files are so named, the others are skipped and listed in
  ``Dataset.skipped`` rather than turning the folder into some other layout.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .audio import AudioError, Clip, audio_files, is_audio_name, load, undecodable
from .log import LOGGER

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
# not Speech Commands' {speaker}_nohash_{n}: read so, a speaker hash would become the label
FSDD_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>(?!nohash_)[^_]+)_(?P<take>\d+)$")
SPEECH_COMMANDS_SPEAKER = re.compile(r"^(?P<speaker>[^_]+)_nohash_")
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", *SPLIT_LISTS)  # the values of a manifest's split column
# the one "_" folder that holds words ("none of these", as synth writes it); other "_" folders
# hold noise (``_background_noise_``, ``_silence_``: see ``vocab``)
UNKNOWN_DIR = "_unknown_"
RESERVED_COLUMNS = ("path", "speaker", "split")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the path and the problem."""


def nfc(text: str) -> str:
    """``text`` in Unicode's composed form (NFC), as names are compared everywhere: macOS writes
    folder and file names decomposed (NFD), so a folder "café" and the word "café" typed in
    --commands would otherwise be two words. Paths are never folded: files are found as named."""
    return unicodedata.normalize("NFC", text)


@dataclass
class Dataset:
    """Clips plus where they came from; ``split`` maps a clip path to a split named by the data.

    ``skipped`` lists files the layout could not use, as (path, problem), for the job's report.
    """

    clips: list[Clip]
    root: Path
    layout: str
    split: dict[Path, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    manifest: Path | None = None  # the manifest file read, when the data is one

    @property
    def location(self) -> Path:
        """What ``load_dataset`` reads again to get these clips: the manifest file itself, or
        the folder (a manifest's ``root`` is its folder, which may hold other manifests)."""
        return self.manifest or self.root

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.clips if c.label is not None})

    @property
    def speakers(self) -> list[str]:
        return sorted({c.speaker for c in self.clips if c.speaker is not None})


def load_dataset(path: str | Path) -> Dataset:
    """Find the layout of ``path`` and list its clips (audio is read later, by ``load_waves``)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".jsonl"):
            return _from_manifest(path)
        raise DatasetError(f"{path}: a dataset is a folder or a .csv/.jsonl manifest")
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return _from_manifest(path / name)
    flat_root = path / "recordings" if (path / "recordings").is_dir() else path
    flat = audio_files(flat_root)
    # a video or phone recording beside FSDD names is reported, not taken for a misnamed clip
    bad = [p for p in flat if not FSDD_NAME.match(p.stem) and not undecodable(p)]
    unlisted: list[tuple[str, str]] = []
    label_dirs = [d for d in sorted(path.iterdir()) if d.is_dir() and d != flat_root
                  and (d.name == UNKNOWN_DIR or not d.name.startswith(("_", ".")))
                  and _listed(d, unlisted)]
    if flat and (not bad or (not label_dirs and 2 * len(bad) <= len(flat))):
        data = _from_fsdd(flat_root, flat)
        data.skipped += unlisted
        for d in label_dirs:
            problem = (f"{len(audio_files(d))} audio file(s) in a folder beside "
                       "{label}_{speaker}_{take} files, not read: one layout a dataset")
            data.skipped.append((str(d), problem))
        return data
    if label_dirs:
        data = _from_label_folders(path, label_dirs)
        data.skipped += unlisted
        return data
    if flat:
        hint = ("Speech Commands names ({speaker}_nohash_{n}) carry no label: give the folder "
                "that holds a folder per word" if SPEECH_COMMANDS_SPEAKER.match(bad[0].name)
                else "or use a folder per label or a manifest")
        raise DatasetError(
            f"{path}: flat audio files must be named {{label}}_{{speaker}}_{{take}} "
            f"({len(bad)} of {len(flat)} are not; first offender: {bad[0].name}); {hint}"
        )
    deeper = next((p for depth in ("*/*/*", "*/*/*/*") for p in path.glob(depth)  # not all of ~
                   if is_audio_name(p)), None)
    hint = (f" (audio only deeper down, e.g. {deeper.relative_to(path)}: a label folder holds "
            "its clips directly, or list them in a manifest)") if deeper else ""
    raise DatasetError(f"{path}: no audio files, label folders or manifest found{hint}")


def _listed(folder: Path, unlisted: list[tuple[str, str]]) -> list[Path]:
    """``audio_files(folder)``, or none when the folder cannot be listed (``lost+found`` at the
    root of a disk is root's alone): it is added to ``unlisted``, reported, not a traceback."""
    try:
        return audio_files(folder)
    except OSError as err:
        unlisted.append((str(folder), f"cannot be listed ({err.strerror or err}): not read"))
        return []


def _each_file_once(clips: list[Clip], skipped: list, split: dict | None = None) -> list[Clip]:
    """``clips`` with each file once: one reached again through a symbolic link (a label folder
    linked to another, a file linked under another name) would train under both labels, or
    train as the copy of a test clip. The clip not reached through a link is kept (else the
    first); the others are added to ``skipped``, and a split list naming one of them puts the
    kept clip in that split (the test before validation). Manifests refuse a file listed twice."""
    by_file: dict[str, list[Clip]] = {}
    for c in clips:
        by_file.setdefault(os.path.realpath(c.path), []).append(c)
    kept = set()
    for real, group in by_file.items():
        keep = next((c for c in group if os.path.abspath(c.path) == real), group[0])
        kept.add(id(keep))
        why = f"the same file as {keep.path} (a symbolic link): read once, as {keep.label}"
        skipped += [(str(c.path), why) for c in group if c is not keep]
        named = {split[c.path] for c in group if split is not None and c.path in split}
        if named:
            split[keep.path] = min(named, key=list(SPLIT_LISTS)[::-1].index)
    return [c for c in clips if id(c) in kept]


def _from_fsdd(root: Path, files: list[Path]) -> Dataset:
    clips, skipped = [], []
    for p in files:
        if hint := undecodable(p):  # screen_recording_1.mp4 would be a label "screen"
            skipped.append((str(p), hint))
        elif m := FSDD_NAME.match(p.stem):
            label, speaker = nfc(m["label"]), nfc(m["speaker"])
            clips.append(Clip(p, {"command": label, "speaker": speaker}, speaker))
        else:
            skipped.append((str(p), "file name is not {label}_{speaker}_{take}"))
    return Dataset(_each_file_once(clips, skipped), root, "fsdd", skipped=skipped)


def _from_label_folders(root: Path, label_dirs: list[Path]) -> Dataset:
    """A clip's label is the folder it lies directly in. Files the layout cannot use are listed
    in ``skipped``: audio in a label folder's sub-folders (not read), and split-list lines that
    name no file (their clip, if it exists under another name, would silently train); a list
    none of whose lines names a file is a DatasetError."""
    clips, skipped = [], []
    for d in label_dirs:
        for p in audio_files(d):
            m = SPEECH_COMMANDS_SPEAKER.match(p.name)
            speaker = nfc(m["speaker"]) if m else None
            labels = {"command": nfc(d.name)} | ({"speaker": speaker} if speaker else {})
            clips.append(Clip(p, labels, speaker))
        for sub in sorted(e for e in d.iterdir() if e.is_dir() and not e.name.startswith(".")):
            if nested := sum(map(is_audio_name, sub.rglob("*"))):
                problem = (f"{nested} audio file(s) in a sub-folder of label folder {d.name!r}, "
                           "not read: a clip's label is the folder it lies directly in")
                skipped.append((str(sub), problem))
    split = {}
    for name, list_file in SPLIT_LISTS.items():
        if not (root / list_file).is_file():
            continue
        lines = [(n, line.strip().replace("\\", "/"))
                 for n, line in enumerate((root / list_file).read_text().splitlines(), 1)]
        lines = [(n, entry) for n, entry in lines if entry]
        missing = [(n, entry) for n, entry in lines if not (root / entry).is_file()]
        if missing and len(missing) == len(lines):
            raise DatasetError(f"{root / list_file}: none of its {len(lines)} line(s) names a "
                               f"file under {root} (line {missing[0][0]}: {missing[0][1]!r}); a "
                               "line is a path relative to that folder, e.g. yes/a_nohash_0.wav")
        if missing:  # one entry: a trimmed copy of Speech Commands keeps its whole lists
            problem = (f"{len(missing)} of {len(lines)} line(s) name no file under {root} (line "
                       f"{missing[0][0]}: {missing[0][1]!r}): no clip is in the {name} split by "
                       "them")
            skipped.append((str(root / list_file), problem))
        split |= {root / entry: name for _, entry in lines}
    return Dataset(_each_file_once(clips, skipped, split), root, "folders", split, skipped)


def _read_manifest_rows(manifest: Path) -> list[tuple[int, object]]:
    """(line number, row) pairs; UTF-8 with or without the byte-order mark spreadsheets write."""
    try:
        if manifest.suffix.lower() == ".jsonl":
            rows = []
            for n, line in enumerate(manifest.read_text(encoding="utf-8-sig").split("\n"), 1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise DatasetError(f"{manifest}: line {n}: not valid JSON ({err})") from None
            return rows
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            # "path, label, speaker": spaces after the commas are no part of the column names
            columns = reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
            if columns and "path" not in columns:
                raise DatasetError(f"{manifest}: manifest needs a 'path' column, has {columns}")
            if columns and not set(columns) - set(RESERVED_COLUMNS):
                raise DatasetError(f"{manifest}: no label column (has {columns}); add a 'label' "
                                   "column or a column per task")
            return [(reader.line_num, row) for row in reader]
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise DatasetError(f"{manifest}: unreadable manifest ({err})") from None


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
              float: "a number", bool: "a boolean", type(None): "null"}


def _row_values(manifest: Path, n: int, row: object) -> dict[str, str]:
    """A row's known values as strings (empty cells and nulls dropped), or a DatasetError."""
    where = f"{manifest}: line {n}"
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be an object with a 'path', "
                           f"not {JSON_TYPES.get(type(row), type(row).__name__)}")
    if None in row:  # csv.DictReader's key for cells past the header
        raise DatasetError(f"{where}: more cells than the header has columns")
    if not isinstance(row.get("path"), str) or not row["path"].strip():
        raise DatasetError(f"{where}: row has no 'path'")
    values = {}
    for k, v in row.items():
        if isinstance(v, (dict, list)):
            raise DatasetError(f"{where}: {k!r} must be a single value, not {JSON_TYPES[type(v)]}")
        # a label or speaker typed " 4" is "4", "café" in either Unicode form is one (else a
        # class or voice of its own); a path is taken as written
        text = "" if v is None else str(v) if k == "path" else nfc(str(v).strip())
        if text:
            values[k] = text
    return values


def _row_path(manifest: Path, written: str) -> Path:
    """A manifest row's file, relative to the manifest's folder unless absolute. A path written
    on Windows (``clips\\a.wav``) that names no file as written is read with ``/``, as the
    split lists are: else every clip of such a manifest was "file not found"."""
    def under(text: str) -> Path:
        return Path(text) if Path(text).is_absolute() else manifest.parent / text

    p = under(written)
    if "\\" in written and not p.exists() and (slashed := under(written.replace("\\", "/"))).exists():
        return slashed
    return p


def _from_manifest(manifest: Path) -> Dataset:
    """Every column but path/speaker/split is a task label; empty cells and nulls mean 'unknown'."""
    rows = _read_manifest_rows(manifest)
    if not rows:
        raise DatasetError(f"{manifest}: manifest has no rows")
    clips, split, lines = [], {}, {}
    for n, row in rows:
        values = _row_values(manifest, n, row)
        p = _row_path(manifest, values["path"])
        # a clip listed twice could train under one row and validate or test under the other
        if (same := lines.setdefault(os.path.realpath(p), n)) != n:  # a looping link: no error
            raise DatasetError(f"{manifest}: line {n}: {values['path']} is already listed on "
                               f"line {same}")
        if values.get("split", "train") not in SPLITS:  # a typo would silently train a test clip
            raise DatasetError(f"{manifest}: line {n}: split {values['split']!r} is not one of "
                               f"{', '.join(SPLITS)} (or empty)")
        labels = {("command" if k == "label" else k): v
                  for k, v in values.items() if k not in RESERVED_COLUMNS}
        speaker = values.get("speaker")
        if speaker is not None:
            labels.setdefault("speaker", speaker)
        clips.append(Clip(p, labels, speaker))
        if "split" in values:
            split[p] = values["split"]
    if not any(set(row) - set(RESERVED_COLUMNS) for _, row in rows):
        raise DatasetError(f"{manifest}: no row has a label (fields: path, speaker, split "
                           "and a 'label' or a field per task)")
    return Dataset(clips, manifest.parent, "manifest", split, manifest=manifest)


def readable(clip: Clip) -> bool:
    """True when ``load_waves`` would keep ``clip``."""
    try:
        load(clip.path)
    except AudioError:
        return False
    return True


def per_class(clips: list[Clip], n: int, seed: int = 0,
              check: Callable[[Clip], bool] | None = None) -> list[Clip]:
    """Keep ``n`` clips per label per speaker, chosen by ``seed`` (few-shot training sets).

    With ``check`` (``readable``), a drawn clip that fails it stays in (reading reports it as
    skipped) and another clip of its group is added, until ``n`` pass or the group is spent,
    so a bad draw does not leave the group short; replacements come in an order seeded by
    (``seed``, group), so where every drawn clip passes the choice is that without ``check``.
    """
    groups: dict[tuple, list[Clip]] = defaultdict(list)
    for c in clips:
        groups[(c.label, c.speaker)].append(c)
    rng = random.Random(seed)
    kept = []
    for key in sorted(groups, key=str):
        group = sorted(groups[key], key=lambda c: str(c.path))
        drawn = rng.sample(group, min(n, len(group)))
        kept += drawn
        good = sum(map(check, drawn)) if check else len(drawn)
        if good < len(drawn):
            spare = [c for c in group if all(c is not d for d in drawn)]
            random.Random(f"{seed}/{key}").shuffle(spare)
            for c in spare:
                if good == len(drawn):
                    break
                kept.append(c)
                good += check(c)
    return kept


# Validation by whole speakers from this many training speakers on, or when the typical
# (label, speaker) group holds at most SMALL_GROUP clips.
MANY_SPEAKERS = 10
SMALL_GROUP = 3


def validation_speakers(clips: list[Clip], groups: dict[tuple, list[Clip]], fraction: float,
                        seed: int) -> set[str]:
    """The training speakers held out whole for validation; empty for per-group validation.

    Whole speakers once there are many of them (validation then measures what the test does:
    people the model has not heard), or when groups are too small to split and ``fraction`` of
    the speakers is at least one of them; never all of them.
    """
    speakers = sorted({c.speaker for c in clips if c.speaker is not None})
    sizes = sorted(len(g) for g in groups.values())
    small = bool(sizes) and sizes[len(sizes) // 2] <= SMALL_GROUP
    n = min(len(speakers) - 1, round(len(speakers) * fraction))
    if n < 1 or not (len(speakers) >= MANY_SPEAKERS or small):
        return set()
    return set(random.Random(seed).sample(speakers, n))


@dataclass
class Split:
    train: list[Clip]
    validation: list[Clip]
    test: list[Clip]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # the dataset's unusable files


def split_dataset(
    data: Dataset,
    test_speakers: list[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Speaker-disjoint test split; validation is drawn from the training speakers.

    ``test_speakers=None`` uses the data's own split lists when it has them, otherwise puts every
    clip in training; a validation list holds with ``test_speakers`` too (less their clips).
    Clips the data marks ``train`` (a manifest's split column) only train: validation is drawn
    from the others (synthetic voices beside real ones: calibrate on the real).
    Validation clips come from the training speakers, so a test speaker never steers early
    stopping or calibration: with a few speakers who each recorded many takes (the bundled
    digits) a fraction of every (label, speaker) group; with many speakers, or groups of one to
    three clips (crowd-sourced Speech Commands, where a fraction of each group rounds to
    nothing), ``val_fraction`` of the speakers whole, chosen by ``seed`` (``validation_speakers``).
    """
    if test_speakers:
        test_speakers = [nfc(s) for s in test_speakers]
        unknown = sorted(set(test_speakers) - set(data.speakers))
        if unknown:
            raise DatasetError(f"{data.location}: unknown test speaker(s) {unknown}; "
                               f"known: {data.speakers}")
        test = [c for c in data.clips if c.speaker in test_speakers]
        rest = [c for c in data.clips if c.speaker not in test_speakers]
    else:
        test = [c for c in data.clips if data.split.get(c.path) == "test"]
        rest = [c for c in data.clips if data.split.get(c.path) != "test"]
        # the data's own test list is used as given, but a voice on both sides is no new voice
        # (``_silence_`` clips carry a pseudo-speaker, not a "speaker" label)
        both = sorted({c.speaker for c in test if "speaker" in c.labels}
                      & {c.speaker for c in rest if "speaker" in c.labels})
        if both:
            LOGGER.warning("%s: speaker(s) %s have clips in the test split and outside it: the "
                           "test scores voices that trained", data.location, both[:5])
    # "George" beside the test speaker "george" is another speaker to the data, the same voice
    # to the test
    heard = {c.speaker for c in rest if "speaker" in c.labels}
    near = sorted(f"{s} / {h}" for s in {c.speaker for c in test if "speaker" in c.labels}
                  for h in heard if s != h and s.casefold() == h.casefold())
    if near:
        LOGGER.warning("%s: test and training speakers differ only in case (%s): read as "
                       "different speakers, so the test may score voices that trained",
                       data.location, ", ".join(near[:5]))
    given_val = [c for c in rest if data.split.get(c.path) == "validation"]
    if given_val:  # the data's own validation list holds, less any test speaker's clips
        train = [c for c in rest if data.split.get(c.path) != "validation"]
        return Split(train, given_val, test, list(data.skipped))
    pinned = [c for c in rest if data.split.get(c.path) == "train"]  # the data says: train only
    rest = [c for c in rest if data.split.get(c.path) != "train"]
    groups: dict[tuple, list[Clip]] = defaultdict(list)
    for c in rest:
        groups[(c.label, c.speaker)].append(c)
    held = validation_speakers(rest, groups, val_fraction, seed)
    if held:
        return Split(pinned + [c for c in rest if c.speaker not in held],
                     [c for c in rest if c.speaker in held], test, list(data.skipped))
    rng = random.Random(seed)
    train, val = list(pinned), []
    for key in sorted(groups, key=str):
        group = sorted(groups[key], key=lambda c: str(c.path))
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction) if len(group) > 2 else 0
        val += group[:n_val]
        train += group[n_val:]
    return Split(train, val, test, list(data.skipped))


def load_waves(
    clips: list[Clip], sample_rate: int
) -> tuple[list[torch.Tensor], list[Clip], list[tuple[str, str]]]:
    """Read every clip; bad ones are skipped and returned as (path, problem) for the report."""
    waves, kept, skipped = [], [], []
    for c in clips:
        try:
            waves.append(load(c.path, sample_rate))
            kept.append(c)
        except AudioError as err:
            skipped.append((err.path, err.problem))
    return waves, kept, skipped
