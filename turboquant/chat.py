"""Gemma 3 chat prompt format.

A conversation renders as::

    <start_of_turn>user
    {system text}

    {first user text}<end_of_turn>
    <start_of_turn>model
    {reply}<end_of_turn>
    <start_of_turn>model

following the semantics of the chat template that Google publishes with the Gemma 3
instruction-tuned checkpoints. Gemma 3 has no system role, so a leading system message goes
before the first user text, separated by a blank line. Roles must alternate user, model,
user, and so on, with "assistant" written as "model". Message text is stripped of
surrounding whitespace.

The template's leading ``<bos>`` is left out on purpose: :class:`turboquant.Tokenizer` adds BOS
when it encodes (``add_bos`` defaults to the vocabulary's ``tokenizer.ggml.add_bos_token``,
true for Gemma), so writing it here too would give two BOS tokens. Use
:func:`encode_gemma3_chat` to get the token ids in one step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["format_gemma3_chat", "encode_gemma3_chat"]

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

_ROLE_NAMES = {"user": "user", "assistant": "model", "model": "model"}


def _content_text(content, index):
    """Return the text of a message's content: a str, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, Mapping) or not isinstance(content, Sequence) or isinstance(content, bytes):
        raise ValueError(
            f"messages[{index}]['content'] must be a str or a list of text parts, "
            f"not {type(content).__name__}"
        )
    texts = []
    for part_index, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise ValueError(
                f"messages[{index}]['content'][{part_index}] must be a dict such as "
                f"{{'type': 'text', 'text': ...}}, not {type(part).__name__}"
            )
        part_type = part.get("type")
        if part_type != "text":
            raise ValueError(
                f"messages[{index}]['content'][{part_index}] has type {part_type!r}; "
                "only 'text' parts are supported"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise ValueError(f"messages[{index}]['content'][{part_index}]['text'] must be a str")
        texts.append(text.strip())
    return "".join(texts)


def _message_fields(message, index):
    if not isinstance(message, Mapping):
        raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', not {type(message).__name__}")
    if "role" not in message or "content" not in message:
        raise ValueError(f"messages[{index}] must have the keys 'role' and 'content'")
    return message["role"], _content_text(message["content"], index)


def format_gemma3_chat(messages, add_generation_prompt=True):
    """Render a conversation as a Gemma 3 prompt string, without the leading ``<bos>``.

    messages: a list of {"role": "system" | "user" | "assistant" | "model", "content": ...}
    where content is a str or a list of {"type": "text", "text": str} parts. Only the first
    message may be a system message. After it, roles must alternate starting with user.
    add_generation_prompt: end with ``<start_of_turn>model\\n`` so the model writes the reply.

    Raises ValueError for an unknown role, a misplaced system message, a system message
    without a user message, roles that do not alternate, or content of the wrong shape.
    A system message with several text parts keeps all of them, where the published
    template keeps only the first.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, not {type(messages).__name__}")

    system_prefix = ""
    start = 0
    if messages:
        role, text = _message_fields(messages[0], 0)
        if role == "system":
            system_prefix = text + "\n\n"
            start = 1

    if start == 1 and len(messages) == 1:
        # The published template silently drops a system message that no user message
        # follows. Raise instead so that the text is not lost.
        raise ValueError("messages has a system message but no user message to put it in front of")

    parts = []
    for index in range(start, len(messages)):
        role, text = _message_fields(messages[index], index)
        if role == "system":
            raise ValueError(f"messages[{index}] has role 'system'; only the first message may be a system message")
        if role not in _ROLE_NAMES:
            raise ValueError(
                f"messages[{index}] has role {role!r}; expected 'system', 'user', 'assistant' or 'model'"
            )
        turn = index - start
        expected = "user" if turn % 2 == 0 else "model"
        if _ROLE_NAMES[role] != expected:
            raise ValueError(
                f"messages[{index}] has role {role!r} but turn {turn} must be {expected!r}: "
                "roles must alternate user, assistant, user, ..."
            )
        prefix = system_prefix if turn == 0 else ""
        parts.append(f"{START_OF_TURN}{_ROLE_NAMES[role]}\n{prefix}{text}{END_OF_TURN}\n")

    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}model\n")
    return "".join(parts)


def encode_gemma3_chat(tokenizer, messages, add_generation_prompt=True):
    """Format messages with :func:`format_gemma3_chat` and encode them, BOS included.

    Control tokens written in the message text (such as a literal ``<end_of_turn>``) become
    control token ids, as in the reference template followed by a tokenizer that parses
    special tokens.
    """
    prompt = format_gemma3_chat(messages, add_generation_prompt=add_generation_prompt)
    return tokenizer.encode(prompt, add_bos=True, special=True)
