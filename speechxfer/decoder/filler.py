"""Keyword against filler: does Whisper's own first word agree with the command a model heard?

The classic garbage model of keyword spotting: a keyword is accepted only when it explains the
audio about as well as the best free transcription does. Here both sides are read from one
decoder position, the first word after the scoring prompt: the command's first token (best of its
spellings, " no" or " No") against the best word token Whisper would write there itself. When a
streamed "nine" reaches a classifier as "no", Whisper's own first word is " 9", far above " no";
when the word really was "no", the two are close.

Why only the first token: a command is one token after the prompt, so the comparison is one
decoder pass over the prompt, no generation; free greedy transcripts of 1-s clips in a 2-s window
also run into repetitions ("yes yes yes ...") that blur a whole-transcript average.

Why some tokens never count as the alternative (``is_filler_token``): a hesitation (" uh",
" oh", " ah") or a lone letter is what Whisper writes for any unclear sound, commands included
("off" often comes out as " oh" or " uh"); only another real word contradicts the command.

For an ensemble, every member's decoder answers (``EveryDecoder``) and the command is dropped
only when all of them hear another real word: decoders mishear commands in different ways
(tiny.en often writes "off" as " oh", whisper-base mostly as " off"), while a real other word
is heard by both.

``detect.Detector`` runs it when asked (``filler_margin``); it is not on by default, as it did
not beat a plain threshold on held-out speakers (README "Measured (issue 10)").
"""

from __future__ import annotations

import numpy as np
import torch

from ..audio import batch_waves, batches_by_length
from ..encoders.registry import decoding_rules
from ..vocab import is_command
from .combined import CombinedRecognizer
from .scoring import HESITATIONS, ZeroShotRecognizer, surface_forms

TOP_WORDS = 8  # the free side is the best word among Whisper's this many likeliest first tokens


def is_filler_token(text: str) -> bool:
    """True for a token that names no word: a hesitation, a lone letter, punctuation."""
    word = "".join(ch for ch in text.lower() if ch.isalnum())
    return not word or word in HESITATIONS or (len(word) == 1 and word.isalpha())


class FillerRatio:
    """``ratio(waves, labels)``: for each clip, the log-probability of the given command's
    first token minus that of Whisper's best first word (<= 0; 0 when the command is itself the
    best word, or no real word is among the likeliest tokens), after the system's prompt."""

    def __init__(self, system: ZeroShotRecognizer):
        self.system = system
        tokenizer = system.tokenizer
        self.prefix = system.prefix_tokens()
        rules = decoding_rules(system.encoder_name)
        self.suppress = torch.tensor(sorted({*rules.suppress_ids, *rules.suppress_ids_begin,
                                             rules.eot}), dtype=torch.long)
        self.first = {lab: sorted({system.encode_text(form)[0] for alias in aliases
                                   for form in surface_forms(alias, True)})
                      for lab, aliases in system.aliases.items() if is_command(lab)}
        self._filler: dict[int, bool] = {}
        self._decode = tokenizer.decode

    @classmethod
    def of(cls, model: object) -> FillerRatio | None:
        """The check for a model with a Whisper decoder (zero-shot, generative, combined: its
        prior's), None for any other."""
        system = model.zero if isinstance(model, CombinedRecognizer) else model
        return cls(system) if isinstance(system, ZeroShotRecognizer) else None

    def _is_filler(self, token: int) -> bool:
        if token not in self._filler:
            self._filler[token] = is_filler_token(self._decode([token]))
        return self._filler[token]

    @torch.no_grad()
    def first_token_logprobs(self, waves: list[torch.Tensor]) -> torch.Tensor:
        """log P(first token | prompt, audio) over the vocabulary: [n, vocab]."""
        system = self.system
        system.model.eval()
        out = []
        order = []
        for idx in batches_by_length(waves, system.options.batch_size):
            states, mask = system.encode(*batch_waves([waves[i] for i in idx]))
            tokens = torch.tensor([self.prefix] * len(idx), device=system.device)
            logits = system.model.logits(tokens, states, mask)[:, -1].float().cpu()
            out.append(torch.log_softmax(logits, -1))
            order += list(idx)
        logp = torch.cat(out)
        return logp[torch.argsort(torch.tensor(order))]

    def ratio_from_logprobs(self, logp: torch.Tensor, labels: list[str]) -> np.ndarray:
        """The ratio of each row of ``first_token_logprobs`` for its command in ``labels``."""
        candidates = logp.clone()
        candidates[:, self.suppress] = -torch.inf
        top = candidates.topk(TOP_WORDS, dim=-1)
        out = np.zeros(len(labels))
        for row, label in enumerate(labels):
            if label not in self.first:
                raise ValueError(f"{label!r} is not a command of this decoder "
                                 f"({sorted(self.first)})")
            keyword = float(logp[row, self.first[label]].max())
            words = [float(v) for v, t in zip(top.values[row], top.indices[row].tolist())
                     if not self._is_filler(t)]
            out[row] = keyword - max([keyword, *words])
        return out

    def ratio(self, waves: list[torch.Tensor], labels: list[str]) -> np.ndarray:
        if len(waves) != len(labels):
            raise ValueError(f"{len(waves)} clips for {len(labels)} labels")
        if not waves:
            return np.zeros(0)
        return self.ratio_from_logprobs(self.first_token_logprobs(waves), labels)


class EveryDecoder:
    """The check of several decoders (an ensemble's members): the mildest of their ratios, so a
    command is dropped only when every decoder's own first word beats it by the margin."""

    def __init__(self, checks: list[FillerRatio]):
        if not checks:
            raise ValueError("EveryDecoder needs at least one decoder's check")
        self.checks = list(checks)

    def ratio(self, waves: list[torch.Tensor], labels: list[str]) -> np.ndarray:
        return np.max([check.ratio(waves, labels) for check in self.checks], axis=0)
