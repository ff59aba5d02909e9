"""Dataset layouts, speaker-disjoint splits and per-class sampling.

Three layouts are detected automatically:
- a CSV or JSONL manifest (``path,label[,speaker]`` plus any further label columns), given as
  the file itself or as ``manifest.csv`` / ``manifest.jsonl`` inside a folder;
- a folder per label (Google Speech Commands), honouring ``validation_list.txt`` and
  ``testing_list.txt``; the speaker is the part of the file name before ``_nohash_``;
- flat FSDD-style names ``{label}_{speaker}_{take}.wav`` (in the folder or its ``recordings/``).
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .audio import AUDIO_SUFFIXES, AudioError, Clip, load

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
FSDD_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>[^_]+)_(?P<take>\d+)$")
SPEECH_COMMANDS_SPEAKER = re.compile(r"^(?P<speaker>[^_]+)_nohash_")
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
RESERVED_COLUMNS = ("path", "speaker", "split")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the path and the problem."""


@dataclass
class Dataset:
    """Clips plus where they came from; ``split`` maps a clip path to a split named by the data."""

    clips: list[Clip]
    root: Path
    layout: str
    split: dict[Path, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.clips if c.label is not None})

    @property
    def speakers(self) -> list[str]:
        return sorted({c.speaker for c in self.clips if c.speaker is not None})


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


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
    label_dirs = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(("_", "."))]
    flat_root = path / "recordings" if (path / "recordings").is_dir() else path
    flat = _audio_files(flat_root)
    if flat and all(FSDD_NAME.match(p.stem) for p in flat):
        return _from_fsdd(flat_root, flat)
    if label_dirs and any(_audio_files(d) for d in label_dirs):
        return _from_label_folders(path, label_dirs)
    if flat:
        bad = next(p for p in flat if not FSDD_NAME.match(p.stem))
        raise DatasetError(
            f"{path}: flat audio files must be named {{label}}_{{speaker}}_{{take}} "
            f"(first offender: {bad.name}); or use a folder per label or a manifest"
        )
    raise DatasetError(f"{path}: no audio files, label folders or manifest found")


def _from_fsdd(root: Path, files: list[Path]) -> Dataset:
    clips = []
    for p in files:
        m = FSDD_NAME.match(p.stem)
        clips.append(Clip(p, {"command": m["label"], "speaker": m["speaker"]}, m["speaker"]))
    return Dataset(clips, root, "fsdd")


def _from_label_folders(root: Path, label_dirs: list[Path]) -> Dataset:
    clips = []
    for d in label_dirs:
        for p in _audio_files(d):
            m = SPEECH_COMMANDS_SPEAKER.match(p.name)
            speaker = m["speaker"] if m else None
            labels = {"command": d.name} | ({"speaker": speaker} if speaker else {})
            clips.append(Clip(p, labels, speaker))
    split = {}
    for name, list_file in SPLIT_LISTS.items():
        if (root / list_file).is_file():
            for line in (root / list_file).read_text().splitlines():
                if line.strip():
                    split[root / line.strip()] = name
    return Dataset(clips, root, "folders", split)


def _read_manifest_rows(manifest: Path) -> list[dict[str, str]]:
    try:
        if manifest.suffix.lower() == ".jsonl":
            text = manifest.read_text().splitlines()
            return [json.loads(line) for line in text if line.strip()]
        with manifest.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise DatasetError(f"{manifest}: unreadable manifest ({err})") from None


def _from_manifest(manifest: Path) -> Dataset:
    """Every column but path/speaker/split is a task label; empty cells mean 'unknown'."""
    rows = _read_manifest_rows(manifest)
    if not rows:
        raise DatasetError(f"{manifest}: manifest has no rows")
    if "path" not in rows[0]:
        raise DatasetError(f"{manifest}: manifest needs a 'path' column, has {sorted(rows[0])}")
    clips, split = [], {}
    for row in rows:
        p = Path(str(row["path"]))
        p = p if p.is_absolute() else manifest.parent / p
        labels = {
            ("command" if k == "label" else k): str(v)
            for k, v in row.items()
            if k not in RESERVED_COLUMNS and v not in (None, "")
        }
        speaker = str(row["speaker"]) if row.get("speaker") not in (None, "") else None
        if speaker is not None:
            labels.setdefault("speaker", speaker)
        clips.append(Clip(p, labels, speaker))
        if row.get("split"):
            split[p] = str(row["split"])
    return Dataset(clips, manifest.parent, "manifest", split)


def per_class(clips: list[Clip], n: int, seed: int = 0) -> list[Clip]:
    """Keep ``n`` clips per label per speaker, chosen by ``seed`` (few-shot training sets)."""
    groups: dict[tuple, list[Clip]] = defaultdict(list)
    for c in clips:
        groups[(c.label, c.speaker)].append(c)
    rng = random.Random(seed)
    kept = []
    for key in sorted(groups, key=str):
        group = sorted(groups[key], key=lambda c: str(c.path))
        kept += rng.sample(group, min(n, len(group)))
    return kept


@dataclass
class Split:
    train: list[Clip]
    validation: list[Clip]
    test: list[Clip]


def split_dataset(
    data: Dataset,
    test_speakers: list[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Speaker-disjoint test split; validation is drawn from the training speakers.

    ``test_speakers=None`` uses the data's own split lists when it has them, otherwise puts every
    clip in training. Validation clips come from the training speakers (stratified by label and
    speaker) so a test speaker never steers early stopping.
    """
    if test_speakers:
        unknown = sorted(set(test_speakers) - set(data.speakers))
        if unknown:
            raise DatasetError(f"{data.root}: unknown test speaker(s) {unknown}; known: {data.speakers}")
        test = [c for c in data.clips if c.speaker in test_speakers]
        rest = [c for c in data.clips if c.speaker not in test_speakers]
    else:
        test = [c for c in data.clips if data.split.get(c.path) == "test"]
        rest = [c for c in data.clips if data.split.get(c.path) != "test"]
    given_val = [c for c in rest if data.split.get(c.path) == "validation"]
    if given_val and not test_speakers:
        train = [c for c in rest if data.split.get(c.path) != "validation"]
        return Split(train, given_val, test)
    groups: dict[tuple, list[Clip]] = defaultdict(list)
    for c in rest:
        groups[(c.label, c.speaker)].append(c)
    rng = random.Random(seed)
    train, val = [], []
    for key in sorted(groups, key=str):
        group = sorted(groups[key], key=lambda c: str(c.path))
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction) if len(group) > 2 else 0
        val += group[:n_val]
        train += group[n_val:]
    return Split(train, val, test)


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
