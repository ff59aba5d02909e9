"""Command vocabularies: the listed words, ``_unknown_`` for every other word, ``_silence_``.

The twelve-class task of Speech Commands: a recogniser must also say "none of these" (a word it
was not asked to recognise) and "nothing" (noise with no word). ``_silence_`` clips are read from
the ``_silence_/`` folder that ``data.load_dataset`` skips; their "speaker" is not a person, so
each is attached to a real speaker of the dataset, round-robin, as a pseudo-speaker. Any
speaker-disjoint split then spreads them over train, validation and test in proportion, the same
way every time, and no fake speaker appears among the names ``--test-speaker`` accepts. They
carry no ``speaker`` label, so a speaker-identification task never learns noise as a person.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from .audio import Clip, audio_files
from .data import Dataset, DatasetError, load_dataset, nfc
from .log import LOGGER

UNKNOWN = "_unknown_"
SILENCE = "_silence_"
SILENCE_DIR = "_silence_"  # folder of word-free noise clips, as in the Speech Commands release
RESERVED = (UNKNOWN, SILENCE)


def is_command(label: str | None) -> bool:
    """True for a real command word (not ``_unknown_``, ``_silence_`` or no label)."""
    return label is not None and label not in RESERVED


def parse_commands(text: str) -> list[str]:
    """``"yes,no,up"`` -> ``["yes", "no", "up"]``, each in NFC as the data's labels are
    (``data.nfc``); duplicates, blanks and reserved names refused."""
    words = [nfc(w.strip()) for w in text.split(",")]
    if not words or any(not w for w in words):
        raise ValueError(f"--commands {text!r}: give comma-separated words, e.g. yes,no,up")
    reserved = [w for w in words if w in RESERVED]
    if reserved:
        raise ValueError(f"--commands {text!r}: {reserved} are added for you; list only words")
    dupes = sorted({w for w in words if words.count(w) > 1})
    if dupes:
        raise ValueError(f"--commands {text!r}: repeated word(s) {dupes}")
    return words


def _silence_files(root: Path) -> list[Path]:
    """The ``_silence_/`` folder's audio, listed as a label folder is (``audio.audio_files``)."""
    folder = root / SILENCE_DIR
    return audio_files(folder) if folder.is_dir() else []


def with_silence(dataset: Dataset) -> Dataset:
    """Add the clips of ``root/_silence_/``; give each speaker-less silence clip a pseudo-speaker.

    Clips already in the dataset are not added twice, so this is safe on a dataset whose loader
    already reads ``_silence_/``.
    """
    known = {c.path for c in dataset.clips}
    found = [p for p in _silence_files(dataset.root) if p not in known]
    clips = dataset.clips + [Clip(p, {"command": SILENCE}) for p in found]
    speakers = sorted({c.speaker for c in clips if c.speaker is not None and c.label != SILENCE})
    silent = sorted((c for c in clips if c.label == SILENCE and c.speaker is None),
                    key=lambda c: str(c.path))
    pseudo = {id(c): speakers[i % len(speakers)] for i, c in enumerate(silent)} if speakers else {}
    clips = [replace(c, speaker=pseudo[id(c)]) if id(c) in pseudo else c for c in clips]
    return replace(dataset, clips=clips)


def load_with_silence(path: str | Path) -> Dataset:
    """``data.load_dataset`` plus the ``_silence_/`` clips (also a folder holding only those)."""
    path = Path(path)
    try:
        dataset = load_dataset(path)
    except DatasetError:
        if not _silence_files(path):
            raise
        dataset = Dataset([], path, "folders")
    return with_silence(dataset)


def map_label(label: str | None, commands: list[str] | set[str]) -> str | None:
    """A listed word keeps its label, silence stays silence, any other word is ``_unknown_``."""
    if label is None or label == SILENCE or label in commands:
        return label
    return UNKNOWN


def as_unknown(clip: Clip) -> Clip:
    """The clip labelled ``_unknown_``, the word it holds kept as ``clip.word``."""
    return replace(clip, labels=clip.labels | {"command": UNKNOWN}, word=clip.word or clip.label)


def _relabel(dataset: Dataset, commands: list[str] | set[str]) -> Dataset:
    clips = [as_unknown(c) if map_label(c.label, commands) == UNKNOWN and c.label != UNKNOWN
             else c for c in dataset.clips]
    return replace(dataset, clips=clips)


MAX_OTHER_WORDS = 64  # other words a decoder spells at most (each one costs decoder tokens)


def other_words(clips: list[Clip], limit: int = MAX_OTHER_WORDS) -> list[str]:
    """The words said in ``clips`` labelled ``_unknown_``, the ``limit`` most frequent: what
    a decoder can spell for "none of these" (``ZeroShotRecognizer`` aliases of ``_unknown_``)."""
    counts = Counter(c.word for c in clips if c.label == UNKNOWN and is_command(c.word))
    return sorted(sorted(counts, key=lambda w: (-counts[w], w))[:limit])


def written_otherwise(word: str | None, commands: list[str]) -> str | None:
    """The command ``word`` writes otherwise ("Yes" or " yes" for "yes", "café" decomposed for
    "café" composed: a model saved with a macOS folder's name), None when it is one of
    ``commands`` or none: such a word is no command to the model, so its clips train, score or
    count as something else without a sign unless the caller says so."""
    if word is None or word in commands:
        return None
    key = nfc(word).strip().casefold()
    return next((c for c in commands if nfc(c).strip().casefold() == key), None)


def apply_commands(dataset: Dataset, commands: list[str]) -> Dataset:
    """The training vocabulary: ``commands`` plus ``_unknown_`` (and ``_silence_`` where present).

    Every listed word must occur in the data: a misspelt command would otherwise silently train a
    class with no examples. ``commands`` are compared in NFC, as the data's labels are.
    """
    commands = [nfc(w) for w in commands]
    if not commands:
        raise DatasetError(f"{dataset.root}: no command words given")
    reserved = [w for w in commands if w in RESERVED]
    if reserved:
        raise DatasetError(f"{dataset.root}: {reserved} cannot be commands; they are added for you")
    missing = [w for w in commands if w not in dataset.labels]
    if missing:
        raise DatasetError(
            f"{dataset.root}: command word(s) {missing} have no clips; words in the data: "
            f"{[w for w in dataset.labels if w not in RESERVED]}"
        )
    near = [w for w in dataset.labels if w not in RESERVED and written_otherwise(w, commands)]
    if near:  # "Yes" beside the command "yes": the word would train as "none of these"
        LOGGER.warning("%s: labels %s differ from the commands only in case; their clips train "
                       "as %s (rename the folders, or list them in --commands)", dataset.root,
                       near[:10], UNKNOWN)
    return _relabel(dataset, set(commands))


def map_for_model(dataset: Dataset, model_labels: list[str]) -> Dataset:
    """Eval-time truth: words the model does not know become ``_unknown_``; silence stays."""
    return _relabel(dataset, {w for w in model_labels if is_command(w)})


def negatives(path: str | Path, commands: list[str], exclude_speakers: list[str] = (),
              taken: list[Path] = ()) -> list[Clip]:
    """Every clip of another dataset (any layout) as an ``_unknown_`` training clip.

    Open-set rejection learns "none of these" from other words, and a command set rarely comes
    with many: any speech corpus can supply them, as wake-word trainers use large negative sets.
    Only the command label is kept (a speaker task does not learn these voices). A clip
    labelled with one of ``commands``, or a speaker the run holds out, is refused: either would
    silently teach a command as "none of these" or leak a test voice into training. So is a
    file among ``taken`` (the run's own clips, compared through links): a negatives set without
    speaker names could otherwise put a test clip into training.
    """
    dataset = load_dataset(path)
    # realpath, not Path.resolve: a looping link among the clips (listed, to be reported as
    # skipped when read) makes resolve raise RuntimeError
    own = {os.path.realpath(p) for p in taken}
    shared = [c.path for c in dataset.clips if os.path.realpath(c.path) in own]
    if shared:
        raise DatasetError(f"{dataset.location}: negatives hold {len(shared)} clip(s) of the "
                           f"training data itself (first: {shared[0]})")
    clashing = sorted({c.label for c in dataset.clips if c.label in commands})
    if clashing:
        raise DatasetError(f"{dataset.location}: negatives must hold no command word; clips "
                           f"labelled {clashing} are in it")
    leaked = sorted({c.speaker for c in dataset.clips if c.speaker in exclude_speakers})
    if leaked:
        raise DatasetError(f"{dataset.location}: negatives hold held-out speaker(s) {leaked}")
    return [replace(as_unknown(c), labels={"command": UNKNOWN}) for c in dataset.clips]


def shots(clips: list[Clip], n: int, seed: int = 0) -> list[Clip]:
    """Keep ``n`` clips per command in total, from as many speakers as possible.

    Speakers are visited round-robin in a seeded order, one clip each per round, so ten shots
    come from ten people where ten exist: what a user who asks a few people to record a command
    has. Unknown, silence and unlabelled clips are kept as given. The same seed gives nested
    selections: the 3-shot set is part of the 10-shot set. The input order is kept.
    """
    if n < 1:
        raise ValueError(f"shots must be at least 1, got {n}")
    rng = random.Random(seed)
    groups: dict[str, dict[str | None, list[Clip]]] = defaultdict(lambda: defaultdict(list))
    for c in clips:
        if is_command(c.label):
            groups[c.label][c.speaker].append(c)
    chosen: set[int] = set()
    for label in sorted(groups):
        speakers = sorted(groups[label], key=str)
        rng.shuffle(speakers)
        queues = []
        for s in speakers:
            queue = sorted(groups[label][s], key=lambda c: str(c.path))
            rng.shuffle(queue)
            queues.append(queue)
        picked = 0
        while picked < n and any(queues):
            for queue in queues:
                if queue and picked < n:
                    chosen.add(id(queue.pop()))
                    picked += 1
    return [c for c in clips if not is_command(c.label) or id(c) in chosen]
