"""Voiceprints: who said it. Enrol speakers into a model folder, verify a claim, identify.

Embeddings come from the model's speaker embedding head (an ``embedding`` task, trained with
AM-softmax) when it has one; otherwise from pooled encoder features (the mean over frames of
the encoder's first hidden state, its convolutional front end: the blocks above it keep less of
the speaker and more of the words), never trained for voices. ``Embedder.source`` says which.

A voiceprint is the L2-normalised mean of a speaker's enrolment embeddings. Scores are cosine
similarities under symmetric score normalisation (S-norm): the raw cosine is z-normalised
against a cohort from both sides (the voiceprint's and the clip's cosines to the cohort), so
one threshold fits every speaker. The cohort is the embedding head's class prototypes (the
training speakers: no audio needed) or, for pooled features, the other enrolled voiceprints;
or, given a folder of background speakers (``--cohort``), their mean embeddings, stored with
the voiceprints: real voices' scores resemble trial scores more than prototypes' do.
The accept threshold is the score ``FALSE_ACCEPT_TARGET`` of impostor trials reach: set by
``eval-speakers --calibrate`` on speakers of your choice, else the standard-normal quantile
(S-normed impostor scores are roughly N(0, 1), though in practice that is too strict);
``eval-speakers`` reports the false accepts and rejects it gives on the speakers it scores.

Voiceprints live in ``MODEL/voiceprints/`` (``voiceprints.safetensors`` + ``voiceprints.json``,
replaced whole on every enrolment, never pickled, one writer at a time). Saving a new model
over the folder drops them, as it should: they belong to that model's embedding space; they keep
its ``Embedder.mark``, so copied beside another model they are refused, not scored.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from safetensors.numpy import save_file

from .audio import AudioError, Clip, batch_waves, batches_by_length, load
from .data import load_dataset
from .evaluate import cohort_normalisation, eer_from_scores
from .heads import EmbeddingHead, masked_mean
from .log import LOGGER
from .model import CommandClassifier
from .recognizer import ModelError, Recognizer, read_weights, to_wave
from .recognizer import load as load_system
from .store import atomic_folder, folder_lock
from .vocab import SILENCE, UNKNOWN

FOLDER = "voiceprints"
WEIGHTS, CONFIG = "voiceprints.safetensors", "voiceprints.json"
FORMAT = "speechxfer-voiceprints"
FALSE_ACCEPT_TARGET = 0.01  # impostor share the stored threshold is set to let through
HEADLINE = ("eer_text_dependent", "eer_text_independent", "min_dcf", "min_dcf_text_independent",
            "id_accuracy")  # averaged over enrolment draws
P_TARGET = 0.01  # prior of a target trial in the detection cost (NIST SRE's usual operating point)
POOLED_STATE = 0  # the convolutional front end: speaker identity fades in the blocks above it
MIN_COHORT = 2  # S-norm needs a spread: at least this many cohort vectors
MAX_NAME = 100  # characters of a speaker name
MIN_MARK_COSINE = 0.98  # the same model on another device or precision stays far above this


class VoiceprintError(ValueError):
    """Enrolment or verification that cannot be done; the message says why."""


# ---------------------------------------------------------------------------------- embeddings
def classifier_of(system: Recognizer) -> CommandClassifier:
    """The neural classifier (encoder + heads) inside ``system``: itself, or a combined
    system's head; other kinds have no encoder of ours to embed with."""
    if isinstance(system, CommandClassifier):
        return system
    head = getattr(system, "head", None)
    if isinstance(head, CommandClassifier):
        return head
    raise ModelError(f"a {system.model_kind or type(system).__name__} system has no neural "
                     "encoder to embed voices with; use a neural or combined model")


class Embedder:
    """L2-normalised speaker embeddings of waves from one model, and the S-norm cohort."""

    def __init__(self, model: CommandClassifier):
        self.model = model
        tasks = [t for t, kind in model.kinds.items() if kind == "embedding"]
        self.task = "speaker" if "speaker" in tasks else (tasks[0] if tasks else None)
        if self.task is None:
            self.source = "pooled encoder features (mean over frames of hidden state 0)"
            self.cohort: np.ndarray | None = None
        else:
            self.source = f"speaker embedding head {self.task!r}"
            head = model.heads[self.task]
            assert isinstance(head, EmbeddingHead)
            with torch.no_grad():
                protos = torch.nn.functional.normalize(head.prototypes.float(), dim=-1)
            self.cohort = protos.cpu().numpy()

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @cached_property
    def mark(self) -> np.ndarray:
        """The embedding of a fixed noise clip: what voiceprints keep of the model that made
        them, so voiceprints copied beside another model (a retrained head, same size) are
        known. One encoder pass, once per embedder."""
        noise = 0.1 * torch.randn(self.sample_rate, generator=torch.Generator().manual_seed(0))
        return self([noise])[0].astype(np.float32)

    @torch.no_grad()
    def __call__(self, waves: Sequence[torch.Tensor], batch_size: int = 16) -> np.ndarray:
        if self.task is not None:
            return self.model.predict_all(list(waves), batch_size, embeddings=True)[self.task]
        self.model.eval()
        device = next(self.model.parameters()).device
        out = None
        for idx in batches_by_length(list(waves), batch_size):
            batch, lengths = batch_waves([waves[i] for i in idx])
            enc = self.model.encoder(batch.to(device), lengths.to(device))
            vec = masked_mean(enc.hidden_states[POOLED_STATE].float(), enc.mask)
            vec = torch.nn.functional.normalize(vec, dim=-1).cpu().numpy()
            if out is None:
                out = np.zeros((len(waves), vec.shape[1]), np.float32)
            out[idx] = vec
        return out if out is not None else np.zeros((0, 1), np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def cohort_vectors(embed: Embedder, data: str | Path, scored: Collection[str] = (),
                   files: Sequence[str | Path] = ()) -> np.ndarray:
    """An S-norm cohort of real voices: one normalised mean embedding per speaker of ``data``
    (background speakers, never the ones scored), built the way a voiceprint is, so the cohort
    scores look like trial scores; a head's prototypes are only the targets it was trained on.
    A cohort holding a ``scored`` speaker or one of ``files`` (enrolment clips) is refused: that
    voice would normalise its own scores down."""
    check_apart(data, "--cohort", scored)
    clips, waves, _ = speaker_clips(data, embed.sample_rate)
    enrolled = {d: str(f) for f in files if (d := _digest(f))}
    shared = []
    if enrolled:  # the cohort's files are hashed only when there are enrolment files to match
        shared = sorted(enrolled[d] for c in clips if (d := _digest(c.path)) in enrolled)
    if shared:
        raise VoiceprintError(f"{data}: the cohort holds {len(shared)} of the enrolment clips "
                              f"(e.g. {shared[0]}); a cohort is other voices: choose a folder "
                              "without this speaker")
    x = embed(waves)
    owner = np.array([str(c.speaker) for c in clips])
    return unit(np.stack([x[owner == s].mean(0) for s in sorted(set(owner))])).astype(np.float32)


def _digest(path: object) -> str | None:
    """A file's content digest, so a copy is known as the same clip (None: raw samples)."""
    if not isinstance(path, (str, Path)):
        return None
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def check_apart(folder: str | Path, role: str, scored: Collection[str]) -> None:
    """Refuse a background folder (``role``: the cohort, the GMM-UBM's data) that holds speakers
    being scored: their own voice in it makes their scores look better or worse than they are."""
    if not scored:
        return
    shared = sorted({str(c.speaker) for c in load_dataset(folder).clips if c.speaker} & set(scored))
    if shared:
        raise VoiceprintError(f"{folder}: {role} holds {len(shared)} of the speakers scored "
                              f"({', '.join(shared[:5])}); use background speakers apart from "
                              "the scored ones")


def snorm(raw: np.ndarray, model_vecs: np.ndarray, clip_vecs: np.ndarray, cohort: np.ndarray,
          model_owner: Sequence[str] | None = None,
          cohort_owner: Sequence[str] | None = None) -> np.ndarray:
    """Symmetric S-norm of the cosine matrix ``raw`` [models, clips] against ``cohort``; with
    owners, a model's own speaker is left out of its cohort (enrolled voiceprints as cohort)."""
    mc, cc = model_vecs @ cohort.T, clip_vecs @ cohort.T  # [models, C], [clips, C]
    if model_owner is None or cohort_owner is None:
        keep = np.ones((len(model_vecs), len(cohort)), bool)
    else:
        keep = np.array(model_owner)[:, None] != np.array(cohort_owner)[None, :]
    if (keep.sum(1) < MIN_COHORT).any():
        raise VoiceprintError(f"score normalisation needs at least {MIN_COHORT} other speakers "
                              "in the cohort: pooled-feature voiceprints are normalised against "
                              "the other speakers' (enrolled, or in eval-speakers the other "
                              "voiceprints of the trials); use more speakers, or --cohort DIR")
    k = keep.astype(np.float64)
    n = k.sum(1, keepdims=True)
    mu_m = (mc * k).sum(1, keepdims=True) / n
    sd_m = np.sqrt((((mc - mu_m) ** 2) * k).sum(1, keepdims=True) / n).clip(min=1e-6)
    # the clip's statistics over each model's cohort: [models, clips]
    mu_c = (k @ cc.T) / n
    sd_c = np.sqrt(np.clip((k @ (cc ** 2).T) / n - mu_c ** 2, 1e-12, None))
    return 0.5 * ((raw - mu_m) / sd_m + (raw - mu_c) / sd_c)


# --------------------------------------------------------------------------------- voiceprints
@dataclass
class Voiceprints:
    """The enrolled speakers of one model folder."""

    names: list[str]
    vectors: np.ndarray  # [speakers, dim], L2-normalised
    clips: list[list[str]]  # enrolment files per speaker
    source: str
    threshold: float
    calibration: dict | None = None  # where the threshold was set (None: the normal model)
    cohort: np.ndarray | None = None  # [speakers, dim] S-norm cohort (None: the model's own)
    cohort_data: str | None = None  # the folder the cohort came from
    mark: np.ndarray | None = None  # [dim] the making model's ``Embedder.mark`` (None: not kept)

    def to_config(self) -> dict:
        cohort = None if self.cohort is None else {"data": self.cohort_data,
                                                   "speakers": len(self.cohort)}
        return {"format": FORMAT, "version": 1, "source": self.source,
                "dim": int(self.vectors.shape[1]), "threshold": self.threshold,
                "false_accept_target": FALSE_ACCEPT_TARGET, "calibration": self.calibration,
                "cohort": cohort, "mark": None if self.mark is None else self.mark.tolist(),
                "speakers": [{"name": n, "clips": c} for n, c in zip(self.names, self.clips)]}


def check_mark(prints: Voiceprints, embed: Embedder, where: str | Path | None) -> None:
    """Refuse voiceprints another model made: scored with this one, they mean nothing."""
    if prints.mark is None:
        return
    now = embed.mark
    if now.shape != prints.mark.shape or float(now @ prints.mark) < MIN_MARK_COSINE:
        folder = Path(where) / FOLDER if where is not None else FOLDER
        raise ModelError(f"{folder}: made by another model (its {embed.source} is not this "
                         "model's): remove that folder and enrol the speakers again")


def default_threshold(false_accept: float = FALSE_ACCEPT_TARGET) -> float:
    """The S-norm score an impostor exceeds with probability ``false_accept`` (N(0, 1))."""
    return NormalDist().inv_cdf(1.0 - false_accept)


def _is_voiceprint_folder(directory: Path) -> bool:
    try:
        return json.loads((directory / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_voiceprints(model_dir: str | Path) -> Voiceprints | None:
    """The voiceprints enrolled in ``model_dir``, or None if there are none."""
    folder = Path(model_dir) / FOLDER
    if not (folder / CONFIG).is_file():
        return None
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        speakers = config["speakers"]
        names = [str(s["name"]) for s in speakers]
        clips = [[str(c) for c in s["clips"]] for s in speakers]
        threshold = float(config["threshold"])
        source = str(config["source"])
        dim = int(config.get("dim", 0))
        cohort = config.get("cohort")
        n_cohort = None if cohort is None else int(cohort["speakers"])
        mark = None if config.get("mark") is None else np.asarray(config["mark"], np.float32)
        if config.get("format") != FORMAT or not np.isfinite(threshold):
            raise ValueError("not a voiceprints file")
        if mark is not None and (mark.shape != (dim,) or not np.isfinite(mark).all()):
            raise ValueError(f"its model mark is not {dim} finite numbers")
        if len(set(names)) < len(names):  # verify would score the first, enroll drop both
            raise ValueError(f"speaker {next(n for n in names if names.count(n) > 1)!r:.60} "
                             "is listed twice")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{folder / CONFIG}: unreadable voiceprints ({str(err)[:200]})") from None
    shapes = {"vectors": (len(names), dim)} | ({} if n_cohort is None else
                                                {"cohort": (n_cohort, dim)})
    try:
        tensors = read_weights(folder / WEIGHTS, "numpy", shapes)
    except ModelError as err:  # read_weights names a model's config, config.json
        raise ModelError(str(err).replace("config.json", CONFIG)) from None
    vectors = tensors["vectors"].astype(np.float32)
    calibration = config.get("calibration")
    return Voiceprints(names, vectors, clips, source, threshold,
                       calibration if isinstance(calibration, dict) else None,
                       None if n_cohort is None else tensors["cohort"].astype(np.float32),
                       None if cohort is None else str(cohort.get("data")), mark)


def write_voiceprints(model_dir: str | Path, prints: Voiceprints) -> Path:
    """Replace ``MODEL/voiceprints/`` whole (``store.atomic_folder``): a kill leaves the old set."""
    folder = Path(model_dir) / FOLDER
    with atomic_folder(folder, _is_voiceprint_folder) as tmp:
        tensors = {"vectors": prints.vectors} | ({} if prints.cohort is None else
                                                  {"cohort": prints.cohort})
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                  str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(prints.to_config(), indent=2))
    return folder


def _open(model: str | Path | Recognizer, device: str = "cpu") -> tuple[Recognizer, Path | None]:
    if isinstance(model, Recognizer):
        return model, None
    return load_system(model, device), Path(model)


def _stored_prints(model_dir: str | Path, embed: Embedder, dim: int,
                   threshold: float) -> Voiceprints:
    """The voiceprints beside the model (read under its ``folder_lock``), or an empty set at
    ``threshold`` when there are none, or none enrolled under another embedding; enrolled ones
    of another embedding or model are a ModelError: added to or scored with, they mean nothing."""
    prints = read_voiceprints(model_dir)
    if prints is None or (not prints.names and prints.source != embed.source):
        return Voiceprints([], np.zeros((0, dim), np.float32), [], embed.source, threshold)
    if prints.source != embed.source or prints.vectors.shape[1] != dim:
        raise ModelError(f"{model_dir}: its voiceprints were made by {prints.source} "
                         f"({prints.vectors.shape[1]} dims), not this model's {embed.source}")
    check_mark(prints, embed, model_dir)
    return prints


def _embedder(model: str | Path, device: str) -> Embedder:
    system, _ = _open(model, device)
    try:
        return Embedder(classifier_of(system))
    except ModelError as err:
        raise ModelError(f"{model}: {err}") from None


def _waves(clips: Sequence, sample_rate: int, given_rate: int | None = None) -> list[torch.Tensor]:
    """Files read, or raw samples at ``given_rate`` checked, both at ``sample_rate``: raw
    samples are never assumed to be at the model's rate (``AudioError`` says so)."""
    return [to_wave(c, given_rate, sample_rate) for c in clips]


def _check_name(speaker: str) -> str:
    name = speaker.strip() if isinstance(speaker, str) else ""
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise VoiceprintError(f"speaker name must be 1-{MAX_NAME} printable characters, "
                              f"got {speaker!r:.60}")
    return name


def enroll(model_dir: str | Path, speaker: str, clips: Sequence[str | Path | torch.Tensor],
           device: str = "cpu", cohort: str | Path | None = None,
           sample_rate: int | None = None) -> Voiceprints:
    """Add ``speaker``'s voiceprint to ``model_dir`` from ``clips`` (audio files, or raw samples
    at ``sample_rate``); every clip is read before anything is written, so a bad file changes
    nothing, and a file given twice is refused (it would weigh double). A name enrolled again is
    replaced, not pooled with its earlier clips (a warning says so). ``cohort``, a folder of
    background speakers (not this one), becomes every voiceprint's S-norm cohort
    (``cohort_vectors``); a different cohort changes the scores, so a calibrated threshold then
    falls back to the default until calibrated again (a warning says so)."""
    name = _check_name(speaker)
    if isinstance(clips, (str, Path)) or (isinstance(clips, (np.ndarray, torch.Tensor))
                                          and clips.ndim < 2):
        # a path would be read letter by letter, a clip's samples each as a clip
        raise VoiceprintError(f"enrolling {name!r}: one clip, not a list of them: enroll "
                              "takes a list of clips")
    clips = list(clips)  # any iterable, read once: a generator would be spent by the files check
    if not clips:
        raise VoiceprintError(f"enrolling {name!r}: no clips given")
    files = [str(Path(c).resolve()) for c in clips if isinstance(c, (str, Path))]
    if len(set(files)) < len(files):
        twice = next(f for f in files if files.count(f) > 1)
        raise VoiceprintError(f"enrolling {name!r}: {twice} is given twice")
    embed = _embedder(model_dir, device)
    vectors = embed(_waves(clips, embed.sample_rate, sample_rate))  # AudioError names the file
    new_cohort = None if cohort is None else cohort_vectors(embed, cohort, files=files)
    with folder_lock(model_dir):
        prints = _stored_prints(model_dir, embed, vectors.shape[1], default_threshold())
        if new_cohort is not None:
            same = (prints.cohort is not None and prints.cohort.shape == new_cohort.shape
                    and np.allclose(prints.cohort, new_cohort, atol=1e-5))
            if not same and prints.calibration is not None:
                LOGGER.warning("%s: a new cohort changes the scores: the calibrated threshold "
                               "%.3f falls back to the default %.3f (eval-speakers --calibrate "
                               "sets it again)", model_dir, prints.threshold, default_threshold())
            if not same:
                prints.threshold, prints.calibration = default_threshold(), None
            prints.cohort, prints.cohort_data = new_cohort, str(cohort)
        if name in prints.names:
            LOGGER.warning("%s: %r was enrolled already (from %d clip(s)); that voiceprint is "
                           "replaced by this one", model_dir, name,
                           len(prints.clips[prints.names.index(name)]))
        mean = unit(vectors.mean(0, keepdims=True))
        keep = [i for i, n in enumerate(prints.names) if n != name]
        prints = Voiceprints([prints.names[i] for i in keep] + [name],
                             np.concatenate([prints.vectors[keep], mean]).astype(np.float32),
                             [prints.clips[i] for i in keep]
                             + [[Path(c).name if isinstance(c, (str, Path)) else "<samples>"
                                 for c in clips]],
                             embed.source, prints.threshold, prints.calibration, prints.cohort,
                             prints.cohort_data, embed.mark)
        write_voiceprints(model_dir, prints)
    if (why := unscorable(prints, embed)) is not None:
        LOGGER.warning("%s: %s", model_dir, why)
    return prints


def unscorable(prints: Voiceprints, embed: Embedder) -> str | None:
    """Why ``prints`` cannot be scored yet (None: they can): pooled-feature voiceprints without
    a stored cohort are normalised against the other enrolled speakers, so need enough of them."""
    if prints.cohort is not None or embed.cohort is not None or len(prints.names) > MIN_COHORT:
        return None
    return (f"{len(prints.names)} speaker(s) enrolled: voiceprints of pooled features are "
            f"scored against the other enrolled speakers, so scores need {MIN_COHORT + 1} or "
            "more enrolled (or enroll --cohort DIR, a folder of background speakers)")


class SpeakerScorer:
    """Scores clips against a model folder's voiceprints (loaded once, for predict)."""

    def __init__(self, system: Recognizer, prints: Voiceprints, where: str | Path | None = None):
        self.embed = Embedder(classifier_of(system))
        if prints.source != self.embed.source:
            raise ModelError(f"voiceprints made by {prints.source}, not this model's "
                             f"{self.embed.source}; enrol again")
        check_mark(prints, self.embed, where)
        self.prints = prints

    def scores(self, waves: Sequence[torch.Tensor]) -> np.ndarray:
        """S-normed scores [clips, speakers]."""
        p = self.prints
        if not p.names:
            raise VoiceprintError("no speaker is enrolled in this model")
        if (why := unscorable(p, self.embed)) is not None:
            raise VoiceprintError(why)
        x = self.embed(waves)
        if x.shape[1] != p.vectors.shape[1]:
            raise ModelError(f"voiceprints of {p.vectors.shape[1]} dims, embeddings of "
                             f"{x.shape[1]}: made by another model; enrol again")
        raw = p.vectors @ x.T
        cohort = p.cohort if p.cohort is not None else self.embed.cohort
        if cohort is not None:
            return snorm(raw, p.vectors, x, cohort).T
        return snorm(raw, p.vectors, x, p.vectors, p.names, p.names).T

    def identify(self, wave: torch.Tensor) -> dict:
        """The best-matching enrolled speaker, its score and whether it passes the threshold."""
        row = self.scores([wave])[0]
        best = int(row.argmax())
        return {"name": self.prints.names[best], "score": float(row[best]),
                "accepted": bool(row[best] >= self.prints.threshold)}


def _scorer(model: str | Path | SpeakerScorer, device: str) -> SpeakerScorer:
    if isinstance(model, SpeakerScorer):
        return model
    system, _ = _open(model, device)
    prints = read_voiceprints(model)
    if prints is None or not prints.names:
        raise VoiceprintError(f"{model}: no speaker is enrolled "
                              "(speechxfer enroll MODEL --speaker NAME CLIP...)")
    return SpeakerScorer(system, prints, model)


def verify(model: str | Path | SpeakerScorer, clip: str | Path | torch.Tensor, speaker: str,
           device: str = "cpu", sample_rate: int | None = None) -> tuple[float, bool]:
    """Is ``clip`` (a file, or raw samples at ``sample_rate``) spoken by the enrolled
    ``speaker``? The S-norm score and the decision at the stored threshold. ``model``: a model
    folder, or a ``SpeakerScorer`` already loaded."""
    scorer = _scorer(model, device)
    name = speaker.strip() if isinstance(speaker, str) else speaker  # as enroll stored it
    if name not in scorer.prints.names:
        raise VoiceprintError(f"{speaker!r:.60} is not enrolled; enrolled: "
                              f"{', '.join(scorer.prints.names)}")
    wave = _waves([clip], scorer.embed.sample_rate, sample_rate)
    score = float(scorer.scores(wave)[0, scorer.prints.names.index(name)])
    return score, score >= scorer.prints.threshold


def identify(model: str | Path | SpeakerScorer, clip: str | Path | torch.Tensor,
             device: str = "cpu", sample_rate: int | None = None) -> dict:
    """The enrolled speaker whose voiceprint best matches ``clip`` (a file, or raw samples at
    ``sample_rate``): name, score, accepted."""
    scorer = _scorer(model, device)
    return scorer.identify(_waves([clip], scorer.embed.sample_rate, sample_rate)[0])


def scorer_for(model_dir: str | Path, system: Recognizer) -> SpeakerScorer | None:
    """A scorer when ``model_dir`` has voiceprints that can be scored (for predict), else None:
    with too few pooled-feature voiceprints a warning says why, and the words are still told."""
    prints = read_voiceprints(model_dir)
    if prints is None or not prints.names:
        return None
    scorer = SpeakerScorer(system, prints, model_dir)
    if (why := unscorable(prints, scorer.embed)) is not None:
        LOGGER.warning("%s: speakers not scored: %s", model_dir, why)
        return None
    return scorer


# ------------------------------------------------------------------------------- evaluation
@dataclass
class Trials:
    """Enrolment models (speaker or speaker+word) and the trial clips scored against them."""

    name: str
    models: list[tuple[str, list[int]]]  # (speaker, enrolment clip indices)
    pairs: list[tuple[int, int, bool]]  # (model index, clip index, same speaker)


def build_trials(clips: list[Clip], k: int, seed: int) -> tuple[Trials, Trials]:
    """Text-dependent and text-independent trial lists from labelled clips.

    Text-dependent: a model per (speaker, word) with at least k+1 clips, enrolled from k of
    them; targets are the rest, non-targets every other speaker's clips of that word.
    Text-independent: a model per speaker with at least k+1 clips, enrolled from k of them
    drawn across words; trials are clips of words the enrolment did not say, from that speaker
    (targets) or any other (non-targets). Enrolment clips are never trial clips. ``_unknown_``
    clips (an ``_unknown_/`` folder: words unnamed) make no text-dependent model or trial: they
    need not say the same word.
    """
    rng = random.Random(seed)
    by_speaker: dict[str, list[int]] = {}
    by_word: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_speaker.setdefault(str(c.speaker), []).append(i)
        if (c.word or c.label) != UNKNOWN:
            by_word.setdefault(str(c.word or c.label), []).append(i)
    td = Trials("text_dependent", [], [])
    for word in sorted(by_word):
        for spk in sorted(by_speaker):
            own = [i for i in by_word[word] if clips[i].speaker == spk]
            if len(own) <= k:
                continue
            enrol = sorted(rng.sample(own, k))
            m = len(td.models)
            td.models.append((spk, enrol))
            td.pairs += [(m, i, clips[i].speaker == spk) for i in by_word[word] if i not in enrol]
    ti = Trials("text_independent", [], [])
    enrolled: set[int] = set()
    for spk in sorted(by_speaker):
        own = by_speaker[spk]
        if len(own) <= k:
            continue
        enrol = sorted(rng.sample(own, k))
        ti.models.append((spk, enrol))
        enrolled.update(enrol)
    for m, (spk, enrol) in enumerate(ti.models):
        words = {clips[i].label for i in enrol}
        ti.pairs += [(m, i, clips[i].speaker == spk) for i in range(len(clips))
                     if i not in enrolled and clips[i].label not in words]
    return td, ti


def min_dcf(scores: np.ndarray, target: np.ndarray, p_target: float = P_TARGET) -> float:
    """Minimum normalised detection cost (C_miss = C_fa = 1) over all thresholds."""
    order = np.argsort(-scores, kind="stable")
    t = target[order].astype(bool)
    fa = np.concatenate([[0.0], np.cumsum(~t) / (~t).sum()])
    miss = np.concatenate([[1.0], 1 - np.cumsum(t) / t.sum()])
    cost = p_target * miss + (1 - p_target) * fa
    return float(cost.min() / min(p_target, 1 - p_target))


class Backend:
    """What ``evaluate_speakers`` needs of a system: features per clip, a model from some
    clips' features, and the score matrix [models, clips]."""

    description: str
    normalisation = "none"  # how scores are normalised, as the report says it
    threshold: float | None = None  # a stored accept threshold, reported against when set

    def features(self, waves: list[torch.Tensor]) -> list:
        raise NotImplementedError

    def scores(self, models: list[tuple[str, list[int]]], feats: list) -> np.ndarray:
        raise NotImplementedError


class EmbeddingBackend(Backend):
    """Cosine of voiceprints under S-norm, as ``verify`` scores (same cohort rule)."""

    def __init__(self, embed: Embedder):
        self.embed, self.description = embed, embed.source
        self.threshold = default_threshold()
        self.sample_rate = embed.sample_rate
        self.normalisation = ("S-norm against the other enrolled voiceprints"
                              if embed.cohort is None
                              else f"S-norm against the head's {len(embed.cohort)} prototypes")

    def features(self, waves: list[torch.Tensor]) -> list:
        return list(self.embed(waves))

    def scores(self, models: list[tuple[str, list[int]]], feats: list) -> np.ndarray:
        x = np.stack(feats)
        prints = unit(np.stack([x[idx].mean(0) for _, idx in models]))
        raw = prints @ x.T
        if self.embed.cohort is not None:
            return snorm(raw, prints, x, self.embed.cohort)
        # pooled features: the other speakers' voiceprints are the cohort, as in verify
        owners = [spk for spk, _ in models]
        return snorm(raw, prints, x, prints, owners, owners)


def evaluate_speakers(backend: Backend, clips: list[Clip], waves: list[torch.Tensor], k: int = 3,
                      seed: int = 0, feats: list | None = None,
                      impostors: list | None = None) -> dict:
    """EER (text-dependent and -independent), minDCF, identification accuracy on ``clips``
    (``feats``: ``backend.features(waves)`` already computed; ``impostors``, a list, receives
    every non-target score)."""
    td, ti = build_trials(clips, k, seed)
    if not td.pairs and not ti.pairs:
        most = max(Counter(str(c.speaker) for c in clips).values(), default=0)
        word = max(Counter((str(c.speaker), c.label) for c in clips).values(), default=0)
        raise VoiceprintError(f"no trials with k={k} (--enroll) enrolment clips: text-dependent "
                              f"trials need a speaker with more than k clips of one word (the "
                              f"most is {word}), text-independent ones more than k clips and a "
                              f"word the enrolment leaves out (the most clips is {most})")
    feats = backend.features(waves) if feats is None else feats
    report: dict = {"backend": backend.description, "normalisation": backend.normalisation,
                    "k": k, "seed": seed,
                    "n_clips": len(clips), "n_speakers": len({c.speaker for c in clips})}
    n_trials = 0
    for trials in (td, ti):
        key = trials.name
        targets = np.array([p[2] for p in trials.pairs], bool)
        if not trials.pairs or targets.all() or not targets.any():
            report[f"eer_{key}"] = None
            report[f"n_{key}"] = {"models": len(trials.models), "targets": int(targets.sum()),
                                  "nontargets": int((~targets).sum())}
            continue
        matrix = backend.scores(trials.models, feats)
        scores = np.array([matrix[m, i] for m, i, _ in trials.pairs])
        eer, at = eer_from_scores(scores, targets)
        if impostors is not None:
            impostors.extend(scores[~targets].tolist())
        report[f"eer_{key}"] = eer
        report[f"eer_threshold_{key}"] = at
        report[f"min_dcf_{key}"] = min_dcf(scores, targets)
        report[f"n_{key}"] = {"models": len(trials.models), "targets": int(targets.sum()),
                              "nontargets": int((~targets).sum())}
        if backend.threshold is not None:
            accept = scores >= backend.threshold
            report[f"at_threshold_{key}"] = {
                "threshold": backend.threshold,
                "false_accept": float(accept[~targets].mean()),
                "false_reject": float((~accept[targets]).mean())}
        n_trials += len(trials.pairs)
        if trials is ti:
            truth = np.array([spk for spk, _ in trials.models])
            enrolled = {i for _, idx in trials.models for i in idx}
            rows = [i for i, c in enumerate(clips) if c.speaker in set(truth) and i not in enrolled]
            best = matrix[:, rows].argmax(0)
            report["id_accuracy"] = float(np.mean(truth[best] == np.array(
                [clips[i].speaker for i in rows]))) if rows else None
            report["n_identified"] = len(rows)
    report["min_dcf"] = report.get("min_dcf_text_dependent")
    report.setdefault("id_accuracy", None)
    report["n_trials"] = n_trials
    report["p_target"] = P_TARGET
    return report


def speaker_clips(data: str | Path, sample_rate: int) -> tuple[list[Clip], list[torch.Tensor], list]:
    """Every word clip of a speaker in ``data`` (silence and speakerless clips left out), read."""
    ds = load_dataset(data)
    clips = [c for c in ds.clips if c.speaker and c.label and c.label != SILENCE]
    waves, kept, skipped = [], [], list(ds.skipped)
    for c in clips:
        try:
            waves.append(load(c.path, sample_rate))
            kept.append(c)
        except AudioError as err:
            skipped.append((str(err.path), err.problem))
    if len({c.speaker for c in kept}) < 2:
        raise VoiceprintError(f"{data}: speaker evaluation needs clips of at least two speakers")
    return kept, waves, skipped


def eval_speakers(model: str | Path, data: str | Path, k: int = 3, seed: int | Sequence[int] = 0,
                  device: str = "cpu", calibrate: bool = False,
                  cohort: str | Path | None = None) -> dict:
    """``evaluate_speakers`` for a model folder (its embeddings), or for a classic backend
    ``gmm-ubm:BACKGROUND_DIR`` (MFCC GMM-UBM fitted on that folder's clips). Several seeds
    (enrolment draws) share one feature pass; the headline figures are then their means.

    The model's stored threshold (``at_threshold_*``: false accepts and rejects it gives here)
    is its calibrated one if any, else the normal model's. ``calibrate`` sets it from these
    trials instead: the score that ``FALSE_ACCEPT_TARGET`` of their impostor trials reach,
    written into ``MODEL/voiceprints/`` (enrolled speakers kept). Calibrate on speakers other
    than the ones you measure on.

    ``cohort``, a folder of background speakers (never the scored ones), is the S-norm cohort
    of either backend: their mean embeddings for a model (stored with the threshold when
    calibrating), their MAP models and clips for the GMM-UBM. Without it a model uses the
    cohort stored with its voiceprints, else its own (head prototypes or the other enrolled
    voiceprints), and the GMM-UBM scores raw LLRs."""
    spec = str(model)
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if len(set(seeds)) < len(seeds):  # the same draw twice would shrink the spread reported
        raise VoiceprintError(f"seed {next(s for s in seeds if seeds.count(s) > 1)} is given "
                              "twice; each --seed is one enrolment draw")
    if calibrate and spec.startswith("gmm-ubm:"):  # refused before the costly UBM fit
        raise VoiceprintError("--calibrate sets a model folder's threshold; a GMM-UBM has none")
    scored = {str(c.speaker) for c in load_dataset(data).clips if c.speaker}
    if cohort is not None:
        check_apart(cohort, "--cohort", scored)
    if spec.startswith("gmm-ubm:"):
        from .classic.gmmubm import GMMUBMBackend

        check_apart(spec.partition(":")[2], "the GMM-UBM's background", scored)
        gmm = GMMUBMBackend.fit_folder(spec.partition(":")[2])
        if cohort is not None:  # the clips cohort_vectors takes: named speakers' words
            kept, cohort_waves, _ = speaker_clips(cohort, gmm.sample_rate)
            gmm.set_cohort(cohort_waves, [str(c.speaker) for c in kept], name=str(cohort))
        backend: Backend = gmm
        rate = gmm.sample_rate
    else:
        embed = _embedder(model, device)
        backend, rate = EmbeddingBackend(embed), embed.sample_rate
        stored = read_voiceprints(model)
        if stored is not None and stored.source == embed.source:
            check_mark(stored, embed, model)
            backend.threshold = stored.threshold
            if stored.cohort is not None and cohort is None:
                embed.cohort = stored.cohort
                backend.normalisation = (cohort_normalisation(len(stored.cohort),
                                                              str(stored.cohort_data))
                                         + " (stored with the voiceprints)")
        if cohort is not None:
            embed.cohort = cohort_vectors(embed, cohort)
            backend.normalisation = cohort_normalisation(len(embed.cohort), str(cohort))
    clips, waves, skipped = speaker_clips(data, rate)
    feats = backend.features(waves)
    impostors: list[float] = []
    try:
        runs = [evaluate_speakers(backend, clips, waves, k, s, feats, impostors) for s in seeds]
    except VoiceprintError as err:
        raise VoiceprintError(f"{data}: {err}") from None
    report = runs[0]
    if len(runs) > 1:  # the headline figures become means over the enrolment draws
        keep = ("backend", "normalisation", "k", "n_clips", "n_speakers", "p_target")
        report = {key: runs[0][key] for key in keep} | {
            "seed": seeds, "n_trials": sum(r["n_trials"] for r in runs), "per_seed": runs}
        for key in HEADLINE:
            values = [r[key] for r in runs if r.get(key) is not None]
            report[key] = float(np.mean(values)) if values else None
            report[f"{key}_std"] = float(np.std(values)) if values else None
    report["skipped"] = [{"path": p, "problem": why} for p, why in skipped]
    if calibrate:
        report["calibrated_threshold"] = _calibrate(model, embed, impostors, data, len(clips),
                                                    cohort)
    return report


def _calibrate(model: str | Path, embed: Embedder, impostors: list[float], data: str | Path,
               n_clips: int, cohort: str | Path | None = None) -> float:
    """Store the score ``FALSE_ACCEPT_TARGET`` of ``impostors`` reach as the accept threshold
    (and, with ``cohort``, the cohort those scores were normalised against)."""
    if not impostors:
        raise VoiceprintError(f"{data}: no impostor trials to calibrate on")
    threshold = float(np.quantile(impostors, 1.0 - FALSE_ACCEPT_TARGET))
    mark = embed.mark
    with folder_lock(model):
        prints = _stored_prints(model, embed, len(mark), threshold)
        prints.threshold, prints.mark = threshold, mark
        prints.calibration = {"data": str(data), "clips": n_clips,
                              "impostor_trials": len(impostors),
                              "false_accept_target": FALSE_ACCEPT_TARGET}
        if cohort is not None:
            prints.cohort, prints.cohort_data = embed.cohort, str(cohort)
        write_voiceprints(model, prints)
    return threshold


__all__ = ["Embedder", "VoiceprintError", "Voiceprints", "enroll", "eval_speakers", "identify",
           "verify"]
