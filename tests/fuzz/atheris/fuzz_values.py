"""Build Python values for the atheris harnesses from a FuzzedDataProvider.

Strings are drawn partly from a vocabulary of the words the parsers look for (roles, part
types, control tokens and channel markers), so the fuzzer reaches the branches behind them
without having to guess the exact spelling byte by byte.
"""

import os
import sys

# The harnesses run as scripts from any directory; import turboquant from this checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

WORDS = [
    "system", "developer", "user", "assistant", "model", "tool", "", " ", "\n", "\n\n",
    "text", "image", "image_url", "audio", "input_audio", "type", "content", "role",
    "<bos>", "<start_of_turn>", "<end_of_turn>", "<|turn>", "<turn|>", "<|think|>",
    "<|channel>", "<channel|>", "thought", "thought\n", "<|image|>", "<|audio|>",
    "\ud800", "\udfff", "\x00", "\u00e9", "\U00013000",
]


def consume_text(fdp, max_parts=4):
    """Return a str made of vocabulary words and arbitrary Unicode (lone surrogates included)."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, max_parts)):
        if fdp.ConsumeBool():
            parts.append(fdp.PickValueInList(WORDS))
        else:
            parts.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 16)))
    return "".join(parts)


def consume_value(fdp, depth=0):
    """Return an arbitrary JSON-like value, sometimes of a type JSON cannot carry (bytes, tuple)."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 9))
    if kind == 3:
        return fdp.ConsumeFloat()
    if kind == 4:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    if kind == 5:
        return consume_text(fdp)
    if kind in (6, 7):
        return [consume_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 8:
        return tuple(consume_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    return {consume_text(fdp, 1): consume_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def consume_content(fdp):
    """Return message content: mostly a str or a list of parts, else any value."""
    choice = fdp.ConsumeIntInRange(0, 4)
    if choice <= 1:
        return consume_text(fdp)
    if choice <= 3:
        parts = []
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            if fdp.ConsumeIntInRange(0, 5) == 0:
                parts.append(consume_value(fdp, 1))
                continue
            part = {"type": fdp.PickValueInList(["text", "image", "image_url", "audio", "input_audio", "video"])}
            if fdp.ConsumeIntInRange(0, 5) == 0:
                part["text"] = consume_value(fdp, 1)
            elif part["type"] == "text" or fdp.ConsumeBool():
                part["text"] = consume_text(fdp)
            parts.append(part)
        return parts
    return consume_value(fdp, 1)


def consume_messages(fdp):
    """Return a chat message list, sometimes of the wrong shape."""
    if fdp.ConsumeIntInRange(0, 15) == 0:
        return consume_value(fdp)
    messages = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        if fdp.ConsumeIntInRange(0, 15) == 0:
            messages.append(consume_value(fdp, 1))
            continue
        message = {}
        if fdp.ConsumeIntInRange(0, 15) != 0:
            roles = ["system", "developer", "user", "assistant", "model", "tool"]
            message["role"] = fdp.PickValueInList(roles) if fdp.ConsumeIntInRange(0, 7) else consume_value(fdp, 1)
        if fdp.ConsumeIntInRange(0, 15) != 0:
            message["content"] = consume_content(fdp)
        if fdp.ConsumeIntInRange(0, 3) == 0:
            key = fdp.PickValueInList(["reasoning_content", "reasoning", "tool_calls", "name"])
            message[key] = consume_text(fdp) if fdp.ConsumeBool() else consume_value(fdp, 1)
        messages.append(message)
    return messages
