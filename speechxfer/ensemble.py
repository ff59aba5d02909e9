"""An ensemble: saved systems over the same labels, answering with the normalised geometric
mean of their probabilities (a product of experts, p ∝ (p_1 · ... · p_n)^(1/n)).

Why: systems on different encoders (whisper-tiny.en and whisper-base) take different other
words for commands, and the product keeps a command only where all of them find it likely; on
streams of speakers held out of training it kept more recall than a threshold on either system
alone at the same false-accept rate (README "Measured (issue 10)"). Its threshold can be given
(``speechxfer ensemble --threshold``): the bar a stream of held-out speakers calibrated, which
the training job's clip-level calibration cannot set. The members are copied whole into the
ensemble's folder (a combined system keeps its fast path), so it reopens on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .decoder.combined import FAST_FOLDER
from .heads import check_real
from .recognizer import (
    ModelError,
    Recognizer,
    check_kind,
    info_from,
    is_model_folder,
    load,
    read_config,
    softmax,
    sub_folder,
)
from .store import StoreError, atomic_folder, digest_files, is_model_file

KIND = "ensemble"
MEMBER_FOLDER = "member{}"  # the i-th member's folder inside the ensemble's


def system_digest(folder: Path) -> str:
    """A digest of what a saved system answers with: its config.json and safetensors files (not
    its exported graphs or reports), so a copy of a folder has the same digest as the folder."""
    digest = hashlib.sha256()
    digest_files(digest, ((path.relative_to(folder).as_posix(), path)
                          for path in sorted(folder.rglob("*"))
                          if path.is_file() and is_model_file(path)
                          and FAST_FOLDER not in path.relative_to(folder).parts[:-1]))
    return digest.hexdigest()


def exported_from(config: dict) -> str | None:
    """The ``system_digest`` of the system an ONNX export was made from (its config's
    ``source``, as only ``export.export_folder`` writes it); None for any other system, or for
    an export made before exports recorded it (such an export cannot be told from a system of
    its own)."""
    source = config.get("source")
    digest = source.get("digest") if isinstance(source, dict) else None
    return digest if isinstance(digest, str) else None


# how a folder relates to an earlier one of the same digest: (the folder's digest is the
# system it was exported from, the earlier one's is)
RELATIONS = {(False, False): "the same system as", (True, False): "an export of",
             (False, True): "the system exported to",
             (True, True): "exported from the same system as"}


def _check_distinct(leaves: list[tuple[int, Path]]) -> None:
    """A ModelError naming both folders where two of the single systems ``(member, folder)``
    are one: a copy, a system and its ONNX export, two exports of one system. Each would count
    that system twice in the product, its answers silently outweighing the other members'."""
    first: dict[str, tuple[int, Path, bool]] = {}
    for i, leaf in leaves:
        records = [(system_digest(leaf), False)]
        if origin := exported_from(read_config(leaf)):
            records.append((origin, True))
        for digest, exported in records:
            j, seen, was_exported = first.setdefault(digest, (i, leaf, exported))
            if (j, seen) != (i, leaf):
                raise ModelError(f"{leaf}: {RELATIONS[exported, was_exported]} {seen} (members "
                                 f"{j} and {i}); an ensemble needs different systems")


def folder_stamp(folder: Path) -> list[tuple[str, int, int, int]]:
    """Every file under ``folder`` by name, size, inode and modification time: no file is read,
    and a folder retrained, replaced or restored from a copy changes it."""
    stamp = []
    for path in folder.rglob("*"):
        if path.is_file():
            s = path.stat()
            stamp.append((path.relative_to(folder).as_posix(), s.st_size, s.st_ino, s.st_mtime_ns))
    return sorted(stamp)


def _systems(system: Recognizer, folder: Path) -> list[Path]:
    """The folders of the single systems in ``system`` (an ensemble's members', nested ones
    opened up)."""
    if isinstance(system, EnsembleRecognizer) and None not in system.sources:
        return [f for m, s in zip(system.members, system.sources) for f in _systems(m, s)]
    return [folder]


class EnsembleRecognizer(Recognizer):
    """Systems with the same labels (in any order) and sample rate; ``threshold``: the open-set
    bar (None: the strictest of the members')."""

    model_kind = KIND

    def __init__(self, members: list[Recognizer], threshold: float | None = None):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two systems, got {len(members)}")
        self.members = list(members)
        self.labels = list(members[0].labels)
        self.sample_rate = members[0].sample_rate
        for i, m in enumerate(members[1:], 1):
            if sorted(m.labels) != sorted(self.labels):
                raise ValueError(f"member {i} has labels {m.labels}, member 0 {self.labels}")
            if m.sample_rate != self.sample_rate:
                raise ValueError(f"member {i} runs at {m.sample_rate} Hz, member 0 at "
                                 f"{self.sample_rate} Hz")
        self.orders = [[m.labels.index(lab) for lab in self.labels] for m in members]
        if threshold is not None:  # else save would write a folder that load refuses
            threshold = check_real("threshold", threshold, 0.0, 1.0)
        bars = [m.threshold for m in members if m.threshold is not None]
        self.threshold = threshold if threshold is not None else max(bars, default=None)
        self.info: dict = {}
        self.sources = [None] * len(members)

    @property
    def sources(self) -> list[Path | None]:
        """The members' folders, copied on save (None: the member saves itself)."""
        return self._sources

    @sources.setter
    def sources(self, folders: list[Path | None]) -> None:
        # stamped as given: save copies the folders later, which must still hold these members
        self._sources = list(folders)
        self._stamps = [None if f is None else folder_stamp(f) for f in self._sources]

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        logs = [np.log(np.clip(m.predict_proba(waves)[:, order], 1e-12, None))
                for m, order in zip(self.members, self.orders)]
        return softmax(np.mean(logs, axis=0))

    def config(self) -> dict:
        return {**self.config_header(), "labels": self.labels, "sample_rate": self.sample_rate,
                "members": [MEMBER_FOLDER.format(i) for i in range(len(self.members))],
                **self.rejection_config(), **self.info}

    def save(self, directory: str | Path) -> Path:
        """config.json and each member in member0/, member1/, ... (a member loaded from a
        folder is copied from it whole, so exported fast paths travel along)."""
        directory = Path(directory)
        for i, source in enumerate(self.sources):  # a copy into its own source never ends
            # realpath: a link loop above ``directory`` is the save's clear error, no traceback
            if source is not None and Path(os.path.realpath(directory)).is_relative_to(
                    source.resolve()):
                raise StoreError(f"{directory}: is or lies inside member {i}'s folder {source}; "
                                 "save the ensemble outside its members")
            if source is not None and folder_stamp(source) != self._stamps[i]:
                raise StoreError(f"{source}: member {i}'s folder changed after the ensemble was "
                                 "built from it, so its copy would not be the system in memory; "
                                 "build or load the ensemble again")
        with atomic_folder(directory, is_model_folder) as folder:
            for i, (member, source) in enumerate(zip(self.members, self.sources)):
                target = folder / MEMBER_FOLDER.format(i)
                if source is not None:
                    shutil.copytree(source, target)
                else:
                    member.save(target)
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
        self.sources = self.sources  # saved over its own folder: its members are now the copies
        return directory

    @classmethod
    def of_folders(cls, folders: list[str | Path], threshold: float | None = None,
                   device: str | torch.device = "cpu") -> EnsembleRecognizer:
        """The ensemble of saved systems (their folders are copied whole on ``save``)."""
        seen = [Path(f).resolve() for f in folders]
        for i, folder in enumerate(seen):
            if folder in seen[:i]:  # the product of a system with itself is that system
                raise ModelError(f"{folders[i]}: given twice (members {seen.index(folder)} and "
                                 f"{i}); an ensemble needs different systems")
        members = [load(f, device) for f in folders]
        try:
            system = cls(members, threshold)
        except ValueError as err:
            raise ModelError(f"{', '.join(map(str, folders))}: {err}") from None
        system.sources = [Path(f) for f in folders]
        # a copy of a folder, a system inside an ensemble given beside it, or a system's export
        _check_distinct([(i, leaf) for i, (member, source) in enumerate(zip(members, folders))
                         for leaf in _systems(member, Path(source))])
        return system

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu") -> EnsembleRecognizer:
        check_kind(directory, config, KIND)
        names = config.get("members")
        if not isinstance(names, list) or len(names) < 2:
            raise ModelError(f"{directory}: 'members' must list at least two member folders, "
                             f"got {names!r:.60}")
        folders = [sub_folder(directory, {"member": n}, "member") for n in names]
        twice = sorted({n for i, n in enumerate(names) if folders[i] in folders[:i]})
        if twice:  # the product of a system with itself is that system, counted twice
            raise ModelError(f"{directory / 'config.json'}: 'members' names {twice} twice")
        members = [load(f, device) for f in folders]
        try:
            system = cls(members)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        if config.get("labels", system.labels) != system.labels:
            raise ModelError(f"{directory}: labels {config['labels']!r:.60} differ from the "
                             f"first member's {system.labels}")
        system.threshold = None
        system.load_rejection(config, directory)
        system.info = info_from(config)
        system.sources = folders
        return system
