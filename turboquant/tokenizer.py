"""SentencePiece tokenizer of Gemma 3 (GGUF vocabulary type "llama"), backed by the C core.

``Tokenizer.from_gguf(path)`` reads the ``tokenizer.ggml.*`` metadata of a GGUF file. Encoding
adds BOS by default (Gemma sets ``tokenizer.ggml.add_bos_token``), so chat prompts from
:func:`turboquant.chat.format_gemma3_chat` do not contain ``<bos>`` themselves.
"""

from __future__ import annotations

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


class Tokenizer(_core.Tokenizer):
    """SentencePiece tokenizer; see ``turboquant._core.Tokenizer`` for the constructor.

    ``Tokenizer.from_gguf(path)`` (implemented in C) reads the ``tokenizer.ggml.*`` metadata.
    """

    def stream(self, skip_special=True):
        """Return a :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self, skip_special=skip_special)

    def __repr__(self):
        return f"<Tokenizer n_vocab={self.n_vocab} bos_id={self.bos_id} eos_id={self.eos_id}>"
