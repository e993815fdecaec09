"""SentencePiece tokenizer of Gemma 3 (GGUF vocabulary type "llama"), backed by the C core.

``Tokenizer.from_gguf(path)`` reads the ``tokenizer.ggml.*`` metadata of a GGUF file. Encoding
adds BOS by default (Gemma sets ``tokenizer.ggml.add_bos_token``), so chat prompts from
:func:`turboquant.chat.format_gemma3_chat` do not contain ``<bos>`` themselves.
"""

from __future__ import annotations

import os

import numpy as np

from . import _core

__all__ = ["Tokenizer", "StreamDecoder", "TOKEN_NORMAL", "TOKEN_UNKNOWN", "TOKEN_CONTROL",
           "TOKEN_USER_DEFINED", "TOKEN_UNUSED", "TOKEN_BYTE"]

# SentencePiece token types, as stored in tokenizer.ggml.token_type.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

StreamDecoder = _core.StreamDecoder


def _field_scalar(reader, key):
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return field.parts[field.data[0]][0].item()


def _read_gguf_vocabulary(path):
    """Read the tokenizer.ggml.* metadata of path with the ``gguf`` package."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is a test dependency
        raise ImportError("reading a GGUF tokenizer needs the gguf package: pip install gguf") from exc

    reader = GGUFReader(os.fspath(path))
    model_field = reader.fields.get("tokenizer.ggml.model")
    if model_field is None:
        raise ValueError(f"{path}: missing tokenizer.ggml.model; this GGUF file carries no tokenizer")
    model = bytes(model_field.parts[model_field.data[0]]).decode("utf-8")
    if model != "llama":
        raise NotImplementedError(
            f"{path}: tokenizer.ggml.model is {model!r}; only the SentencePiece type 'llama' is supported"
        )

    tokens_field = reader.fields.get("tokenizer.ggml.tokens")
    if tokens_field is None:
        raise ValueError(f"{path}: missing tokenizer.ggml.tokens")
    pieces = [bytes(tokens_field.parts[i]) for i in tokens_field.data]

    def array(key, dtype):
        field = reader.fields.get(key)
        if field is None:
            return None
        values = np.array([field.parts[i][0] for i in field.data], dtype=dtype)
        if len(values) != len(pieces):
            raise ValueError(
                f"{path}: {key} has {len(values)} entries but tokenizer.ggml.tokens has {len(pieces)}"
            )
        return values

    def flag(key, default):
        value = _field_scalar(reader, key)
        return default if value is None else bool(value)

    return dict(
        pieces=pieces,
        scores=array("tokenizer.ggml.scores", np.float32),
        types=array("tokenizer.ggml.token_type", np.int32),
        bos_id=_field_scalar(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field_scalar(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_field_scalar(reader, "tokenizer.ggml.unknown_token_id"),
        pad_id=_field_scalar(reader, "tokenizer.ggml.padding_token_id"),
        # llama.cpp's defaults for a SentencePiece vocabulary that does not state them.
        add_bos=flag("tokenizer.ggml.add_bos_token", True),
        add_space_prefix=flag("tokenizer.ggml.add_space_prefix", True),
    )


class Tokenizer(_core.Tokenizer):
    """SentencePiece tokenizer; see ``turboquant._core.Tokenizer`` for the constructor."""

    @classmethod
    def from_gguf(cls, path):
        """Build the tokenizer from the ``tokenizer.ggml.*`` metadata of the GGUF file at path."""
        return cls(**_read_gguf_vocabulary(path))

    def stream(self, skip_special=True):
        """Return a :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self, skip_special=skip_special)

    def __repr__(self):
        return f"<Tokenizer n_vocab={self.n_vocab} bos_id={self.bos_id} eos_id={self.eos_id}>"
