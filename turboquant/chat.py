"""Chat prompt formats of Gemma 3 and Gemma 4, and the parser of Gemma 4's thought channel.

Gemma 3
-------
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

Gemma 4
-------
A conversation renders as::

    <|turn>system
    <|think|>
    {system text}<turn|>
    <|turn>user
    {user text}<turn|>
    <|turn>model
    {reply}<turn|>
    <|turn>model

following Google's Gemma 4 prompt format for the E2B and E4B models. The system turn appears
when there is a system message or thinking is on; ``<|think|>`` at its start switches thinking
on. The model then writes its reasoning in a thought channel before the answer::

    <|channel>thought
    {reasoning}<channel|>{answer}<turn|>

:class:`ThoughtChannelParser` splits a reply into the two parts, also while it streams in. As for
Gemma 3, ``<bos>`` is left out of the string and added by the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

__all__ = ["format_gemma3_chat", "encode_gemma3_chat", "format_gemma4_chat", "encode_gemma4_chat",
           "ThoughtChannelParser", "ReplyDelta", "split_thought_channel"]

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
    _check_role_type(message["role"], index)
    return message["role"], _content_text(message["content"], index)


def _check_role_type(role, index):
    # A role that is not a str (a list, for example) cannot be looked up in the role tables.
    if not isinstance(role, str):
        raise ValueError(f"messages[{index}]['role'] must be a str such as 'user', not {type(role).__name__}")


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


# ------------------------------------------------------------------ Gemma 4

TURN_START = "<|turn>"
TURN_END = "<turn|>"
THINK = "<|think|>"
CHANNEL_START = "<|channel>"
CHANNEL_END = "<channel|>"
IMAGE_PLACEHOLDER = "<|image|>"
AUDIO_PLACEHOLDER = "<|audio|>"

_GEMMA4_ROLES = {"user": "user", "assistant": "model", "model": "model"}
_IMAGE_PART_TYPES = ("image", "image_url")
_AUDIO_PART_TYPES = ("audio", "input_audio")


def _strip_thought_channels(text):
    """Remove every ``<|channel>...<channel|>`` block from a past reply and trim the rest."""
    visible = []
    for part in text.split(CHANNEL_END):
        visible.append(part.split(CHANNEL_START)[0] if CHANNEL_START in part else part)
    return "".join(visible).strip()


def _gemma4_content(content, index, role):
    """Return the text of a Gemma 4 message: text parts, with image and audio parts as placeholders.

    Placeholders mark where precomputed image or audio embeddings go. Text is trimmed, and model
    replies lose their thought channels, as Google's template does.
    """
    if isinstance(content, str):
        return _strip_thought_channels(content) if role == "model" else content.strip()
    if isinstance(content, Mapping) or not isinstance(content, Sequence) or isinstance(content, bytes):
        raise ValueError(
            f"messages[{index}]['content'] must be a str or a list of parts, not {type(content).__name__}"
        )
    texts = []
    for part_index, part in enumerate(content):
        where = f"messages[{index}]['content'][{part_index}]"
        if not isinstance(part, Mapping):
            raise ValueError(f"{where} must be a dict such as {{'type': 'text', 'text': ...}}, not {type(part).__name__}")
        part_type = part.get("type")
        if part_type in _IMAGE_PART_TYPES:
            texts.append(IMAGE_PLACEHOLDER)
        elif part_type in _AUDIO_PART_TYPES:
            texts.append(AUDIO_PLACEHOLDER)
        elif part_type == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{where}['text'] must be a str")
            texts.append(_strip_thought_channels(text) if role == "model" else text.strip())
        else:
            raise ValueError(
                f"{where} has type {part_type!r}; expected 'text', 'image', 'image_url', 'audio' or 'input_audio'"
            )
    return "".join(texts)


def _gemma4_system_text(content):
    """Return the system turn text: a trimmed str, or each trimmed text part followed by a space."""
    if isinstance(content, str):
        return content.strip()
    _content_text(content, 0)  # raises ValueError for parts that are not text
    # Google's template ends every text part of a system message with a space.
    return "".join(part["text"].strip() + " " for part in content)


def format_gemma4_chat(messages, add_generation_prompt=True, enable_thinking=False):
    """Render a conversation as a Gemma 4 prompt string, without the leading ``<bos>``.

    messages: a list of {"role": "system" | "developer" | "user" | "assistant" | "model",
    "content": ...} where content is a str or a list of parts of type "text" ({"text": str}),
    "image"/"image_url" or "audio"/"input_audio" (written as the ``<|image|>`` and ``<|audio|>``
    placeholders). Only the first message may be a system or developer message. A model message
    may carry its earlier reasoning in "reasoning_content" (or "reasoning"). As in Google's
    template, that reasoning becomes a thought channel only in model messages after the last
    user message. Thought channels inside the content of model messages are removed.
    add_generation_prompt: end with ``<|turn>model\n`` so the model writes the reply.
    enable_thinking: write ``<|think|>`` and a newline at the start of the system turn (creating
    the turn when there is no system message), as the chat template published with the E2B
    checkpoint does.

    Raises ValueError for an unknown role (tool calls and the "tool" role are not supported), a
    misplaced system message or content of the wrong shape.
    NOTE: this is the E2B/E4B form. Google's templates for the larger Gemma 4 models also append
    an empty ``<|channel>thought\n<channel|>`` to the generation prompt when thinking is off.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, not {type(messages).__name__}")
    fields = [_message_fields_raw(message, index) for index, message in enumerate(messages)]

    parts = []
    start = 0
    has_system = bool(fields) and fields[0][0] in ("system", "developer")
    if enable_thinking or has_system:
        parts.append(f"{TURN_START}system\n")
        if enable_thinking:
            parts.append(f"{THINK}\n")
        if has_system:
            parts.append(_gemma4_system_text(fields[0][1]))
            start = 1
        parts.append(f"{TURN_END}\n")

    last_user = max((index for index, (role, _) in enumerate(fields) if role == "user"), default=-1)
    for index in range(start, len(messages)):
        role, content = fields[index]
        if role in ("system", "developer"):
            raise ValueError(f"messages[{index}] has role {role!r}; only the first message may be a system message")
        if role not in _GEMMA4_ROLES:
            raise ValueError(
                f"messages[{index}] has role {role!r}; expected 'system', 'developer', 'user', 'assistant' or "
                "'model' (tool calls are not supported)"
            )
        role = _GEMMA4_ROLES[role]
        parts.append(f"{TURN_START}{role}\n")
        reasoning = messages[index].get("reasoning_content") or messages[index].get("reasoning")
        if role == "model" and reasoning and index > last_user:
            if not isinstance(reasoning, str):
                raise ValueError(f"messages[{index}]['reasoning_content'] must be a str")
            parts.append(f"{CHANNEL_START}thought\n{reasoning}\n{CHANNEL_END}")
        parts.append(_gemma4_content(content, index, role))
        parts.append(f"{TURN_END}\n")

    if add_generation_prompt:
        parts.append(f"{TURN_START}model\n")
    return "".join(parts)


def _message_fields_raw(message, index):
    """Return (role, content) of a message without converting the content."""
    if not isinstance(message, Mapping):
        raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', not {type(message).__name__}")
    if "role" not in message or "content" not in message:
        raise ValueError(f"messages[{index}] must have the keys 'role' and 'content'")
    if message.get("tool_calls"):
        raise ValueError(f"messages[{index}] has tool_calls, which the Gemma 4 format here does not support")
    _check_role_type(message["role"], index)
    return message["role"], message["content"]


def encode_gemma4_chat(tokenizer, messages, add_generation_prompt=True, enable_thinking=False):
    """Format messages with :func:`format_gemma4_chat` and encode them, BOS included."""
    prompt = format_gemma4_chat(messages, add_generation_prompt=add_generation_prompt,
                                enable_thinking=enable_thinking)
    return tokenizer.encode(prompt, add_bos=True, special=True)


class ReplyDelta(NamedTuple):
    """Text released by one :meth:`ThoughtChannelParser.feed` call, split by channel."""

    reasoning: str
    content: str


def _held_back_length(text, marker):
    """Return the length of the longest suffix of text that is a proper prefix of marker."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


class ThoughtChannelParser:
    """Split a Gemma 4 reply into its thought channel (reasoning) and its answer, incrementally.

    Feed the reply text with special tokens rendered (``Tokenizer.decode(ids, skip_special=False)``
    or a ``StreamDecoder`` with ``skip_special=False``), in pieces of any size. Each :meth:`feed`
    returns the text that is certain to belong to the reasoning or the answer. Text that might
    be the start of ``<|channel>`` or ``<channel|>`` is held back until the next piece decides
    it, so a marker split across pieces never leaks into the output. The channel name line
    (``thought\n``) and the newline just before ``<channel|>`` are dropped. A reply may contain
    several thought channels. Stop strings such as ``<turn|>`` are left to the caller.
    """

    _ANSWER, _NAME, _THOUGHT = range(3)

    def __init__(self):
        self._state = self._ANSWER
        self._pending = ""
        self.reasoning = ""
        self.content = ""

    def feed(self, text):
        """Add the next piece of the reply and return the :class:`ReplyDelta` it releases."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        self._pending += text
        reasoning = []
        content = []
        while True:
            if self._state == self._ANSWER:
                index = self._pending.find(CHANNEL_START)
                if index < 0:
                    keep = _held_back_length(self._pending, CHANNEL_START)
                    content.append(self._pending[:len(self._pending) - keep])
                    self._pending = self._pending[len(self._pending) - keep:]
                    break
                content.append(self._pending[:index])
                self._pending = self._pending[index + len(CHANNEL_START):]
                self._state = self._NAME
            elif self._state == self._NAME:
                newline = self._pending.find("\n")
                close = self._pending.find(CHANNEL_END)
                if newline < 0 and close < 0:
                    break
                if close >= 0 and (newline < 0 or close < newline):
                    self._pending = self._pending[close + len(CHANNEL_END):]
                    self._state = self._ANSWER
                else:
                    self._pending = self._pending[newline + 1:]
                    self._state = self._THOUGHT
            else:
                index = self._pending.find(CHANNEL_END)
                if index < 0:
                    # Hold back a possible marker start and a trailing newline, which is dropped
                    # when the marker follows it.
                    keep = max(_held_back_length(self._pending, "\n" + CHANNEL_END),
                               _held_back_length(self._pending, CHANNEL_END))
                    reasoning.append(self._pending[:len(self._pending) - keep])
                    self._pending = self._pending[len(self._pending) - keep:]
                    break
                thought = self._pending[:index]
                reasoning.append(thought[:-1] if thought.endswith("\n") else thought)
                self._pending = self._pending[index + len(CHANNEL_END):]
                self._state = self._ANSWER
        delta = ReplyDelta("".join(reasoning), "".join(content))
        self.reasoning += delta.reasoning
        self.content += delta.content
        return delta

    def finish(self):
        """Release the held-back text at the end of the reply and return its :class:`ReplyDelta`.

        An unterminated thought channel counts as reasoning. A channel name that never ended
        with a newline is dropped.
        """
        pending, self._pending = self._pending, ""
        if self._state == self._ANSWER:
            delta = ReplyDelta("", pending)
        elif self._state == self._THOUGHT:
            delta = ReplyDelta(pending, "")
        else:
            delta = ReplyDelta("", "")
        self.reasoning += delta.reasoning
        self.content += delta.content
        return delta


def split_thought_channel(reply):
    """Return (reasoning, answer) of a complete Gemma 4 reply; see :class:`ThoughtChannelParser`."""
    parser = ThoughtChannelParser()
    parser.feed(reply)
    parser.finish()
    return parser.reasoning, parser.content
