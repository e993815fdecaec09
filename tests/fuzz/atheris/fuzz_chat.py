"""atheris harness of turboquant.chat: Gemma 3 and Gemma 4 chat templates, thought-channel parser.

Run: python tests/fuzz/atheris/fuzz_chat.py [libFuzzer options] [CORPUS_DIR]

Contracts checked on every input:
- format_gemma3_chat and format_gemma4_chat return a str or raise ValueError, never another
  exception. A rendered prompt contains the stripped text of every message and ends with the
  generation prompt when one is requested.
- ThoughtChannelParser gives the same reasoning and answer whatever the pieces the reply is
  fed in, its deltas add up to its totals, the answer never contains ``<|channel>``, the
  reasoning never contains ``<channel|>``, and a reply without ``<|channel>`` is all answer.
"""

import sys

import atheris

import fuzz_values

with atheris.instrument_imports(include=["turboquant.chat"]):
    from turboquant import chat


def _expected_text(content, placeholders=None):
    """Return the text a rendered turn must contain: str content, or its parts joined.

    placeholders maps the media part types of Gemma 4 to the marker written in their place.
    """
    if isinstance(content, str):
        return content.strip()
    texts = []
    for part in content:
        if part["type"] == "text":
            texts.append(part["text"].strip())
        else:
            texts.append(placeholders[part["type"]])
    return "".join(texts)


GEMMA4_PLACEHOLDERS = {"image": chat.IMAGE_PLACEHOLDER, "image_url": chat.IMAGE_PLACEHOLDER,
                       "audio": chat.AUDIO_PLACEHOLDER, "input_audio": chat.AUDIO_PLACEHOLDER}


def check_gemma3(fdp):
    messages = fuzz_values.consume_messages(fdp)
    add_generation_prompt = fdp.ConsumeBool()
    try:
        prompt = chat.format_gemma3_chat(messages, add_generation_prompt=add_generation_prompt)
    except ValueError:
        return
    assert isinstance(prompt, str)
    if add_generation_prompt:
        assert prompt.endswith(chat.START_OF_TURN + "model\n"), prompt
    elif messages:
        assert prompt.endswith(chat.END_OF_TURN + "\n"), prompt
    for message in messages:
        assert _expected_text(message["content"]) in prompt, (message, prompt)
    if messages and messages[0]["role"] != "system":
        assert prompt.startswith(chat.START_OF_TURN + "user\n"), prompt


def check_gemma4(fdp):
    messages = fuzz_values.consume_messages(fdp)
    add_generation_prompt = fdp.ConsumeBool()
    enable_thinking = fdp.ConsumeBool()
    try:
        prompt = chat.format_gemma4_chat(messages, add_generation_prompt=add_generation_prompt,
                                         enable_thinking=enable_thinking)
    except ValueError:
        return
    assert isinstance(prompt, str)
    if add_generation_prompt:
        assert prompt.endswith(chat.TURN_START + "model\n"), prompt
    if enable_thinking:
        assert prompt.startswith(chat.TURN_START + "system\n" + chat.THINK + "\n"), prompt
    for message in messages:
        if message["role"] == "user":
            assert _expected_text(message["content"], GEMMA4_PLACEHOLDERS) in prompt, (message, prompt)


def check_thought_parser(fdp):
    pieces = [fuzz_values.consume_text(fdp, 3) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    reply = "".join(pieces)

    whole = chat.split_thought_channel(reply)
    parser = chat.ThoughtChannelParser()
    reasoning = []
    content = []
    for piece in pieces:
        delta = parser.feed(piece)
        reasoning.append(delta.reasoning)
        content.append(delta.content)
    delta = parser.finish()
    reasoning.append(delta.reasoning)
    content.append(delta.content)

    assert (parser.reasoning, parser.content) == whole, (pieces, whole, parser.reasoning, parser.content)
    assert "".join(reasoning) == parser.reasoning
    assert "".join(content) == parser.content
    assert chat.CHANNEL_START not in parser.content, pieces
    assert chat.CHANNEL_END not in parser.reasoning, pieces
    assert len(parser.reasoning) + len(parser.content) <= len(reply)
    if chat.CHANNEL_START not in reply:
        assert whole == ("", reply), pieces


CHECKS = [check_gemma3, check_gemma4, check_thought_parser]


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    fdp.PickValueInList(CHECKS)(fdp)


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
