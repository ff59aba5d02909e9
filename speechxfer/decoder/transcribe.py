"""Free transcription: the baseline forced-choice scoring (``decoder.scoring``) is measured
against. Whisper writes what it hears after the same prompt; the text is then mapped to the
label whose alias it contains, so "for", "fore" or "4." can miss where scoring cannot.
"""

from __future__ import annotations

import re

import torch

from ..audio import batch_waves, batches_by_length
from ..encoders.registry import decoding_rules
from .scoring import ZeroShotRecognizer

TRANSCRIPT_TOKENS = 12  # greedy decoding: enough for a command, stops runaway repetition


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


@torch.no_grad()
def transcribe(system: ZeroShotRecognizer, waves: list[torch.Tensor]) -> list[str]:
    """Greedy transcripts of clips at 16 kHz with the system's Whisper, window and prompt
    (Whisper's ``initial_prompt``)."""
    rules = decoding_rules(system.encoder_name)
    prefix = system.prefix_tokens()
    system.model.eval()
    texts = [""] * len(waves)
    for idx in batches_by_length(waves, system.options.batch_size):
        states, mask = system.encode(*batch_waves([waves[i] for i in idx]))
        ids = system.model.greedy_decode(states, prefix, rules, mask,
                                         max_length=len(prefix) + TRANSCRIPT_TOKENS)
        for i, row in zip(idx, ids):
            texts[i] = system.tokenizer.decode(row)
    return texts
