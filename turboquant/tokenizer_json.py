"""Read a Hugging Face ``tokenizer.json`` of the Gemma 4 kind into the arguments of ``Tokenizer``.

Supported settings:
- model: ``BPE`` with ranked merges, byte fallback and fused unknown tokens;
- normalizer: a ``Replace`` of " " with U+2581;
- pre-tokenizer: none, a ``Split`` on " " (a no-op once spaces are replaced), or an isolating
  ``Split`` on runs of newlines;
- decoder: steps from ``Replace`` (U+2581 to " "), ``ByteFallback`` and ``Fuse``;
- post-processor: none, or a ``TemplateProcessing`` that prepends BOS.

Anything else raises ``ValueError`` naming the field, because encoding would silently differ
from the file's tokenizer.

NOTE: the tests use tokenizer.json files built the way transformers' GemmaTokenizer sets up its
pipeline. No real Gemma 4 tokenizer.json was available to check against, so a setting that the
real file uses may still be rejected here.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

SPACE_MARK = "\u2581"
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>\Z")

# Token types, as in GGUF tokenizer.ggml.token_type.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def _reject(field, value, reason):
    value_text = json.dumps(value, ensure_ascii=False)
    if len(value_text) > 200:
        value_text = value_text[:200] + "..."
    raise ValueError(f"tokenizer.json: {field} = {value_text} is not supported: {reason}")


def _check_normalizer(normalizer):
    """Accept a Replace of " " with U+2581, alone or as the only step of a Sequence."""
    steps = normalizer.get("normalizers", []) if normalizer and normalizer.get("type") == "Sequence" else [normalizer]
    ok = (
        len(steps) == 1
        and isinstance(steps[0], dict)
        and steps[0].get("type") == "Replace"
        and steps[0].get("pattern") == {"String": " "}
        and steps[0].get("content") == SPACE_MARK
    )
    if not ok:
        _reject("normalizer", normalizer, 'expected {"type": "Replace", "pattern": {"String": " "}, '
                '"content": "\u2581"}, which Gemma tokenizers use')


# Regex patterns whose isolating Split cuts text into runs of newlines and runs of other
# characters, with the newline written as the character itself or as the escape \n.
_NEWLINE_RUN_PATTERNS = tuple(
    pattern.replace("NL", newline)
    for pattern in ("NL+", "[NL]+", "[^NL]+|[NL]+", "[NL]+|[^NL]+")
    for newline in ("\n", "\\n")
)


def _split_newlines(pre_tokenizer):
    """Return 1 when the pre-tokenizer splits at newline runs, 0 when it splits nothing.

    A Split on " " finds nothing once the normalizer has replaced every space.
    """
    if pre_tokenizer is None:
        return 0
    if pre_tokenizer.get("type") == "Split" and pre_tokenizer.get("pattern") == {"String": " "}:
        return 0
    if (pre_tokenizer.get("type") == "Split"
            and pre_tokenizer.get("pattern", {}).get("Regex") in _NEWLINE_RUN_PATTERNS
            and pre_tokenizer.get("behavior") == "Isolated"
            and not pre_tokenizer.get("invert")):
        return 1
    _reject("pre_tokenizer", pre_tokenizer,
            'expected null, a Split on {"String": " "} or an isolating Split on newline runs such as '
            '{"Regex": "[^\\n]+|[\\n]+"}')


def _check_decoder(decoder):
    """Accept the decoder steps that tq_tokenizer_decode performs itself."""
    if decoder is None:
        return
    steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    for index, step in enumerate(steps):
        kind = step.get("type")
        if kind in ("ByteFallback", "Fuse"):
            continue
        if kind == "Replace" and step.get("pattern") == {"String": SPACE_MARK} and step.get("content") == " ":
            continue
        _reject(f"decoder step {index}", step, "only Replace(\u2581 -> ' '), ByteFallback and Fuse are supported")


def _bos_from_post_processor(post_processor, token_ids):
    """Return the BOS id that the post-processor prepends, or None when it adds nothing."""
    if post_processor is None:
        return None
    if post_processor.get("type") != "TemplateProcessing":
        _reject("post_processor", post_processor, "expected null or a TemplateProcessing that prepends BOS")
    single = post_processor.get("single", [])
    if len(single) == 1 and "Sequence" in single[0]:
        return None
    if len(single) == 2 and "SpecialToken" in single[0] and "Sequence" in single[1]:
        content = single[0]["SpecialToken"]["id"]
        if content not in token_ids:
            _reject("post_processor.single[0]", single[0], f"{content!r} is not in the vocabulary")
        return token_ids[content]
    _reject("post_processor.single", single, "expected [$A] or [BOS, $A]")


def _check_added_token(index, token):
    if not isinstance(token, dict) or not isinstance(token.get("content"), str) or not token["content"]:
        _reject(f"added_tokens[{index}]", token, "expected an object with a non-empty 'content' string")
    if not isinstance(token.get("id"), int) or isinstance(token["id"], bool) or token["id"] < 0:
        _reject(f"added_tokens[{index}].id", token.get("id"), "ids must be non-negative integers")
    for flag in ("single_word", "lstrip", "rstrip"):
        if token.get(flag):
            _reject(f"added_tokens[{index}].{flag}", True, f"token {token['content']!r} sets {flag}")
    content = token["content"]
    if token.get("normalized") and (" " in content or SPACE_MARK in content):
        _reject(f"added_tokens[{index}].normalized", True,
                f"token {content!r} contains a space and is matched after normalization")


def read_tokenizer_json(path):
    """Parse ``path`` and return the keyword arguments of ``turboquant._core.Tokenizer``.

    Raises OSError when the file cannot be read and ValueError when it is not valid JSON, has
    the wrong structure or uses a feature listed as unsupported in the module docstring.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path}: missing the 'model' object of a tokenizer.json")
    for field in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        if data.get(field) is not None and not isinstance(data[field], dict):
            _reject(field, data[field], "expected an object or null")
    if not isinstance(data.get("added_tokens") or [], list):
        _reject("added_tokens", data["added_tokens"], "expected a list")
    if not isinstance(data["model"].get("merges", []), list):
        _reject("model.merges", data["model"]["merges"], "expected a list")
    try:
        return _read_tokenizer_data(data)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        # Nested parts of an unexpected shape, such as a decoder step that is not an object.
        raise ValueError(f"{path}: malformed tokenizer.json ({type(error).__name__}: {error})") from None


def _read_tokenizer_data(data):
    """Convert parsed tokenizer.json data; see :func:`read_tokenizer_json`."""
    model = data["model"]
    if model.get("type", "BPE") != "BPE":
        _reject("model.type", model.get("type"), "only BPE is supported")
    if model.get("dropout") not in (None, 0, 0.0):
        _reject("model.dropout", model["dropout"], "dropout makes encoding random")
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field):
            _reject(f"model.{field}", model[field], "Gemma tokenizers use none")
    if not model.get("fuse_unk", False):
        _reject("model.fuse_unk", model.get("fuse_unk", False), "only fused unknown tokens are supported")
    byte_fallback = bool(model.get("byte_fallback", False))

    _check_normalizer(data.get("normalizer"))
    split_newlines = _split_newlines(data.get("pre_tokenizer"))
    _check_decoder(data.get("decoder"))

    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        _reject("model.vocab", vocab, "expected a non-empty object mapping tokens to ids")
    pieces_by_id = {}
    for content, token_id in vocab.items():
        if not isinstance(token_id, int) or token_id < 0:
            _reject(f"model.vocab[{content!r}]", token_id, "ids must be non-negative integers")
        if token_id in pieces_by_id:
            _reject(f"model.vocab[{content!r}]", token_id, f"id also used by {pieces_by_id[token_id]!r}")
        pieces_by_id[token_id] = content

    added = data.get("added_tokens") or []
    added_kind = {}
    for index, token in enumerate(added):
        _check_added_token(index, token)
        token_id, content = token["id"], token["content"]
        if pieces_by_id.get(token_id, content) != content:
            _reject(f"added_tokens[{index}].id", token_id,
                    f"id of {pieces_by_id[token_id]!r} in model.vocab, not of {content!r}")
        pieces_by_id[token_id] = content
        added_kind[token_id] = _CONTROL if token.get("special") else _USER_DEFINED

    n_vocab = max(pieces_by_id) + 1
    if len(pieces_by_id) != n_vocab:
        missing = next(i for i in range(n_vocab) if i not in pieces_by_id)
        _reject("model.vocab", f"{len(pieces_by_id)} tokens with ids up to {n_vocab - 1}",
                f"no token has id {missing}; ids must be 0 to n-1 without gaps")
    pieces = [pieces_by_id[i] for i in range(n_vocab)]
    token_ids = {content: token_id for token_id, content in pieces_by_id.items()}

    unk_token = model.get("unk_token")
    unk_id = token_ids.get(unk_token) if unk_token is not None else None
    if unk_token is not None and unk_id is None:
        _reject("model.unk_token", unk_token, "not in the vocabulary")

    types = np.full(n_vocab, _NORMAL, dtype=np.int32)
    for token_id, content in enumerate(pieces):
        if token_id in added_kind:
            types[token_id] = added_kind[token_id]
        elif byte_fallback and _BYTE_PIECE.match(content):
            types[token_id] = _BYTE
    if unk_id is not None:
        types[unk_id] = _UNKNOWN

    merges = np.empty((len(model.get("merges", [])), 2), dtype=np.int32)
    for rank, merge in enumerate(model.get("merges", [])):
        parts = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not isinstance(parts, list) or len(parts) != 2:
            _reject(f"model.merges[{rank}]", merge, "expected 'left right' or [left, right]")
        for side, part in enumerate(parts):
            if part not in vocab:
                _reject(f"model.merges[{rank}]", merge, f"{part!r} is not in model.vocab")
            merges[rank, side] = vocab[part]

    bos_id = _bos_from_post_processor(data.get("post_processor"), token_ids)
    return {
        "pieces": pieces,
        "types": types,
        "merges": merges,
        "byte_fallback": byte_fallback,
        "ignore_merges": bool(model.get("ignore_merges", False)),
        "split_newlines": split_newlines,
        "bos_id": bos_id if bos_id is not None else token_ids.get("<bos>"),
        "eos_id": token_ids.get("<eos>"),
        "unk_id": unk_id,
        "pad_id": token_ids.get("<pad>"),
        "add_bos": bos_id is not None,
    }
