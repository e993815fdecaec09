"""Tests of reasoning_content in the OpenAI-compatible server, on a tiny Gemma 4 model.

The model (tests/gemma4_reply_model.py) has weights that make it answer every chat prompt
with the same tokens: a thought channel, then an answer, then <turn|>. transformers' Gemma 4
with the same weights confirms that sequence. The expected reasoning and answer are the
format's own reading of the reply: ``turboquant.chat.split_thought_channel`` of the reply
decoded with its control tokens. The server runs as a subprocess and is driven with the
official ``openai`` client, or with httpx for raw bodies.
"""

import json

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import gemma4_reply_model as reply  # noqa: E402
from test_server import API_KEY, MODEL_NAME, ServerProcess, assert_openai_error, raw_post, sse_events  # noqa: E402
from turboquant import Model  # noqa: E402
from turboquant.chat import CHANNEL_END, CHANNEL_START, encode_gemma4_chat, split_thought_channel  # noqa: E402

CTX = "128"  # the context length written into the tiny model
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
THINKING = {"chat_template_kwargs": {"enable_thinking": True}}
MARKER_TEXTS = (CHANNEL_START, CHANNEL_END, "<|", "|>", "thought\n")


@pytest.fixture(scope="module")
def reply_model(tmp_path_factory):
    """(GGUF path, transformers reference) of the tiny Gemma 4 model with a forced reply."""
    path = tmp_path_factory.mktemp("reply_model") / "gemma4_reply.gguf"
    reference = reply.build_reply_model(path)
    return path, reference


@pytest.fixture(scope="module")
def library(reply_model):
    return Model.load(reply_model[0], threads=1)


@pytest.fixture(scope="module")
def server(reply_model, tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("reasoning") / "server.log", "--weights", str(reply_model[0]),
                            "--ctx", CTX, "--api-key", API_KEY, "--max-concurrent", "2")
    yield process
    process.stop()


def prompt_ids(library, messages, enable_thinking):
    return encode_gemma4_chat(library.tokenizer, messages, enable_thinking=enable_thinking)


def chat(server, stream=False, **options):
    return server.client().chat.completions.create(model=MODEL_NAME, messages=options.pop("messages", QUESTION),
                                                   temperature=0.0, stream=stream, **options)


def streamed(server, **options):
    """Return (reasoning, content, finish_reason, usage, deltas) of a streamed chat completion."""
    chunks = list(chat(server, stream=True, stream_options={"include_usage": True}, **options))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    reasoning = "".join(delta.model_extra.get("reasoning_content") or "" for delta in deltas)
    content = "".join(delta.content or "" for delta in deltas)
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(finish) == 1
    assert len(usage) == 1
    return reasoning, content, finish[0], usage[0], deltas


# ------------------------------------------------------------------ the reference reply


def test_reply_model_emits_forced_reply(reply_model, library):
    path, reference = reply_model
    ids = prompt_ids(library, QUESTION, enable_thinking=True)
    expected = reply.reply_ids()
    assert reply.reference_greedy_reply(reference, ids, len(expected) + 4) == expected
    decoded = library.detokenize(expected[:-1], skip_special=False)
    assert split_thought_channel(decoded) == (reply.REASONING, reply.ANSWER)


# ------------------------------------------------------------------ responses


def test_chat_returns_reasoning_content(server, library):
    result = chat(server, extra_body=THINKING)
    message = result.choices[0].message
    assert message.model_extra["reasoning_content"] == reply.REASONING
    assert message.content == reply.ANSWER
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens == len(prompt_ids(library, QUESTION, enable_thinking=True))
    # <turn|> ends the reply and is not a completion token.
    assert result.usage.completion_tokens == len(reply.REPLY_PIECES) - 1
    assert result.usage.completion_tokens_details.reasoning_tokens == reply.REASONING_TOKENS


def test_chat_stream_matches_non_stream(server):
    full = chat(server, extra_body=THINKING)
    reasoning, content, finish, usage, deltas = streamed(server, extra_body=THINKING)
    assert reasoning == full.choices[0].message.model_extra["reasoning_content"]
    assert content == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens_details.reasoning_tokens == reply.REASONING_TOKENS
    assert usage.completion_tokens == full.usage.completion_tokens
    assert deltas[0].role == "assistant"


def test_stream_chunks_carry_one_channel(server):
    response = raw_post(server, "/v1/chat/completions", {"messages": QUESTION, "temperature": 0, "stream": True,
                                                         **THINKING})
    assert response.status_code == 200, response.text
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    deltas = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    text_deltas = [delta for delta in deltas if set(delta) - {"role"}]
    kinds = [("reasoning_content" in delta) + 2 * ("content" in delta) for delta in text_deltas]
    # Every chunk carries one channel, and the reasoning comes before the answer.
    assert set(kinds) == {1, 2}
    assert kinds == sorted(kinds)
    for delta in text_deltas:
        text = delta.get("reasoning_content") or delta.get("content")
        assert text
        for marker in MARKER_TEXTS:
            assert marker not in text


def test_reasoning_effort_switches_thinking(server, library):
    with_thinking = len(prompt_ids(library, QUESTION, enable_thinking=True))
    without = len(prompt_ids(library, QUESTION, enable_thinking=False))
    assert with_thinking > without
    for effort in ("minimal", "low", "medium", "high"):
        assert chat(server, reasoning_effort=effort).usage.prompt_tokens == with_thinking
    assert chat(server, reasoning_effort="none").usage.prompt_tokens == without
    assert chat(server).usage.prompt_tokens == without
    off = chat(server, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.usage.prompt_tokens == without
    agreeing = chat(server, reasoning_effort="low", extra_body=THINKING)
    assert agreeing.usage.prompt_tokens == with_thinking


def test_history_reasoning_content_in_prompt(server, library):
    # An assistant message after the last user message keeps its reasoning as a thought channel.
    messages = QUESTION + [{"role": "assistant", "content": "Paris", "reasoning_content": "Recall the capital."}]
    result = chat(server, messages=messages)
    assert result.usage.prompt_tokens == len(prompt_ids(library, messages, enable_thinking=False))
    without_reasoning = len(prompt_ids(library, [QUESTION[0], {"role": "assistant", "content": "Paris"}], False))
    assert result.usage.prompt_tokens > without_reasoning


# ------------------------------------------------------------------ stop strings and max_tokens


@pytest.mark.parametrize("stop, content, finish", [
    (["user"], reply.ANSWER, "stop"),        # only in the reasoning: no effect
    (["Paris"], "", "stop"),                  # in both: cuts the answer at its start
    ([" ("], "Paris", "stop"),
    (["!", "nowhere"], "Paris (France)", "stop"),
])
def test_stop_strings_match_answer_only(server, stop, content, finish):
    result = chat(server, stop=stop, extra_body=THINKING)
    assert result.choices[0].message.model_extra["reasoning_content"] == reply.REASONING
    assert result.choices[0].message.content == content
    assert result.choices[0].finish_reason == finish
    reasoning, streamed_content, streamed_finish, _, _ = streamed(server, stop=stop, extra_body=THINKING)
    assert reasoning == reply.REASONING
    assert streamed_content == content
    assert streamed_finish == finish


def test_max_tokens_inside_reasoning(server):
    # <|channel>, "thought", "\n", "The", " user": the limit ends the reply inside the thought channel.
    result = chat(server, max_tokens=5, extra_body=THINKING)
    message = result.choices[0].message
    assert message.model_extra["reasoning_content"] == "The user"
    assert message.content == ""
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.usage.completion_tokens_details.reasoning_tokens == 5
    reasoning, content, finish, usage, _ = streamed(server, max_tokens=5, extra_body=THINKING)
    assert (reasoning, content, finish) == ("The user", "", "length")
    assert usage.completion_tokens_details.reasoning_tokens == 5


def test_max_tokens_inside_answer(server):
    limit = reply.REASONING_TOKENS + 2  # "Paris" and " ("
    result = chat(server, max_tokens=limit, extra_body=THINKING)
    assert result.choices[0].message.model_extra["reasoning_content"] == reply.REASONING
    assert result.choices[0].message.content == "Paris ("
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens_details.reasoning_tokens == reply.REASONING_TOKENS


def test_text_completion_has_no_reasoning(server, library):
    # /v1/completions returns raw text: control tokens, the channel markers among them, are dropped.
    ids = prompt_ids(library, QUESTION, enable_thinking=True)
    result = server.client().completions.create(model=MODEL_NAME, prompt=ids, temperature=0.0, max_tokens=40)
    assert result.choices[0].text == library.detokenize(reply.reply_ids())
    assert result.usage.completion_tokens_details is None


# ------------------------------------------------------------------ invalid options


@pytest.mark.parametrize("options, param", [
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"reasoning_effort": 1}, "reasoning_effort"),
    ({"reasoning_effort": True}, "reasoning_effort"),
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs.enable_thinking"),
    ({"chat_template_kwargs": {"enable_thinking": 1}}, "chat_template_kwargs.enable_thinking"),
    ({"chat_template_kwargs": {"thinking": True}}, "chat_template_kwargs.thinking"),
    ({"chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
    ({"chat_template_kwargs": [True]}, "chat_template_kwargs"),
    ({"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}}, "reasoning_effort"),
    ({"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}}, "reasoning_effort"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "reasoning_content": 3}]},
     "messages.1.reasoning_content"),
])
def test_invalid_thinking_options_400(server, options, param):
    body = {"messages": QUESTION, **options}
    error = assert_openai_error(raw_post(server, "/v1/chat/completions", body), 400, param)
    assert param.split(".")[-1] in error["message"]


def test_unknown_template_kwarg_message(server):
    body = {"messages": QUESTION, "chat_template_kwargs": {"thinking": True}}
    error = assert_openai_error(raw_post(server, "/v1/chat/completions", body), 400)
    assert "enable_thinking" in error["message"]
    with pytest.raises(openai.BadRequestError):
        chat(server, extra_body={"chat_template_kwargs": {"thinking": True}})


def test_schema_declares_reasoning_fields(server):
    components = httpx.get(server.base_url + "/openapi.json", timeout=10).json()["components"]["schemas"]
    request = components["ChatCompletionRequest"]["properties"]
    assert set(request["reasoning_effort"]["anyOf"][0]["enum"]) == {"none", "minimal", "low", "medium", "high"}
    assert components["ChatTemplateKwargs"]["additionalProperties"] is False
    assert "reasoning_content" in components["ChatMessage"]["properties"]
    assert "reasoning_content" in components["AssistantMessage"]["properties"]
    assert "reasoning_tokens" in components["CompletionTokensDetails"]["properties"]
