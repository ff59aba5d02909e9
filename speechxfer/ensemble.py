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
        self.sources: list[Path | None] = [None] * len(members)  # folders to copy on save

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
            if source is not None and directory.resolve().is_relative_to(source.resolve()):
                raise StoreError(f"{directory}: is or lies inside member {i}'s folder {source}; "
                                 "save the ensemble outside its members")
        with atomic_folder(directory, is_model_folder) as folder:
            for i, (member, source) in enumerate(zip(self.members, self.sources)):
                target = folder / MEMBER_FOLDER.format(i)
                if source is not None:
                    shutil.copytree(source, target)
                else:
                    member.save(target)
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
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
        # a copy of a folder, or a system inside an ensemble given beside it, would count twice
        # in the product: its answers would silently outweigh the other members'
        first: dict[str, tuple[int, Path]] = {}
        for i, (member, source) in enumerate(zip(members, system.sources)):
            for leaf in _systems(member, source):
                j, seen = first.setdefault(system_digest(leaf), (i, leaf))
                if (j, seen) != (i, leaf):
                    raise ModelError(f"{leaf}: the same system as {seen} (members {j} and {i}); "
                                     "an ensemble needs different systems")
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
