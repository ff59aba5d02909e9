"""Zero-shot command recognition with Whisper's decoder: score each label's spellings.

Instead of training a head, every label is given one or more spellings (aliases) and the
decoder is asked how likely each spelling is as the transcript of the clip, after a fixed
prompt. The score of a label is the best length-normalised log-probability over its
spellings; a softmax over labels (with a temperature) turns scores into probabilities.

Why forced decoding rather than free transcription: the decoder only ever compares the
listed commands, so "for", "fore" or "4." cannot miss, and one decoder pass scores every
label at once (no step-by-step generation).

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

With labelled clips, two ways keep the decoder in the loop (``train --strategy ...``):
``GenerativeRecognizer`` ("generative") fine-tunes the decoder's last block on the label
scores themselves; ``CombinedRecognizer`` ("combined") multiplies a trained classifier head's
probabilities by the zero-shot ones raised to a weight chosen on training speakers' clips.
See recipes/zero_shot_vs_finetune for how they compare with a head alone.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .audio import batch_waves
from .encoders.registry import (
    WHISPER_DEFAULT_WINDOW,
    build_whisper,
    decoding_rules,
    load_tokenizer,
)
from .encoders.whisper import SAMPLE_RATE, Whisper
from .heads import check_int, check_real
from .model import (
    FORMAT,
    FORMAT_VERSION,
    PRIMARY_TASK,
    CommandClassifier,
    ModelError,
    Prediction,
    Recognizer,
    check_labels,
    is_model_folder,
    load_model,
    read_config,
    read_weights,
    sub_folder,
    to_wave,
)
from .openset import DEFAULT_MAX_FALSE_ACCEPT
from .store import atomic_folder, work_folder
from .vocab import SILENCE, UNKNOWN, is_command

KIND = "zero-shot"
STRATEGY = "zero-shot"  # the ``train --strategy`` value that builds one of these
NONE_LABEL = "none"
DEFAULT_PROMPT = "auto"  # build the context prompt from the first alias of every label
TRANSCRIPT_TOKENS = 12  # greedy baseline: enough for a command, stops runaway repetition
ENDINGS = {"eot": ("<|endoftext|>",), "period": (".", "<|endoftext|>"), "none": ()}
COMBINES = ("max", "logsumexp")
MAX_LAYOUT_TOKENS = 2048  # decoder inputs of prompt + every spelling; attention is quadratic in it
REJECT_BY = ("probability", "margin", "score")
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # the name differs between tokenizer files
UNKNOWN_SCORE = -3.0  # garbage level: a command's spelling usually scores above it, other words below
SILENCE_OFFSET = -1.0  # added to log P(no speech) to bring it to the spellings' scale
# default spellings; " oh" is how many people say 0 in phone numbers
DIGIT_ALIASES: dict[str, list[str]] = {
    "0": ["zero", "oh", "0"], "1": ["one", "1"], "2": ["two", "2"], "3": ["three", "3"],
    "4": ["four", "4"], "5": ["five", "5"], "6": ["six", "6"], "7": ["seven", "7"],
    "8": ["eight", "8"], "9": ["nine", "9"],
}


def surface_forms(alias: str, capitalise: bool) -> list[str]:
    """How Whisper would write the alias as a whole transcript: a leading space, maybe capitalised."""
    forms = [" " + alias.strip()]
    if capitalise and forms[0][1:2].islower():
        forms.append(" " + alias.strip().capitalize())
    return forms


def normalise_text(text: str) -> list[str]:
    """Lower-case words without punctuation (for matching transcripts to aliases)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def text_to_label(text: str, aliases: dict[str, list[str]]) -> str | None:
    """The label whose alias appears first in a transcript, or None: free transcription's mapping."""
    lookup = {a.lower(): label for label, alist in aliases.items() for a in [label, *alist]}
    words = normalise_text(text)
    for n in (3, 2, 1):  # multi-word aliases first
        for i in range(len(words) - n + 1):
            phrase = " ".join(words[i : i + n])
            if phrase in lookup:
                return lookup[phrase]
    return None


class ZeroShotRecognizer(Recognizer):
    """Labels scored by Whisper's decoder as forced transcripts; no trained weights.

    The default window is the padded "2s": on all four bundled speakers (400 clips) it scored
    0.983, against 0.940 for "clip" and 0.975 for "30s" (40 clips), at the clip window's cost.

    ``_unknown_`` and ``_silence_`` have no spelling, so they are scored otherwise and the
    system still gives one column per label (a combined system's prior covers them too):

    - ``_silence_``: the log-probability of Whisper's own no-speech token (``<|nocaptions|>``)
      right after ``<|startoftranscript|>``, plus ``silence_offset``. It is what Whisper was
      trained to predict for a window without speech, so noise scores high and words low;
      the offset puts that one-token log-probability on the scale of the spellings' averages.
    - ``_unknown_``: a constant garbage level ``unknown_score`` on the spellings' scale. A word
      that is no command still gets a best spelling, but a poor one: when even the best
      command spelling scores below the level, "some other word" wins.

    Both are fitted with the temperature on validation clips of the training speakers
    (``fit_open_set``); the defaults are only a reasonable start.
    """

    def __init__(
        self,
        labels: list[str],
        aliases: dict[str, list[str]] | None = None,
        encoder: str = "whisper-tiny.en",
        window: str = WHISPER_DEFAULT_WINDOW,
        prompt: str | None = DEFAULT_PROMPT,
        temperature: float = 1.0,
        ending: str = "eot",
        combine: str = "max",
        capitalise: bool = True,
        reject_by: str | None = None,
        reject_below: float | None = None,
        batch_size: int = 8,
        model: Whisper | None = None,
        unknown_score: float = UNKNOWN_SCORE,
        silence_offset: float = SILENCE_OFFSET,
    ):
        if ending not in ENDINGS or combine not in COMBINES:
            raise ValueError(f"ending must be in {sorted(ENDINGS)}, combine in {COMBINES}")
        if reject_by is not None and reject_by not in REJECT_BY:
            raise ValueError(f"reject_by must be one of {REJECT_BY}, got {reject_by!r}")
        check_labels(labels, minimum=1)
        if NONE_LABEL in labels:
            raise ValueError(f"{NONE_LABEL!r} is reserved for rejected clips")
        if not any(is_command(lab) for lab in labels):
            raise ValueError(f"labels {list(labels)} hold no word to spell")
        self.labels = list(labels)
        table = DIGIT_ALIASES if aliases is None else aliases
        self.aliases = {lab: list(table.get(lab, [lab])) for lab in self.labels if is_command(lab)}
        self.unknown_score, self.silence_offset = float(unknown_score), float(silence_offset)
        self.encoder_name, self.window = encoder, window
        if prompt == DEFAULT_PROMPT:
            prompt = " ".join(aliases[0] for aliases in self.aliases.values())
        self.prompt = prompt
        self.temperature, self.ending, self.combine = temperature, ending, combine
        self.capitalise = capitalise
        self.reject_by, self.reject_below = reject_by, reject_below
        self.batch_size = batch_size
        self.sample_rate = SAMPLE_RATE
        self.info: dict = {}  # strategy, metrics, data: travels in config.json
        self.model = model if model is not None else build_whisper(encoder, window=window)
        self.model.encoder.window = window
        self.tokenizer = load_tokenizer(encoder)
        self._build_candidates()

    # ---- candidate layout -------------------------------------------------------------
    def prefix_tokens(self) -> list[int]:
        """``[<|startofprev|> prompt] <|startoftranscript|> [<|en|><|transcribe|>] <|notimestamps|>``."""
        tid = self.tokenizer.token_to_id
        prefix = []
        if self.prompt:
            prefix = [tid("<|startofprev|>"), *self.encode_text(" " + self.prompt.strip())]
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
               for t in ENDINGS[self.ending]]
        cands = [(i, self.encode_text(form) + end)
                 for i, lab in enumerate(self.labels) for alias in self.aliases.get(lab, [])
                 for form in surface_forms(alias, self.capitalise)]
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
        out = self.model.encoder(waves, lengths)
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
        """Decoder blocks ``start:stop`` over the layout (so a frozen bottom can be cached)."""
        ctx_mask = None if mask is None else mask[:, None, None, :]
        for block in list(self.model.decoder.blocks)[start:stop]:
            x = x + block.attn(block.attn_ln(x), mask=self._attn_mask)
            x = x + block.cross_attn(block.cross_attn_ln(x), states, mask=ctx_mask)
            x = x + block.mlp(block.mlp_ln(x))
        return x

    def scores_from_hidden(self, x: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate scores [B, candidates] from the last block's output.

        ``vocab`` (token ids that include every target) restricts the softmax normaliser to
        those tokens: a cheap stand-in for the 51k-token one during fine-tuning only.
        """
        dec = self.model.decoder
        hidden = dec.ln(x[:, self._rows])
        weight = dec.token_embedding.weight if vocab is None else dec.token_embedding.weight[vocab]
        logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
        targets = self._targets if vocab is None else self._vocab_index(vocab)
        token_lp = logp[:, self._row_of_target, targets]  # [B, targets]
        return token_lp @ self._average

    def _vocab_index(self, vocab: torch.Tensor) -> torch.Tensor:
        position = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long)
        position[vocab] = torch.arange(len(vocab))
        index = position[self._targets]
        if bool((index < 0).any()):
            raise ValueError("the restricted vocabulary must contain every target token")
        return index

    def candidate_scores(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Length-normalised log-probability of every candidate spelling: [B, candidates]."""
        x = self.run_decoder_blocks(self.decoder_input(states.shape[0]), states, mask)
        return self.scores_from_hidden(x)

    def labels_from_candidates(self, cand: torch.Tensor) -> torch.Tensor:
        """Each label's score: max (or logsumexp) over its spellings: [B, labels].

        ``_unknown_`` is the constant ``unknown_score``; ``_silence_`` is the no-speech
        log-probability plus ``silence_offset`` (see the class docstring).
        """
        columns = []
        for i, lab in enumerate(self.labels):
            if lab == UNKNOWN:
                columns.append(cand.new_full(cand.shape[:1], self.unknown_score))
                continue
            part = cand[:, self._cand_label == i]
            columns.append(part.amax(1) if self.combine == "max" else part.logsumexp(1))
            if lab == SILENCE:
                columns[-1] = columns[-1] + self.silence_offset
        return torch.stack(columns, 1)

    def label_scores(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Each label's score: max (or logsumexp) over its spellings: [B, labels]."""
        return self.labels_from_candidates(self.candidate_scores(states, mask))

    @torch.no_grad()
    def scores(self, waves: list[torch.Tensor]) -> np.ndarray:
        """Label scores [n, labels] for clips at 16 kHz, batched by similar length."""
        self.model.eval()
        order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
        out = np.zeros((len(waves), len(self.labels)), np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch, lengths = batch_waves([waves[i] for i in idx])
            out[idx] = self.label_scores(*self.encode(batch, lengths)).numpy()
        return out

    @torch.no_grad()
    def cached_scores(self, cache: DecoderCache, batch_size: int = 16) -> np.ndarray:
        """Label scores [n, labels] from a ``DecoderCache``: only the blocks above its frozen
        bottom run (``scores`` up to the cache's float16 rounding, ~1e-3)."""
        self.model.eval()
        out = np.zeros((len(cache.states), len(self.labels)), np.float32)
        for start in range(0, len(out), batch_size):
            idx = list(range(start, min(len(out), start + batch_size)))
            x, states, mask = cache.batch(idx, self.window == "clip")
            top = self.run_decoder_blocks(x, states, mask, cache.tuned_from)
            out[idx] = self.labels_from_candidates(self.scores_from_hidden(top)).numpy()
        return out

    def proba_from_scores(self, scores: np.ndarray) -> np.ndarray:
        z = scores / self.temperature
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        return self.proba_from_scores(self.scores(waves))

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """The quantity ``reject_below`` is compared with, per clip."""
        if self.reject_by == "score":
            return scores[:, [is_command(lab) for lab in self.labels]].max(1)
        probs = np.sort(self.proba_from_scores(scores), axis=1)
        if self.reject_by == "margin":
            return probs[:, -1] - (probs[:, -2] if probs.shape[1] > 1 else 0.0)
        return probs[:, -1]

    def predict_batch(self, items: list, sample_rate: int | None = None) -> list[Prediction]:
        """Like every recogniser, except that low-confidence clips get ``NONE_LABEL``."""
        waves = [to_wave(x, sample_rate, self.sample_rate) for x in items]
        scores = self.scores(waves)
        preds = self.predictions(self.proba_from_scores(scores))
        if self.reject_by and self.reject_below is not None:
            for pred, rejected in zip(preds, self.confidence(scores) < self.reject_below):
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
        """
        target = np.array([self.labels.index(t) for t in truth])
        base = np.asarray(scores, dtype=np.float64).copy()
        silence = self.labels.index(SILENCE) if SILENCE in self.labels else None
        if silence is not None:
            base[:, silence] -= self.silence_offset
        unknown = self.labels.index(UNKNOWN) if UNKNOWN in self.labels else None
        levels = np.arange(-8.0, 0.01, 0.25) if unknown is not None else [self.unknown_score]
        offsets = np.arange(-6.0, 4.01, 0.25) if silence is not None else [self.silence_offset]
        temps = np.geomspace(0.05, 10.0, 41)
        best = (np.inf, self.unknown_score, self.silence_offset, self.temperature)
        for level in levels:
            for offset in offsets:
                z = base.copy()
                if unknown is not None:
                    z[:, unknown] = level
                if silence is not None:
                    z[:, silence] += offset
                z = z[None] / temps[:, None, None]  # [temperatures, clips, labels]
                z = z - z.max(2, keepdims=True)
                nll = (np.log(np.exp(z).sum(2)) - z[:, np.arange(len(target)), target]).mean(1)
                i = int(nll.argmin())
                if nll[i] < best[0] - 1e-12:
                    best = (float(nll[i]), float(level), float(offset), float(temps[i]))
        _, self.unknown_score, self.silence_offset, self.temperature = best
        if unknown is not None:
            base[:, unknown] = self.unknown_score
        if silence is not None:
            base[:, silence] += self.silence_offset
        fitted = {"unknown_score": self.unknown_score, "silence_offset": self.silence_offset,
                  "temperature": self.temperature, "nll": best[0], "n": len(truth)}
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
        nll = []
        for t in grid:
            z = scores / t
            z = z - z.max(1, keepdims=True)
            nll.append(float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), target])))
        self.temperature = float(grid[int(np.argmin(nll))])
        self.reject_by = reject_by
        self.reject_below = float(np.quantile(self.confidence(scores), false_reject))
        return {"temperature": self.temperature, "reject_by": reject_by,
                "reject_below": self.reject_below, "false_reject": false_reject, "n": len(waves)}

    # ---- free transcription (the baseline this is measured against) --------------------
    @torch.no_grad()
    def transcribe(self, waves: list[torch.Tensor]) -> list[str]:
        """Greedy transcripts with the same prompt (Whisper's ``initial_prompt``)."""
        rules = decoding_rules(self.encoder_name)
        order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
        texts = [""] * len(waves)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch, lengths = batch_waves([waves[i] for i in idx])
            states, mask = self.encode(batch, lengths)
            prefix = self.prefix_tokens()
            ids = self.model.greedy_decode(states, prefix, rules, mask,
                                           max_length=len(prefix) + TRANSCRIPT_TOKENS)
            for i, row in zip(idx, ids):
                texts[i] = self.tokenizer.decode(row)
        return texts

    # ---- persistence -------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "kind": KIND,
            "encoder": {"name": self.encoder_name, "window": self.window},
            "sample_rate": self.sample_rate, "labels": self.labels, "aliases": self.aliases,
            "prompt": self.prompt, "temperature": self.temperature, "ending": self.ending,
            "combine": self.combine, "capitalise": self.capitalise,
            "reject_by": self.reject_by, "reject_below": self.reject_below,
            "unknown_score": self.unknown_score, "silence_offset": self.silence_offset,
            **self.rejection_config(), **self.info,
        }

    def save(self, directory: str | Path) -> Path:
        """config.json only: the weights are the installed package's, named by the encoder."""
        directory = Path(directory)
        with atomic_folder(directory, is_model_folder) as folder:
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ZeroShotRecognizer:
        directory = Path(directory)
        config = read_config(directory, KIND)
        system = _build(cls, directory, config)
        system.info = {k: config[k] for k in ("strategy", "metrics", "data") if k in config}
        return system


class DecoderCache:
    """Per clip: final encoder states, the decoder layout's hidden state below the tuned
    blocks, and the zero-shot label scores, all from one frozen pass.

    Why: with the encoder and the bottom decoder blocks frozen, a fine-tuning step only runs
    the tuned blocks over cached inputs, and the zero-shot scores come for free. Stored in
    float16 per clip; in the clip window only the real frames are kept.
    """

    def __init__(self, system: ZeroShotRecognizer, waves: list[torch.Tensor], tuned_from: int,
                 batch_size: int = 16):
        self.tuned_from = tuned_from
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(waves)
        self.hidden: list[torch.Tensor] = [torch.empty(0)] * len(waves)
        self.scores = np.zeros((len(waves), len(system.labels)), np.float32)
        order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
        system.model.eval()
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                states, mask = system.encode(*batch_waves([waves[i] for i in idx]))
                x = system.run_decoder_blocks(system.decoder_input(len(idx)), states, mask,
                                              0, tuned_from)
                top = system.run_decoder_blocks(x, states, mask, tuned_from)
                self.scores[idx] = system.labels_from_candidates(
                    system.scores_from_hidden(top)).numpy()
                for j, i in enumerate(idx):
                    n = int(mask[j].sum()) if mask is not None else states.shape[1]
                    self.states[i] = states[j, :n].to(torch.float16)
                    self.hidden[i] = x[j].to(torch.float16)

    def subset(self, idx: list[int]) -> DecoderCache:
        """The cache of clips ``idx`` (sharing tensors)."""
        part = copy.copy(self)
        part.states = [self.states[i] for i in idx]
        part.hidden = [self.hidden[i] for i in idx]
        part.scores = self.scores[idx]
        return part

    def batch(self, idx: list[int], clip_window: bool):
        """Stacked hidden [B, T, D], padded states [B, F, D] and their mask (or None)."""
        lengths = torch.tensor([self.states[i].shape[0] for i in idx])
        states = torch.nn.utils.rnn.pad_sequence([self.states[i] for i in idx], batch_first=True)
        mask = torch.arange(states.shape[1])[None, :] < lengths[:, None]
        if not clip_window and bool(mask.all()):
            mask = None  # a fixed window attends over all of it, as ``encode`` does
        hidden = torch.stack([self.hidden[i] for i in idx]).float()
        return hidden, states.float(), mask


GENERATIVE_KIND = "generative"
GENERATIVE_STRATEGY = "generative"
GENERATIVE_WEIGHTS = "decoder.safetensors"


class GenerativeRecognizer(ZeroShotRecognizer):
    """Zero-shot scoring whose top decoder blocks (+ final LN) are fine-tuned on labelled clips.

    The loss is cross-entropy over the label scores (softmax over labels of the spellings'
    length-normalised log-probabilities), so training sharpens exactly what ``predict`` ranks;
    the encoder and the bottom decoder blocks stay frozen and are cached (``DecoderCache``).
    Only the tuned tensors are saved; the rest are the installed package's weights.
    """

    def __init__(self, *args, tuned_from: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.model.decoder.blocks)
        self.tuned_from = n - 1 if tuned_from is None else tuned_from
        if not 0 <= self.tuned_from < n:
            raise ValueError(f"tuned_from must be in [0, {n - 1}], got {tuned_from}")

    def tuned_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Decoder blocks ``tuned_from..`` and the final LN (the tied embedding stays frozen)."""
        names = [f"blocks.{i}." for i in range(self.tuned_from, len(self.model.decoder.blocks))]
        return {k: v for k, v in self.model.decoder.named_parameters()
                if k.startswith("ln.") or any(k.startswith(b) for b in names)}

    def shortlist(self, cache: DecoderCache, per_row: int = 64, clips: int = 32) -> tuple[torch.Tensor, float]:
        """Tokens for the training-time normaliser: every target plus each row's ``per_row``
        likeliest tokens on up to ``clips`` training clips; also the probability mass they held."""
        idx = list(range(min(clips, len(cache.states))))
        with torch.no_grad():
            x, states, mask = cache.batch(idx, self.window == "clip")
            top = self.run_decoder_blocks(x, states, mask, self.tuned_from)
            hidden = self.model.decoder.ln(top[:, self._rows])
            probs = torch.softmax(hidden @ self.model.decoder.token_embedding.weight.T, -1)
            vocab = torch.unique(torch.cat([probs.topk(per_row, -1).indices.flatten(),
                                            self._targets]))
            mass = float(probs[..., vocab].sum(-1).mean())
        return vocab, mass

    def fit(
        self, waves: list[torch.Tensor], truth: list[str], steps: int = 60, batch_size: int = 16,
        lr: float = 1e-4, seed: int = 0, cache: DecoderCache | None = None,
    ) -> dict:
        """Fine-tune the tuned blocks for ``steps`` AdamW steps; returns cost and loss figures.

        ``cache`` (built for ``waves`` with this ``tuned_from``) lets a caller reuse one
        frozen pass across runs; the model must still hold the pretrained weights then.
        """
        started = time.perf_counter()
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        if cache is None:
            cache = DecoderCache(self, waves, self.tuned_from)
        if cache.tuned_from != self.tuned_from:
            raise ValueError("the cache was built for another tuned_from")
        target = torch.tensor([self.labels.index(t) for t in truth])
        vocab, mass = self.shortlist(cache)
        params = self.tuned_parameters()
        for p in self.model.parameters():
            p.requires_grad = False
        for p in params.values():
            p.requires_grad = True
        optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.01)
        losses = []
        self.model.train()
        for _ in range(steps):
            idx = rng.choice(len(truth), min(batch_size, len(truth)), replace=False).tolist()
            x, states, mask = cache.batch(idx, self.window == "clip")
            top = self.run_decoder_blocks(x, states, mask, self.tuned_from)
            logits = self.labels_from_candidates(self.scores_from_hidden(top, vocab))
            loss = torch.nn.functional.cross_entropy(logits / self.temperature, target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        for p in params.values():
            p.requires_grad = False
        self.model.eval()
        return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "n_train": len(truth), "tuned_from": self.tuned_from,
                "tuned_parameters": sum(p.numel() for p in params.values()),
                "shortlist_tokens": len(vocab), "shortlist_mass": mass,
                "first_loss": float(np.mean(losses[:5])), "last_loss": float(np.mean(losses[-5:])),
                "train_seconds": time.perf_counter() - started}

    def config(self) -> dict:
        return {**super().config(), "kind": GENERATIVE_KIND, "tuned_from": self.tuned_from,
                "weights": GENERATIVE_WEIGHTS}

    def save(self, directory: str | Path) -> Path:
        """config.json plus the tuned decoder tensors (safetensors); nothing else is stored."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.tuned_parameters().items()}
        with atomic_folder(directory, is_model_folder) as folder:
            super().save(folder)
            save_file(state, str(folder / GENERATIVE_WEIGHTS))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GenerativeRecognizer:
        directory = Path(directory)
        config = read_config(directory, GENERATIVE_KIND)
        try:
            tuned_from = check_int("tuned_from", config.get("tuned_from"), 0, 255)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        system = _build(cls, directory, config, tuned_from=tuned_from)
        ours = system.tuned_parameters()
        state = read_weights(directory / GENERATIVE_WEIGHTS, "pt",
                             {k: tuple(v.shape) for k, v in ours.items()})
        with torch.no_grad():
            for k, v in ours.items():
                v.copy_(state[k])
        system.info = {k: config[k] for k in ("strategy", "metrics", "data") if k in config}
        return system


ZERO_SHOT_FIELDS = ("labels", "aliases", "encoder", "prompt", "temperature", "ending", "combine",
                    "capitalise", "reject_by", "reject_below")


def _zero_shot_args(config: dict, directory: Path) -> dict:
    """Constructor arguments of a zero-shot (or generative) system from its config, every
    field checked first: a wrong one is a ModelError naming it, before Whisper is built."""
    missing = [k for k in ZERO_SHOT_FIELDS if k not in config]
    if missing:
        raise ModelError(f"{directory}: config.json lacks {missing}")
    c = config

    def words(v: object) -> bool:
        return isinstance(v, list) and 0 < len(v) <= 64 and all(
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
        "aliases": not (isinstance(c["aliases"], dict) and all(map(words, c["aliases"].values()))),
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
    return {"labels": labels, "aliases": c["aliases"], "encoder": c["encoder"]["name"],
            "window": c["encoder"]["window"], "prompt": c["prompt"],
            "temperature": c["temperature"], "ending": c["ending"], "combine": c["combine"],
            "capitalise": c["capitalise"], "reject_by": c["reject_by"],
            "reject_below": c["reject_below"],
            "unknown_score": c.get("unknown_score", UNKNOWN_SCORE),
            "silence_offset": c.get("silence_offset", SILENCE_OFFSET)}


def _build(cls: type, directory: Path, config: dict, **extra):
    """A zero-shot (or generative) system from a checked config; what its constructor refuses
    (an unknown encoder or window, a prompt too long for the decoder) is a ModelError too."""
    args = _zero_shot_args(config, directory)
    try:
        system = cls(**args, **extra)
    except ValueError as err:
        raise ModelError(f"{directory}: {err}") from None
    system.load_rejection(config, directory)
    return system


COMBINED_KIND = "combined"
COMBINED_STRATEGY = "combined"
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
MAX_PRIOR_WEIGHT = 1_000.0  # beyond it p_zero^weight under- or overflows to NaN


def combine_log_linear(head_probs: np.ndarray, zero_probs: np.ndarray, weight: float) -> np.ndarray:
    """p ∝ p_head · p_zero^weight, row-normalised (in log space, so tiny values survive)."""
    z = np.log(np.clip(head_probs, 1e-12, None)) + weight * np.log(np.clip(zero_probs, 1e-12, None))
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def choose_weight(head_probs: np.ndarray, zero_probs: np.ndarray, target: np.ndarray,
                  grid: tuple[float, ...] = WEIGHT_GRID) -> tuple[float, dict[float, float]]:
    """The grid weight of least NLL on held-out clips (NLL is smoother than accuracy on few
    clips); ties go to the smaller weight. Returns it and the NLL of every weight."""
    nll = {}
    for w in grid:
        p = combine_log_linear(head_probs, zero_probs, w)[np.arange(len(target)), target]
        nll[w] = float(-np.log(np.clip(p, 1e-12, None)).mean())
    return min(grid, key=lambda w: (round(nll[w], 9), w)), nll


class CombinedRecognizer(Recognizer):
    """A trained classifier head with the decoder's zero-shot scores as a prior:
    p ∝ p_head · p_zero^weight. Why: the head learns the speakers it saw, the decoder knows
    the words; the prior helps most when the head has few clips (``weight`` chosen on
    held-out clips of the training speakers, see ``choose_weight``)."""

    def __init__(self, head: CommandClassifier, zero: ZeroShotRecognizer, weight: float = 1.0):
        if sorted(head.labels) != sorted(zero.labels):
            raise ValueError(f"head labels {head.labels} differ from zero-shot {zero.labels}")
        self.head, self.zero, self.weight = head, zero, float(weight)
        self.labels = list(head.labels)
        self.sample_rate = head.sample_rate
        self._order = [zero.labels.index(lab) for lab in self.labels]  # zero's columns, our order
        self.info: dict = {}

    def zero_probs(self, waves: list[torch.Tensor]) -> np.ndarray:
        return self.zero.predict_proba(waves)[:, self._order]

    def shares_encoder(self) -> bool:
        """True when the head sat on the same, untouched encoder: one encoder pass serves both."""
        strategy = self.head.info.get("strategy", {}).get("strategy")
        return (strategy == "frozen" and self.head.encoder.window == self.zero.window
                and self.head.encoder.name == self.zero.encoder_name)

    @torch.no_grad()
    def predict_proba(self, waves: list[torch.Tensor]) -> np.ndarray:
        if not self.shares_encoder():
            return combine_log_linear(self.head.predict_proba(waves), self.zero_probs(waves),
                                      self.weight)
        self.head.eval()
        self.zero.model.eval()
        head = np.zeros((len(waves), len(self.labels)), np.float32)
        zero = np.zeros((len(waves), len(self.zero.labels)), np.float32)
        order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
        for start in range(0, len(order), self.zero.batch_size):
            idx = order[start : start + self.zero.batch_size]
            batch, lengths = batch_waves([waves[i] for i in idx])
            out = self.head.encoder(batch, lengths)
            logits = self.head.heads_forward(out)[PRIMARY_TASK].float()
            head[idx] = torch.softmax(logits, -1).numpy()
            mask = out.mask if self.zero.window == "clip" else None
            zero[idx] = self.zero.label_scores(out.hidden_states[-1], mask).numpy()
        prior = self.zero.proba_from_scores(zero)[:, self._order]
        return combine_log_linear(head, prior, self.weight)

    def config(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": COMBINED_KIND,
                "labels": self.labels, "sample_rate": self.sample_rate, "weight": self.weight,
                "head": "head", "zero_shot": "zero_shot", **self.rejection_config(), **self.info}

    def save(self, directory: str | Path) -> Path:
        """config.json, the head's folder in head/ and the decoder system's in zero_shot/."""
        directory = Path(directory)
        with atomic_folder(directory, is_model_folder) as folder:
            self.head.save(folder / "head")
            self.zero.save(folder / "zero_shot")
            (folder / "config.json").write_text(json.dumps(self.config(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CombinedRecognizer:
        directory = Path(directory)
        config = read_config(directory, COMBINED_KIND)
        try:
            weight = check_real("weight", config.get("weight"), 0.0, MAX_PRIOR_WEIGHT)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        head_dir = sub_folder(directory, config, "head")
        zero_dir = sub_folder(directory, config, "zero_shot")
        if read_config(head_dir)["kind"] != "neural":
            raise ModelError(f"{directory}: 'head' ({head_dir.name}/) holds no neural classifier")
        if read_config(zero_dir)["kind"] not in (KIND, GENERATIVE_KIND):
            raise ModelError(f"{directory}: 'zero_shot' ({zero_dir.name}/) holds no "
                             "decoder-scoring system")
        head, zero = CommandClassifier.load(head_dir), load_model(zero_dir)
        try:
            system = cls(head, zero, weight)
        except ValueError as err:
            raise ModelError(f"{directory}: {err}") from None
        if config.get("labels", system.labels) != system.labels:
            raise ModelError(f"{directory}: labels {config['labels']!r:.60} differ from the "
                             f"head's {system.labels}")
        system.load_rejection(config, directory)
        system.info = {k: config[k] for k in ("strategy", "metrics", "data") if k in config}
        return system


def calibrate_open_set(system: ZeroShotRecognizer, clips: list,
                       max_false_accept: float) -> dict | None:
    """On validation clips of the training speakers, fit a decoder system's ``_unknown_`` /
    ``_silence_`` scores and temperature (``fit_open_set``), then its rejection threshold
    (``jobs.calibrate_rejection``). None for a closed-set system or without such clips."""
    from .jobs import calibrate_rejection, open_set, read_clips

    clips = [c for c in clips if c.label in system.labels]
    if not open_set(system.labels) or not any(not is_command(c.label) for c in clips):
        return None
    waves, kept, _ = read_clips(clips, system.sample_rate, "validation")
    truth = [c.label for c in kept]
    fitted, scores = system.fit_open_set(system.scores(waves), truth)
    rejection = calibrate_rejection(system, waves, truth, max_false_accept,
                                    system.proba_from_scores(scores))
    return {"scores": fitted, "rejection": rejection}


def zero_shot_job(ds, split, encoder: str, window: str, out: Path,
                  max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT) -> dict:
    """``train --strategy zero-shot``: no training; evaluate on the test split and save.

    Labels are the training split's label names; the summary and report files are those of
    the neural path, so ``eval``, ``predict`` and the recipes need no special case. With
    ``_unknown_`` / ``_silence_`` among them, their scores and the rejection threshold are
    fitted on the validation clips (``calibrate_open_set``).
    """
    from .jobs import finish_job

    started = time.perf_counter()
    train = split.train + split.validation
    labels = sorted({c.label for c in train if c.label is not None})
    if len(labels) < 2:
        raise ValueError(f"{ds.root}: a classifier needs at least 2 labels in the training "
                         f"clips, got {labels}")
    system = ZeroShotRecognizer(labels, encoder=encoder, window=window)
    fitted = calibrate_open_set(system, split.validation, max_false_accept)
    summary = {
        "data": str(ds.root), "layout": ds.layout, "encoder": encoder, "window": window,
        "strategy": {"strategy": STRATEGY}, "per_class": None,
        "train_speakers": sorted({c.speaker for c in train if c.speaker}),
        "test_speakers": sorted({c.speaker for c in split.test if c.speaker}),
        "n_train": 0, "n_validation": len(split.validation) if fitted else 0,
        "n_test": len(split.test), "best_epoch": None, "resumed_from_epoch": None, "history": [],
        "train_seconds": time.perf_counter() - started, "skipped": [], "parameters": 0,
        "open_set_fit": fitted and fitted["scores"], "rejection": fitted and fitted["rejection"],
    }
    return finish_job(system, summary, split, out)


def generative_job(ds, split, encoder: str, window: str, out: Path, per_class_n: int | None = None,
                   seed: int = 0, steps: int = 40, batch_size: int = 8,
                   max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT,
                   augment: dict | None = None) -> dict:
    """``train --strategy generative``: fine-tune the decoder's last block on the training
    clips (``per_class_n`` per label per speaker if set), evaluate on the test split, save.

    With ``_unknown_`` / ``_silence_`` labels the validation clips are kept out of training to
    fit their scores and the rejection threshold (``calibrate_open_set``); ``augment``
    (``jobs.augment_options``) adds augmented copies as extra training clips.
    """
    from .data import per_class
    from .jobs import augmented, finish_job, make_augmenter, open_set, read_clips, skipped_records

    started = time.perf_counter()
    held = split.validation if open_set([c.label for c in split.train]) and not per_class_n else []
    train = split.train + ([] if held else split.validation)  # a fixed step budget, no stopping
    if per_class_n:
        train = per_class(train, per_class_n, seed)
    labels = sorted({c.label for c in train if c.label is not None})
    if len(labels) < 2:
        raise ValueError(f"{ds.root}: a classifier needs at least 2 labels in the training "
                         f"clips, got {labels}")
    system = GenerativeRecognizer(labels, encoder=encoder, window=window)
    waves, kept, skipped = read_clips(train, system.sample_rate, "training")
    fit_w, fit_clips = augmented(make_augmenter(augment, waves, kept, system.sample_rate),
                                 waves, kept)
    fit_info = system.fit(fit_w, [c.label for c in fit_clips], steps=steps,
                          batch_size=batch_size, seed=seed)
    fitted = calibrate_open_set(system, held, max_false_accept)
    summary = {
        "data": str(ds.root), "layout": ds.layout, "encoder": encoder, "window": window,
        "strategy": {"strategy": GENERATIVE_STRATEGY, **fit_info}, "per_class": per_class_n,
        "train_speakers": sorted({c.speaker for c in kept if c.speaker}),
        "test_speakers": sorted({c.speaker for c in split.test if c.speaker}),
        "n_train": len(kept), "n_validation": len(held), "n_test": len(split.test),
        "best_epoch": None, "resumed_from_epoch": None, "history": [],
        "train_seconds": time.perf_counter() - started,
        "skipped": skipped_records(skipped),
        "parameters": fit_info["tuned_parameters"], "augment": augment,
        "open_set_fit": fitted and fitted["scores"], "rejection": fitted and fitted["rejection"],
    }
    return finish_job(system, summary, split, out)


def combined_job(data, split, encoder: str, window: str, out: Path, per_class_n: int | None = None,
                 seed: int = 0, test_speakers: list[str] | None = None, **head_args) -> dict:
    """``train --strategy combined``: a frozen-encoder head (``train_job``, saved in out/head),
    the zero-shot prior, its weight chosen on the validation clips of the training speakers
    (``WEIGHT_GRID``; weight 1 when there are none, as with ``per_class_n``), then evaluate.
    The head is trained in the run's work folder, so ``out`` changes only in the final save.

    With ``_unknown_`` / ``_silence_`` the same validation clips first fit the prior's scores
    for them (``ZeroShotRecognizer.fit_open_set``), then, after the weight, the combined
    system's rejection threshold (``jobs.calibrate_rejection``).
    """
    from .jobs import calibrate_rejection, finish_job, open_set, read_clips, train_job

    started = time.perf_counter()
    head_dir = work_folder(out) / "head"
    head_summary = train_job(data, encoder, window, "frozen", per_class_n=per_class_n, seed=seed,
                             out=head_dir, test_speakers=test_speakers, evaluate=False,
                             **head_args)
    head = CommandClassifier.load(head_dir)
    zero = ZeroShotRecognizer(head.labels, encoder=encoder, window=head.encoder.window)
    system = CombinedRecognizer(head, zero)
    held_out, choice = [] if per_class_n else split.validation, {"weight": 1.0, "nll": None}
    fitted = rejection = None
    if held_out:
        waves, kept, _ = read_clips(held_out, head.sample_rate, "validation")
        truth = [c.label for c in kept]
        target = np.array([head.labels.index(t) for t in truth])
        head_probs, scores = head.predict_proba(waves), zero.scores(waves)
        if open_set(zero.labels) and open_set(truth):
            fitted, scores = zero.fit_open_set(scores, truth)
        zero_probs = zero.proba_from_scores(scores)[:, system._order]
        weight, nll = choose_weight(head_probs, zero_probs, target)
        system.weight, choice = weight, {"weight": weight, "nll": nll, "n": len(kept)}
        rejection = calibrate_rejection(
            system, waves, truth, head_args.get("max_false_accept", DEFAULT_MAX_FALSE_ACCEPT),
            combine_log_linear(head_probs, zero_probs, weight))
    summary = {**head_summary, "strategy": {"strategy": COMBINED_STRATEGY, "head": "frozen",
                                            "prior_weight": choice},
               "open_set_fit": fitted, "rejection": rejection}
    summary["train_seconds"] = time.perf_counter() - started
    return finish_job(system, summary, split, out)
