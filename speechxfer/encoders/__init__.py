"""Pretrained speech encoders behind one interface (see ``base.Encoder``)."""

from speechxfer.encoders.base import Encoder, EncoderOutput
from speechxfer.encoders.registry import (
    build_encoder,
    build_whisper,
    list_encoders,
    load_tokenizer,
)

__all__ = [
    "Encoder",
    "EncoderOutput",
    "build_encoder",
    "build_whisper",
    "list_encoders",
    "load_tokenizer",
]
