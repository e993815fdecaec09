"""Tokenizers of Gemma 3 (SentencePiece) and Gemma 4 (BPE with ranked merges), backed by the C core.

``Tokenizer.from_gguf(path)`` reads the ``tokenizer.ggml.*`` metadata of a GGUF file (vocabulary
type "llama" or "gemma4"); ``Tokenizer.from_tokenizer_json(path)`` reads a Hugging Face
``tokenizer.json`` with a BPE model. Encoding adds BOS when the vocabulary asks for it (Gemma
GGUF files set ``tokenizer.ggml.add_bos_token``), so chat prompts from
:mod:`turboquant.chat` do not contain ``<bos>`` themselves.
"""

from __future__ import annotations

import os

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
    """SentencePiece or ranked-BPE tokenizer; see ``turboquant._core.Tokenizer`` for the constructor.

    ``Tokenizer.from_gguf(path)`` (implemented in C) reads the ``tokenizer.ggml.*`` metadata.
    """

    @classmethod
    def from_tokenizer_json(cls, path, add_bos=None):
        """Build a ranked-BPE tokenizer from a Hugging Face ``tokenizer.json`` (Gemma 4 layout).

        path: the file, or a model directory that contains ``tokenizer.json``.
        add_bos: whether ``encode`` adds BOS by default; None takes it from the file's
        post-processor (a ``TemplateProcessing`` that prepends BOS means True).
        Raises OSError when the file is missing and ValueError for settings that the C tokenizer
        does not implement, naming the field.
        """
        from .tokenizer_json import read_tokenizer_json

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        kwargs = read_tokenizer_json(path)
        if add_bos is not None:
            kwargs["add_bos"] = bool(add_bos)
        if kwargs["add_bos"] and kwargs["bos_id"] is None:
            raise ValueError(f"{path}: add_bos is set but the vocabulary has no BOS token ('<bos>')")
        return cls(kwargs.pop("pieces"), **kwargs)

    def stream(self, skip_special=True):
        """Return a :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self, skip_special=skip_special)

    def __repr__(self):
        return f"<Tokenizer kind={self.kind} n_vocab={self.n_vocab} bos_id={self.bos_id} eos_id={self.eos_id}>"
