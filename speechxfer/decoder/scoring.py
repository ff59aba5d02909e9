"""Zero-shot command recognition with Whisper's decoder: score each label's spellings.

Instead of training a head, every label is given one or more spellings (aliases) and the
decoder is asked how likely each spelling is as the transcript of the clip, after a fixed
prompt. The score of a label is the best length-normalised log-probability over its
spellings; a softmax over labels (with a temperature) turns scores into probabilities.
``ScoringOptions`` holds every choice of that rule (as openai/whisper's ``DecodingOptions``).

Why forced decoding rather than free transcription (``decoder.transcribe``): the decoder only
ever compares the listed commands, so "for", "fore" or "4." cannot miss, and one decoder pass
scores every label at once (no step-by-step generation).

Batching: one encoder pass per clip; the prompt and every candidate spelling of every label
share one decoder pass, laid out as ``[prompt | cand 1 | cand 2 | ...]`` with an attention mask
that lets each candidate see the prompt and its own earlier tokens only, so the result is the
same as decoding each candidate on its own (see ``test_zeroshot.py``).

Rejection ("none of these"): with ``reject_by`` and ``reject_below`` set, ``predict`` returns
``NONE_LABEL`` when the top probability (``"probability"``), the gap between the two best
probabilities (``"margin"``) or the best raw length-normalised log-probability (``"score"``)
falls under the threshold. ``calibrate`` sets the threshold from clips of the listed commands
so that a chosen fraction of them would be rejected; ``predict_proba`` (used by ``eval``)
never rejects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE, batch_waves, batches_by_length
from ..encoders.registry import WHISPER_DEFAULT_WINDOW, build_whisper, load_tokenizer
from ..encoders.whisper import Whisper
from ..heads import check_real
from ..recognizer import (
    ModelError,
    Prediction,
    Recognizer,
    check_kind,
    check_labels,
    info_from,
    is_model_folder,
    softmax,
    to_waves,
)
from ..store import atomic_folder
from ..vocab import MAX_OTHER_WORDS, SILENCE, UNKNOWN, is_command, nfc

KIND = "zero-shot"
NONE_LABEL = "none"
DEFAULT_PROMPT = "auto"  # build the context prompt from the first alias of every label
ENDINGS = {"eot": ("<|endoftext|>",), "period": (".", "<|endoftext|>"), "none": ()}
COMBINES = ("max", "logsumexp")
MAX_LAYOUT_TOKENS = 2048  # decoder inputs of prompt + every spelling; attention is quadratic in it
REJECT_BY = ("probability", "margin", "score")
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # the name differs between tokenizer files
UNKNOWN_SCORE = -3.0  # garbage level: a command's spelling usually scores above it, other words below
LEVEL_FLOOR = -8.0  # lowest garbage level fitted; where other words are spelt, the level starts there
SILENCE_OFFSET = -1.0  # added to log P(no speech) to bring it to the spellings' scale
SHORTLIST_PER_ROW = 10  # tokens kept per scored position by ``shortlist``
# default spellings; " oh" is how many people say 0 in phone numbers
DIGIT_ALIASES: dict[str, list[str]] = {
    "0": ["zero", "oh", "0"], "1": ["one", "1"], "2": ["two", "2"], "3": ["three", "3"],
    "4": ["four", "4"], "5": ["five", "5"], "6": ["six", "6"], "7": ["seven", "7"],
    "8": ["eight", "8"], "9": ["nine", "9"],
}
# what Whisper writes for an unclear sound, commands included ("off" often as " oh"): never a
# spelling of another word, which would then take those commands
HESITATIONS = frozenset({"uh", "um", "uhh", "umm", "ah", "oh", "eh", "er", "hm", "hmm", "mm",
                         "huh", "ha", "oo", "ooh"})
MAX_OTHER_TOKENS = 8  # an other word spelt in more tokens is a transcript, not a word said
MAX_UNKNOWN_SPELLINGS = 2 * MAX_OTHER_WORDS  # a word and its digit ("eight", "8") each


def default_spellings(label: str) -> list[str]:
    """How a label no alias names is spelt: a digit as its words (``DIGIT_ALIASES``), any other
    label as said, in NFC, its underscores spaces: a folder ``lights_on`` means "lights on",
    which Whisper writes, never "lights_on". The label itself stays as written."""
    if label in DIGIT_ALIASES:
        return list(DIGIT_ALIASES[label])
    return [" ".join(nfc(label).replace("_", " ").split()) or label]


def check_distinct_spellings(aliases: dict[str, list[str]]) -> None:
    """Refuse two labels sharing a spelling (stripped and case-folded: " Eight" is scored for
    "eight" too). A clip of it would score both columns alike, so the decoder could never tell
    them apart: "lights_on" beside "lights on", "Yes" beside "yes", "8" beside "eight"."""
    owner: dict[str, str] = {}
    for label, spellings in aliases.items():
        for spelling in spellings:
            key = spelling.strip().lower()
            other = owner.setdefault(key, label)
            if other != label:
                raise ValueError(f"labels {other!r} and {label!r} share the spelling {key!r}: the "
                                 "decoder cannot tell them apart (merge or rename one of them)")


def label_spellings(labels: list[str],
                    aliases: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The spellings a decoder scores for each command of ``labels`` (``aliases``' where it
    names the label, else ``default_spellings``) and for ``_unknown_`` where ``aliases`` gives
    it other words; a ValueError where two labels share one (``check_distinct_spellings``) or
    an other word is a command's spelling. ``ZeroShotRecognizer`` and ``train``'s check before
    any head trains both build them here, so the two cannot disagree.

    Labels and aliases are matched and spelt in NFC: Whisper's tokens spell composed text, a
    decomposed "é" would be another spelling. Each of ``aliases`` is a list of non-blank words,
    as a saved config's must be: a string would be spelt letter by letter, an empty list break
    the prompt.
    """
    for lab, al in (aliases or {}).items():
        if isinstance(al, str) or not (al or lab == UNKNOWN) or not all(
                isinstance(a, str) and a.strip() for a in al):
            raise ValueError(f"aliases of {lab!r}: {al!r} is not a list of spellings "
                             "(non-blank words)")
    given = {nfc(lab): [nfc(a) for a in al] for lab, al in (aliases or {}).items()}
    spellings = {lab: given[nfc(lab)] if nfc(lab) in given else default_spellings(lab)
                 for lab in labels if is_command(lab)}
    check_distinct_spellings(spellings)
    if given.get(UNKNOWN):
        if UNKNOWN not in labels:
            raise ValueError(f"aliases of {UNKNOWN!r} (other words) need it among the labels")
        spelt = {a.strip().lower() for al in spellings.values() for a in al}
        clash = sorted({a for a in given[UNKNOWN] if a.strip().lower() in spelt})
        if clash:
            raise ValueError(f"aliases of {UNKNOWN!r}: other words {clash} are also "
                             "spellings of a command")
        spellings[UNKNOWN] = given[UNKNOWN]
    return spellings


def other_spellings(words: list[str], commands: list[str],
                    encoder: str) -> tuple[list[str], list[str]]:
    """``_unknown_``'s spellings for the other ``words`` said beside ``commands``, and the
    words left unspelt.

    A word is spelt as a command would be (``default_spellings``: "8" is also "eight",
    "lights_off" is "lights off"), less blanks, hesitations, any longer than
    ``MAX_OTHER_TOKENS`` tokens and any past ``MAX_UNKNOWN_SPELLINGS``, so the words of any
    data fit the decoder layout and config.json.
    A word with a spelling of a command is not spelt at all: "Yes" beside the command "yes",
    or "1" beside "one", is that command, not another word.
    """
    tokenizer = load_tokenizer(encoder)
    taken = {a.strip().lower() for c in commands for a in default_spellings(c)}
    spellings: list[str] = []
    unspelt = []
    for word in words:
        aliases = [a.strip() for a in default_spellings(word)]
        kept = [] if taken & {a.lower() for a in aliases} else [
            a for a in aliases if a and a.lower() not in HESITATIONS
            and len(tokenizer.encode(" " + a, add_special_tokens=False).ids) <= MAX_OTHER_TOKENS]
        new = [a for a in dict.fromkeys(kept) if a not in spellings]
        spellings += new[:MAX_UNKNOWN_SPELLINGS - len(spellings)]
        if not set(kept) & set(spellings):
            unspelt.append(word)
    return spellings, unspelt


@dataclass(frozen=True)
class ScoringOptions:
    """How spellings are scored and turned into label probabilities (config.json keeps each
    field under its own name).

    - ``prompt``: context text before ``<|startoftranscript|>`` (Whisper's ``initial_prompt``);
      ``"auto"``: the first alias of every label; None: no prompt.
    - ``temperature``: divides the label scores before the softmax.
    - ``ending``: what must follow a spelling ("eot": end-of-text; "period": "." then it).
    - ``combine``: a label's score from its spellings' ("max" or "logsumexp").
    - ``capitalise``: also score " Four" for " four".
    - ``reject_by`` / ``reject_below``: ``predict``'s "none of these" rule (see the module doc).
    - ``unknown_score`` / ``silence_offset``: the ``_unknown_`` and ``_silence_`` columns
      (``unknown_score`` None: ``UNKNOWN_SCORE``, or ``LEVEL_FLOOR`` when ``_unknown_`` has
      spellings, see ``ZeroShotRecognizer``).
    - ``batch_size``: clips per encoder and decoder pass.
    """

    prompt: str | None = DEFAULT_PROMPT
    temperature: float = 1.0
    ending: str = "eot"
    combine: str = "max"
    capitalise: bool = True
    reject_by: str | None = None
    reject_below: float | None = None
    unknown_score: float | None = None
    silence_offset: float = SILENCE_OFFSET
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.ending not in ENDINGS or self.combine not in COMBINES:
            raise ValueError(f"ending must be in {sorted(ENDINGS)}, combine in {COMBINES}")
        if self.reject_by is not None and self.reject_by not in REJECT_BY:
            raise ValueError(f"reject_by must be one of {REJECT_BY}, got {self.reject_by!r}")
        if self.unknown_score is not None:
            object.__setattr__(self, "unknown_score", float(self.unknown_score))
        object.__setattr__(self, "silence_offset", float(self.silence_offset))

    def config(self) -> dict:
        """The fields config.json stores (``batch_size`` is a run setting, not the model's)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


OPTION_FIELDS = tuple(f.name for f in fields(ScoringOptions))


def surface_forms(alias: str, capitalise: bool) -> list[str]:
    """How Whisper would write the alias as a whole transcript: a leading space, maybe capitalised."""
    forms = [" " + alias.strip()]
    if capitalise and forms[0][1:2].islower():
        forms.append(" " + alias.strip().capitalize())
    return forms


def temperature_nll(scores: np.ndarray, target: np.ndarray, temps: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood of ``target`` under softmax(scores / t), for each t in
    ``temps``: the criterion every temperature fit here minimises over its grid."""
    z = np.asarray(scores)[None] / temps[:, None, None]  # [temperatures, clips, labels]
    z = z - z.max(2, keepdims=True)
    return (np.log(np.exp(z).sum(2)) - z[:, np.arange(len(target)), target]).mean(1)


class ZeroShotRecognizer(Recognizer):
    """Labels scored by Whisper's decoder as forced transcripts; no trained weights.

    The default window is the padded "2s" (the README's zero-shot table compares windows).
    ``options`` (``ScoringOptions``) holds the scoring rule; keyword arguments named like its
    fields override single fields (``ZeroShotRecognizer(labels, temperature=0.5)``).
    ``aliases`` maps a label to its spellings; a label it does not name keeps the default
    (``default_spellings``: "lights_on" is spelt "lights on"). Labels and spellings are matched
    and spelt in NFC (``data.nfc``). ``device`` is where Whisper runs.

    ``_unknown_`` and ``_silence_`` have no spelling, so they are scored otherwise and the
    system still gives one column per label (a combined system's prior covers them too):

    - ``_silence_``: the log-probability of Whisper's own no-speech token (``<|nocaptions|>``)
      right after ``<|startoftranscript|>``, plus ``silence_offset``. It is what Whisper was
      trained to predict for a window without speech, so noise scores high and words low;
      the offset puts that one-token log-probability on the scale of the spellings' averages.
    - ``_unknown_``: a constant garbage level ``unknown_score`` on the spellings' scale. A word
      that is no command still gets a best spelling, but a poor one: when even the best
      command spelling scores below the level, "some other word" wins. ``_unknown_`` may also
      have spellings (``aliases[UNKNOWN]``: other words the training data holds, such as
      ``vocab.other_words``); its score is then the higher of the level and its best spelling,
      so "dog" spelt as "dog" outscores "down" instead of only falling under a level.

    Both are fitted with the temperature on validation clips of the training speakers
    (``fit_open_set``); the defaults are only a reasonable start.
    """

    model_kind = KIND

    def __init__(
        self,
        labels: list[str],
        aliases: dict[str, list[str]] | None = None,
        encoder: str = "whisper-tiny.en",
        window: str = WHISPER_DEFAULT_WINDOW,
        options: ScoringOptions | None = None,
        model: Whisper | None = None,
        device: str | torch.device = "cpu",
        **option_fields,
    ):
        unknown = set(option_fields) - set(OPTION_FIELDS)
        if unknown:
            raise TypeError(f"unknown scoring option(s) {sorted(unknown)}; "
                            f"choose from {OPTION_FIELDS}")
        options = replace(options or ScoringOptions(), **option_fields)
        check_labels(labels, minimum=1)
        if NONE_LABEL in labels:
            raise ValueError(f"{NONE_LABEL!r} is reserved for rejected clips")
        if not any(is_command(lab) for lab in labels):
            raise ValueError(f"labels {list(labels)} hold no word to spell")
        self.labels = list(labels)
        self.aliases = label_spellings(self.labels, aliases)
        if options.prompt == DEFAULT_PROMPT:
            options = replace(options, prompt=" ".join(
                a[0] for lab, a in self.aliases.items() if is_command(lab)))
        if options.unknown_score is None:
            options = replace(options, unknown_score=(
                LEVEL_FLOOR if UNKNOWN in self.aliases else UNKNOWN_SCORE))
        self.options = options
        self.encoder_name, self.window = encoder, window
        self.sample_rate = SAMPLE_RATE
        self.info: dict = {}  # strategy, metrics, data: travels in config.json
        self.model = model if model is not None else build_whisper(encoder, window=window)
        self.model.encoder.window = window
        self.tokenizer = load_tokenizer(encoder)
        self.device = torch.device("cpu")
        self._build_candidates()
        self.to(device)

    def to(self, device: str | torch.device) -> ZeroShotRecognizer:
        """Move Whisper and the decoder layout to ``device``; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        for name in ("_tokens", "_positions", "_attn_mask", "_rows", "_row_of_target",
                     "_targets", "_average", "_cand_label"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    # ---- candidate layout -------------------------------------------------------------
    def prefix_tokens(self) -> list[int]:
        """``[<|startofprev|> prompt] <|startoftranscript|> [<|en|><|transcribe|>] <|notimestamps|>``."""
        tid = self.tokenizer.token_to_id
        prefix = []
        if self.options.prompt:
            prefix = [tid("<|startofprev|>"), *self.encode_text(" " + self.options.prompt.strip())]
        prefix.append(tid("<|startoftranscript|>"))
        if not self.encoder_name.endswith(".en"):  # multilingual models also name the task
            prefix += [tid("<|en|>"), tid("<|transcribe|>")]
        return prefix + [tid("<|notimestamps|>")]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _build_candidates(self) -> None:
        """Decoder inputs as a trie after the prompt, its attention mask, and what scores what.

        A candidate's last token is only ever a target, never an input, and candidates that
        share leading tokens share their inputs: so " one" + end-of-text costs one input token.
        ``_silence_`` is one more candidate: the no-speech token read at the position after
        ``<|startoftranscript|>`` (no input token of its own); ``_unknown_`` has none.
        """
        prefix = self.prefix_tokens()
        end = [self.tokenizer.token_to_id(t) if t.startswith("<|") else self.encode_text(t)[0]
               for t in ENDINGS[self.options.ending]]
        # a spelling once per label: "Eight" beside "eight" (capitalised, the same tokens), or a
        # word listed twice, would count twice under logsumexp
        cands = [(i, list(toks)) for i, toks in dict.fromkeys(
            (i, tuple(self.encode_text(form) + end))
            for i, lab in enumerate(self.labels) for alias in self.aliases.get(lab, [])
            for form in surface_forms(alias, self.options.capitalise))]
        n_p = len(prefix)
        if n_p + max(len(t) for _, t in cands) > self.model.dims.n_text_ctx:
            raise ValueError("prompt plus the longest alias exceed the decoder's context")
        if n_p + sum(len(t) - 1 for _, t in cands) > MAX_LAYOUT_TOKENS:
            raise ValueError(f"prompt plus every spelling of {len(self.labels)} labels exceed "
                             f"{MAX_LAYOUT_TOKENS} decoder tokens")
        tokens, positions = list(prefix), list(range(n_p))
        seen = [list(range(k + 1)) for k in range(n_p)]  # causal over the prompt
        node: dict[tuple[int, ...], int] = {}
        rows, targets, target_cand = [], [], []
        for c, (_, toks) in enumerate(cands):
            for k, t in enumerate(toks):
                rows.append(n_p - 1 if k == 0 else node[tuple(toks[:k])])
                targets.append(t)
                target_cand.append(c)
                key = tuple(toks[: k + 1])
                if k < len(toks) - 1 and key not in node:
                    node[key] = len(tokens)
                    parent = seen[n_p - 1] if k == 0 else seen[node[tuple(toks[:k])]]
                    seen.append([*parent, len(tokens)])
                    tokens.append(t)
                    positions.append(n_p + k)
        cand_label = [lab for lab, _ in cands]
        if SILENCE in self.labels:
            rows.append(prefix.index(self.tokenizer.token_to_id("<|startoftranscript|>")))
            targets.append(self.no_speech_token())
            target_cand.append(len(cand_label))
            cand_label.append(self.labels.index(SILENCE))
        mask = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
        for i, visible in enumerate(seen):
            mask[i, visible] = True
        self._tokens, self._positions, self._attn_mask = (
            torch.tensor(tokens), torch.tensor(positions), mask)
        self._rows, self._row_of_target = torch.unique(torch.tensor(rows), return_inverse=True)
        self._targets = torch.tensor(targets)
        owner = torch.tensor(target_cand)
        average = torch.zeros(len(targets), len(cand_label))
        average[torch.arange(len(targets)), owner] = 1.0
        self._average = average / torch.bincount(owner, minlength=len(cand_label)).float()
        self._cand_label = torch.tensor(cand_label)

    def no_speech_token(self) -> int:
        """Whisper's no-speech token (its silence detector reads it after start-of-transcript)."""
        for name in NO_SPEECH_TOKENS:
            token = self.tokenizer.token_to_id(name)
            if token is not None:
                return token
        raise ValueError(f"the {self.encoder_name} tokenizer has no no-speech token "
                         f"{NO_SPEECH_TOKENS} to score {SILENCE!r} with")

    # ---- scoring ---------------------------------------------------------------------
    def encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final encoder states and the cross-attention mask (None in the faithful 30-s window)."""
        out = self.model.encoder(waves.to(self.device), lengths.to(self.device))
        return out.hidden_states[-1], (out.mask if self.window == "clip" else None)

    def decoder_input(self, batch: int) -> torch.Tensor:
        """Token + position embeddings of the whole layout, repeated for the batch."""
        dec = self.model.decoder
        x = dec.token_embedding(self._tokens) + dec.positional_embedding[self._positions]
        return x.expand(batch, *x.shape)

    def run_decoder_blocks(
        self, x: torch.Tensor, states: torch.Tensor, mask: torch.Tensor | None,
        start: int = 0, stop: int | None = None,
    ) -> torch.Tensor:
        """Decoder blocks ``start:stop`` over the layout (so a frozen bottom can be cached):
        each block as Whisper runs it, with the layout's mask in place of the causal one."""
        ctx_mask = None if mask is None else mask[:, None, None, :]
        for block in list(self.model.decoder.blocks)[start:stop]:
            x = block(x, mask=self._attn_mask, context=states, context_mask=ctx_mask)
        return x

    def scores_from_hidden(self, x: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate scores [B, candidates] from the last block's output.

        ``vocab`` (token ids that include every target) restricts the softmax normaliser to
        those tokens: a cheap stand-in for the 51k-token one during fine-tuning only.
        """
        logp = torch.log_softmax(self.row_logits(x, vocab).float(), dim=-1)
        targets = self._targets if vocab is None else self._vocab_index(vocab)
        token_lp = logp[:, self._row_of_target, targets]  # [B, targets]
        return token_lp @ self._average

    def row_logits(self, x: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's token logits at the scored positions (``_rows``) of the last block's
        output ``x``: [B, rows, vocab] (only the ``vocab`` tokens' columns when given)."""
        dec = self.model.decoder
        weight = dec.token_embedding.weight if vocab is None else dec.token_embedding.weight[vocab]
        return dec.ln(x[:, self._rows]) @ weight.T

    def _vocab_index(self, vocab: torch.Tensor) -> torch.Tensor:
        position = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long, device=vocab.device)
        position[vocab] = torch.arange(len(vocab), device=vocab.device)
        index = position[self._targets]
        if bool((index < 0).any()):
            raise ValueError("the restricted vocabulary must contain every target token")
        return index

    def candidate_scores(self, states: torch.Tensor, mask: torch.Tensor | None,
                         vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Length-normalised log-probability of every candidate spelling: [B, candidates]
        (``vocab``: a restricted normaliser, see ``scores_from_hidden`` and ``shortlist``)."""
        x = self.run_decoder_blocks(self.decoder_input(states.shape[0]), states, mask)
        return self.scores_from_hidden(x, vocab)

    @torch.no_grad()
    def shortlist(self, waves: list[torch.Tensor], per_row: int = SHORTLIST_PER_ROW) -> torch.Tensor:
        """Token ids for a restricted normaliser: every target, and the ``per_row`` likeliest
        tokens at every scored position on ``waves`` (clips of the listed words).

        Why: most of the prior's cost is the 51k-token projection behind each log-softmax, and
        almost all of a position's probability sits on a few tokens ("one" is followed by the
        end of text, ".", ",", another number...): tokens that no such clip puts near the top
        add next to nothing to the normaliser."""
        self.model.eval()
        found = set(self._targets.tolist())
        for idx in batches_by_length(waves, self.options.batch_size):
            batch, lengths = batch_waves([waves[i] for i in idx])
            states, mask = self.encode(batch, lengths)
            logits = self.row_logits(
                self.run_decoder_blocks(self.decoder_input(len(idx)), states, mask))
            found.update(logits.topk(min(per_row, logits.shape[-1]), -1).indices.flatten().tolist())
        return torch.tensor(sorted(found), device=self.device)

    def labels_from_candidates(self, cand: torch.Tensor) -> torch.Tensor:
        """Each label's score: max (or logsumexp) over its spellings: [B, labels].

        ``_unknown_`` is the constant ``unknown_score``, or its best spelling where that is
        higher; ``_silence_`` is the no-speech log-probability plus ``silence_offset`` (see the
        class docstring).
        """
        columns = []
        for i, lab in enumerate(self.labels):
            level = cand.new_full(cand.shape[:1], self.options.unknown_score)
            if lab == UNKNOWN and lab not in self.aliases:
                columns.append(level)
                continue
            part = cand[:, self._cand_label == i]
            columns.append(part.amax(1) if self.options.combine == "max" else part.logsumexp(1))
            if lab == UNKNOWN:
                columns[-1] = torch.maximum(columns[-1], level)
            if lab == SILENCE:
                columns[-1] = columns[-1] + self.options.silence_offset
        return torch.stack(columns, 1)

    def label_scores(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Each label's score: max (or logsumexp) over its spellings: [B, labels]."""
        return self.labels_from_candidates(self.candidate_scores(states, mask))

    @torch.no_grad()
    def scores(self, waves: list[torch.Tensor]) -> np.ndarray:
        """Label scores [n, labels] for clips at 16 kHz, batched by similar length."""
        self.model.eval()
        out = np.zeros((len(waves), len(self.labels)), np.float32)
        for idx in batches_by_length(waves, self.options.batch_size):
            batch, lengths = batch_waves([waves[i] for i in idx])
            out[idx] = self.label_scores(*self.encode(batch, lengths)).cpu().numpy()
        return out

    def proba_from_scores(self, scores: np.ndarray) -> np.ndarray:
        return softmax(scores, self.options.temperature)

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        return self.proba_from_scores(self.scores(waves))

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """The quantity ``reject_below`` is compared with, per clip."""
        if self.options.reject_by == "score":
            return scores[:, [is_command(lab) for lab in self.labels]].max(1)
        probs = np.sort(self.proba_from_scores(scores), axis=1)
        if self.options.reject_by == "margin":
            return probs[:, -1] - (probs[:, -2] if probs.shape[1] > 1 else 0.0)
        return probs[:, -1]

    def predict_batch(self, items: list, sample_rate: int | None = None) -> list[Prediction]:
        """Like every recogniser, except that low-confidence clips get ``NONE_LABEL``."""
        waves = to_waves(items, sample_rate, self.sample_rate)
        scores = self.scores(waves)
        preds = self.predictions(self.proba_from_scores(scores))
        if self.options.reject_by and self.options.reject_below is not None:
            for pred, rejected in zip(preds, self.confidence(scores) < self.options.reject_below):
                if rejected:
                    pred.label = NONE_LABEL
        return preds

    def fit_open_set(self, scores: np.ndarray, truth: list[str]) -> tuple[dict, np.ndarray]:
        """Fit ``unknown_score``, ``silence_offset`` and the temperature (least NLL) on clips of
        the training speakers: ``scores`` from ``self.scores`` on them, ``truth`` their labels
        (unknown words and silence among them). Returns what was set, and ``scores`` as
        ``self.scores`` now gives them (for ``proba_from_scores`` without a second pass).

        Why NLL over all three: they set how the two scored-otherwise columns weigh against
        the spellings, so one criterion fits them together; a grid keeps it exact and cheap.
        Where ``_unknown_`` has spellings, ``scores`` hold the higher of the level and the best
        of them, so only levels from the current one up are tried (such a system starts at
        ``LEVEL_FLOOR``, the grid's lowest).
        """
        opts = self.options
        target = np.array([self.labels.index(t) for t in truth])
        base = np.asarray(scores, dtype=np.float64).copy()
        silence = self.labels.index(SILENCE) if SILENCE in self.labels else None
        if silence is not None:
            base[:, silence] -= opts.silence_offset
        unknown = self.labels.index(UNKNOWN) if UNKNOWN in self.labels else None
        spelt = UNKNOWN in self.aliases
        levels = np.arange(LEVEL_FLOOR, 0.01, 0.25) if unknown is not None else []
        levels = [x for x in levels if not spelt or x >= opts.unknown_score] or [opts.unknown_score]
        offsets = np.arange(-6.0, 4.01, 0.25) if silence is not None else [opts.silence_offset]
        temps = np.geomspace(0.05, 10.0, 41)
        best = (np.inf, opts.unknown_score, opts.silence_offset, opts.temperature)
        for level in levels:
            for offset in offsets:
                z = base.copy()
                if unknown is not None:
                    z[:, unknown] = np.maximum(base[:, unknown], level) if spelt else level
                if silence is not None:
                    z[:, silence] += offset
                nll = temperature_nll(z, target, temps)
                i = int(nll.argmin())
                if nll[i] < best[0] - 1e-12:
                    best = (float(nll[i]), float(level), float(offset), float(temps[i]))
        self.options = replace(opts, unknown_score=best[1], silence_offset=best[2],
                               temperature=best[3])
        if unknown is not None:
            level = self.options.unknown_score
            base[:, unknown] = np.maximum(base[:, unknown], level) if spelt else level
        if silence is not None:
            base[:, silence] += self.options.silence_offset
        fitted = {"unknown_score": self.options.unknown_score,
                  "silence_offset": self.options.silence_offset,
                  "temperature": self.options.temperature, "nll": best[0], "n": len(truth)}
        return fitted, base.astype(np.float32)

    def calibrate(
        self, waves: list[torch.Tensor], truth: list[str], reject_by: str = "score",
        false_reject: float = 0.05,
    ) -> dict:
        """Fit the temperature (least NLL) and the rejection threshold on clips you pass.

        ``waves`` must be clips of the listed commands (never the test speaker's): the
        threshold is the ``false_reject`` quantile of their confidence, so about that
        fraction of in-vocabulary clips will be rejected. Returns what was set.
        """
        if reject_by not in REJECT_BY:
            raise ValueError(f"reject_by must be one of {REJECT_BY}, got {reject_by!r}")
        scores = self.scores(waves)
        target = np.array([self.labels.index(t) for t in truth])
        grid = np.geomspace(0.01, 10.0, 61)
        nll = temperature_nll(scores, target, grid)
        self.options = replace(self.options, temperature=float(grid[int(np.argmin(nll))]),
                               reject_by=reject_by)
        self.options = replace(self.options,
                               reject_below=float(np.quantile(self.confidence(scores),
                                                              false_reject)))
        return {"temperature": self.options.temperature, "reject_by": reject_by,
                "reject_below": self.options.reject_below, "false_reject": false_reject,
                "n": len(waves)}

    # ---- persistence -------------------------------------------------------------------
    def config(self) -> dict:
        return {
            **self.config_header(),
            "encoder": {"name": self.encoder_name, "window": self.window},
            "sample_rate": self.sample_rate, "labels": self.labels, "aliases": self.aliases,
            **self.options.config(), **self.rejection_config(), **self.info,
        }

    def save(self, directory: str | Path) -> Path:
        """config.json only: the weights are the installed package's, named by the encoder."""
        directory = Path(directory)
        with atomic_folder(directory, is_model_folder) as folder:
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
        return directory

    @classmethod
    def from_folder(cls, directory: Path, config: dict,
                    device: str | torch.device = "cpu", **extra) -> ZeroShotRecognizer:
        """A system from a checked config (``extra``: a subclass's constructor arguments); what
        the constructor refuses (an unknown encoder or window, a prompt too long for the
        decoder) is a ModelError too."""
        check_kind(directory, config, cls.model_kind)
        args = scoring_args(config, directory)
        try:
            system = cls(**args, device=device, **extra)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        system.load_rejection(config, directory)
        system.info = info_from(config)
        return system


CONFIG_FIELDS = ("labels", "aliases", "encoder", "prompt", "temperature", "ending", "combine",
                 "capitalise", "reject_by", "reject_below")


def scoring_args(config: dict, directory: Path) -> dict:
    """Constructor arguments of a zero-shot (or generative) system from its config, every
    field checked first: a wrong one is a ModelError naming it, before Whisper is built."""
    missing = [k for k in CONFIG_FIELDS if k not in config]
    if missing:
        raise ModelError(f"{directory}: config.json lacks {missing}")
    c = config

    def words(v: object, most: int = 64) -> bool:
        return isinstance(v, list) and 0 < len(v) <= most and all(
            isinstance(x, str) and x.strip() for x in v)

    def choice(v: object, options) -> bool:
        return isinstance(v, str) and v in options

    def number(v: object, low: float, high: float) -> bool:
        try:
            check_real("", v, low, high, low_open=low == 0)
        except ValueError:
            return False
        return True

    wrong = {
        "aliases": not (isinstance(c["aliases"], dict) and all(
            words(v, MAX_UNKNOWN_SPELLINGS if k == UNKNOWN else 64)
            for k, v in c["aliases"].items())),
        "encoder": not (isinstance(c["encoder"], dict) and isinstance(c["encoder"].get("name"), str)
                        and isinstance(c["encoder"].get("window"), str)),
        "prompt": not (c["prompt"] is None or isinstance(c["prompt"], str)),
        "temperature": not number(c["temperature"], 0, 1e6),
        "ending": not choice(c["ending"], ENDINGS),
        "combine": not choice(c["combine"], COMBINES),
        "capitalise": not isinstance(c["capitalise"], bool),
        "reject_by": not (c["reject_by"] is None or choice(c["reject_by"], REJECT_BY)),
        "reject_below": not (c["reject_below"] is None or number(c["reject_below"], -1e6, 1e6)),
        # optional (older models have no open-set columns): the constructor's defaults
        "unknown_score": not number(c.get("unknown_score", UNKNOWN_SCORE), -1e3, 1e3),
        "silence_offset": not number(c.get("silence_offset", SILENCE_OFFSET), -1e3, 1e3),
    }
    bad = [k for k, w in wrong.items() if w]
    if bad:
        raise ModelError(f"{directory}: config field {bad[0]!r} is invalid: {c[bad[0]]!r:.80}")
    try:
        labels = check_labels(c["labels"], minimum=1)
    except ValueError as err:
        raise ModelError(f"{directory}: {err}") from None
    stray = sorted(set(c["aliases"]) - {lab for lab in labels if lab != SILENCE} - {UNKNOWN})
    if stray:  # the spellings of a misspelt label, or of _silence_, would be ignored unsaid
        raise ModelError(f"{directory / 'config.json'}: 'aliases' spells {stray}, which are "
                         f"no labels a word is spelt for ({[x for x in labels if x != SILENCE]})")
    options = ScoringOptions(
        prompt=c["prompt"], temperature=c["temperature"], ending=c["ending"],
        combine=c["combine"], capitalise=c["capitalise"], reject_by=c["reject_by"],
        reject_below=c["reject_below"], unknown_score=c.get("unknown_score", UNKNOWN_SCORE),
        silence_offset=c.get("silence_offset", SILENCE_OFFSET))
    return {"labels": labels, "aliases": c["aliases"], "encoder": c["encoder"]["name"],
            "window": c["encoder"]["window"], "options": options}
