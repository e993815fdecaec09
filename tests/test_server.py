"""Tests of the OpenAI-compatible server on the real default model.

Each server runs as a subprocess (``python -m turboquant serve``) on a free loopback port and
is driven with the official ``openai`` client, or with raw HTTP (httpx) for malformed
requests. The reference for generated text is ``turboquant.Model`` loaded in this process and
run alone, at temperature 0. Contexts stay at 256 tokens, so decode attention reads at most
one chunk of 256 positions. Its arithmetic then does not depend on how many threads a
request gets, and greedy text must match exactly.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from turboquant import Model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTX = 256
API_KEY = "test-key-123"
MODEL_NAME = "gemma-test"
STARTUP_TIMEOUT = 120  # seconds; loading the model takes about one

CHAT = [{"role": "user", "content": "Name three colors."}]
COMPLETION_PROMPT = "The capital of France is"
# A character outside the vocabulary: the tokenizer writes it as 4 byte tokens, so every
# streamed character is split across tokens.
HIEROGLYPH = "\U00013000"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A turboquant server subprocess with its log file."""

    def __init__(self, log_path, *options):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, OMP_NUM_THREADS="2")
        command = [sys.executable, "-m", "turboquant", "serve", "--port", str(self.port), "--ctx", str(CTX),
                   "--threads", "2", "--model-name", MODEL_NAME, *options]
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /health within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def client(self, api_key=API_KEY, **kwargs):
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0, **kwargs)

    def stop(self):
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("server") / "server.log", "--api-key", API_KEY,
                            "--max-concurrent", "8", "--max-queue", "8")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def single_slot_server(tmp_path_factory):
    """A server with one worker and no queue, for the 503 and disconnect cases."""
    process = ServerProcess(tmp_path_factory.mktemp("single") / "server.log", "--max-concurrent", "1",
                            "--max-queue", "0")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def reference():
    return Model.load(threads=2, ctx=CTX)


def reference_chat(model, messages, **sampling):
    model.reset()
    text = model.chat(messages, temperature=0.0, **sampling)
    return text, model.last_stats


def reference_generate(model, prompt, **sampling):
    model.reset()
    text = model.generate(prompt, temperature=0.0, **sampling)
    return text, model.last_stats


def raw_post(server, path, body, api_key=API_KEY, **kwargs):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if isinstance(body, (dict, list)):
        return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60, **kwargs)
    headers["Content-Type"] = "application/json"
    return httpx.post(server.base_url + path, content=body, headers=headers, timeout=60, **kwargs)


def sse_events(response):
    """Return the data fields of a Server-Sent Events response, in order."""
    return [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]


def assert_openai_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# ------------------------------------------------------------------ models, health


def test_models_list(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].object == "model"
    assert server.client().models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_health(server):
    body = httpx.get(server.base_url + "/health", timeout=10).json()
    assert body["status"] == "ok"
    assert body["model"] == MODEL_NAME
    assert "server ready: model " + MODEL_NAME in server.log()


# ------------------------------------------------------------------ chat completions


def test_chat_matches_library(server, reference):
    expected, stats = reference_chat(reference, CHAT, max_tokens=12)
    result = server.client().chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12,
                                                     temperature=0)
    assert result.object == "chat.completion"
    assert result.model == MODEL_NAME
    assert len(result.choices) == 1
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected
    assert result.choices[0].finish_reason == stats.finish_reason
    assert result.usage.prompt_tokens == stats.prompt_tokens
    assert result.usage.completion_tokens == stats.completion_tokens
    assert result.usage.total_tokens == stats.prompt_tokens + stats.completion_tokens


def test_chat_gemma3_has_no_reasoning(server, reference):
    # Gemma 3 has no thought channel: thinking switched off explicitly is accepted, and the reply
    # is the library's, with no reasoning in the message, the stream or the usage.
    expected, _ = reference_chat(reference, CHAT, max_tokens=8)
    options = dict(model=MODEL_NAME, messages=CHAT, max_tokens=8, temperature=0, reasoning_effort="none",
                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    result = server.client().chat.completions.create(**options)
    assert result.choices[0].message.content == expected
    assert result.choices[0].message.model_extra.get("reasoning_content") is None
    assert result.usage.completion_tokens_details.reasoning_tokens == 0
    chunks = list(server.client().chat.completions.create(stream=True, **options))
    assert all("reasoning_content" not in chunk.choices[0].delta.model_extra for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected


def test_chat_finish_reason_length(server):
    result = server.client().chat.completions.create(model=MODEL_NAME, messages=CHAT, max_completion_tokens=3,
                                                     temperature=0)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 3


def test_chat_content_parts_and_system(server, reference):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Name three"}, {"type": "text", "text": " colors."}]},
    ]
    expected, _ = reference_chat(reference, [{"role": "system", "content": "Answer briefly."},
                                             {"role": "user", "content": "Name three colors."}], max_tokens=8)
    result = server.client().chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8,
                                                     temperature=0)
    assert result.choices[0].message.content == expected


def test_chat_stream_equals_non_stream(server):
    client = server.client()
    full = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0,
                                                 stream=True))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert len({chunk.created for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content, "the first chunk must carry text, not an empty delta"
    for chunk in chunks[:-1]:
        assert chunk.choices[0].finish_reason is None
        assert chunk.choices[0].delta.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == full.choices[0].message.content


def test_chat_stream_include_usage(server):
    body = {"messages": CHAT, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    response = raw_post(server, "/v1/chat/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    usage_chunks = [chunk for chunk in chunks if chunk.get("usage")]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1], "the usage chunk must come last, just before [DONE]"
    assert usage_chunks[0]["choices"] == []
    usage = usage_chunks[0]["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    # The same stream through the official client: exactly one chunk with usage and no choices.
    stream = server.client().chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=6,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
    client_chunks = list(stream)
    assert [chunk.choices for chunk in client_chunks if chunk.usage is not None] == [[]]


# ------------------------------------------------------------------ text completions


def test_completion_matches_library(server, reference):
    expected, stats = reference_generate(reference, COMPLETION_PROMPT, max_tokens=10)
    result = server.client().completions.create(model=MODEL_NAME, prompt=COMPLETION_PROMPT, max_tokens=10,
                                                temperature=0)
    assert result.object == "text_completion"
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == stats.finish_reason
    assert result.usage.prompt_tokens == stats.prompt_tokens
    assert result.usage.completion_tokens == stats.completion_tokens

    stream = server.client().completions.create(model=MODEL_NAME, prompt=COMPLETION_PROMPT, max_tokens=10,
                                                temperature=0, stream=True)
    pieces = [chunk.choices[0].text for chunk in stream]
    assert pieces[0], "the first chunk must carry text"
    assert "".join(pieces) == expected


def test_completion_token_ids_prompt(server, reference):
    ids = reference.tokenize(COMPLETION_PROMPT)
    expected, _ = reference_generate(reference, ids, max_tokens=6)
    result = server.client().completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0)
    assert result.choices[0].text == expected


def test_stop_strings(server, reference):
    unstopped, _ = reference_generate(reference, COMPLETION_PROMPT, max_tokens=10)
    # A stop string that starts inside the output and spans several tokens.
    words = unstopped.split(" ")
    assert len(words) >= 4, unstopped
    stop = " " + words[2] + " " + words[3]
    expected = unstopped[: unstopped.index(stop)]
    client = server.client()
    for stop_value in (stop, ["#never#", stop]):
        result = client.completions.create(model=MODEL_NAME, prompt=COMPLETION_PROMPT, max_tokens=10,
                                           temperature=0, stop=stop_value)
        assert result.choices[0].text == expected
        assert result.choices[0].finish_reason == "stop"
        stream = client.completions.create(model=MODEL_NAME, prompt=COMPLETION_PROMPT, max_tokens=10,
                                           temperature=0, stop=stop_value, stream=True)
        pieces = [chunk.choices[0].text for chunk in stream]
        # Text that may start the stop string is held back, so no piece leaks part of it.
        assert "".join(pieces) == expected
    chat_stop = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0,
                                               stop=["\n"])
    assert "\n" not in chat_stop.choices[0].message.content


def test_utf8_split_across_tokens(server, reference):
    prompt = HIEROGLYPH * 8
    assert len(reference.tokenize(HIEROGLYPH, add_bos=False)) == 4, "the test needs a byte-fallback character"
    expected, stats = reference_generate(reference, prompt, max_tokens=12)
    assert HIEROGLYPH in expected
    assert stats.completion_tokens > len(expected)
    response = raw_post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                    "stream": True})
    pieces = [json.loads(event)["choices"][0]["text"] for event in sse_events(response)[:-1]]
    for piece in pieces:
        assert "\ufffd" not in piece
    assert "".join(pieces) == expected


# ------------------------------------------------------------------ errors


def test_api_key_required(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong-key").models.list()
    response = httpx.get(server.base_url + "/v1/models", timeout=10)
    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert API_KEY not in response.text


def test_unknown_route_404(server):
    response = httpx.get(server.base_url + "/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"},
                         timeout=10)
    assert_openai_error(response, 404)
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("no-such-model")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": CHAT, "n": 2}, "n"),
        ({"messages": CHAT, "temperature": 3}, "temperature"),
        ({"messages": CHAT, "top_p": 0}, "top_p"),
        ({"messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ({"messages": CHAT, "stop": ""}, "stop"),
        ({"messages": []}, "messages"),
        ({"max_tokens": 4}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages"),
        ({"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": CHAT, "logprobs": True}, "logprobs"),
        ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": CHAT, "logit_bias": {"100": 5}}, "logit_bias"),
        ({"messages": CHAT, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": CHAT, "seed": "abc"}, "seed"),
        ({"messages": CHAT, "reasoning_effort": "high"}, "reasoning_effort"),
        ({"messages": CHAT, "chat_template_kwargs": {"enable_thinking": True}}, "chat_template_kwargs.enable_thinking"),
    ],
)
def test_chat_invalid_request_400(server, body, param):
    assert_openai_error(raw_post(server, "/v1/chat/completions", body), 400, param)


def test_wrong_method_405(server):
    response = httpx.get(server.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                         timeout=10)
    assert_openai_error(response, 405)


def test_invalid_json_400(server):
    assert_openai_error(raw_post(server, "/v1/chat/completions", b"{not json"), 400)
    assert_openai_error(raw_post(server, "/v1/completions", b"[1, 2]"), 400)


def test_completion_invalid_prompts_400(server):
    assert_openai_error(raw_post(server, "/v1/completions", {"prompt": ["a", "b"]}), 400, "prompt")
    assert_openai_error(raw_post(server, "/v1/completions", {"prompt": [5, 10**9]}), 400, "prompt")
    assert_openai_error(raw_post(server, "/v1/completions", {"prompt": "x", "echo": True}), 400, "echo")


def test_prompt_past_context_400(server):
    long_prompt = "word " * (CTX + 10)
    response = raw_post(server, "/v1/completions", {"prompt": long_prompt, "max_tokens": 4})
    error = assert_openai_error(response, 400, "prompt")
    assert error["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": long_prompt}])


def test_errors_are_logged(server):
    raw_post(server, "/v1/chat/completions", {"messages": CHAT, "n": 3})
    log = server.log()
    assert "n=3 is not supported" in log
    assert API_KEY not in log


def test_speculative_server_matches_library(tmp_path, reference):
    # The shipped heads, and a draft tree from a configuration file's tree_branching.
    config = tmp_path / "spec.yaml"
    config.write_text("speculative: mtp\ntree_branching: [2, 1]\n")
    process = ServerProcess(tmp_path / "server.log", "--config", str(config))
    try:
        expected, stats = reference_chat(reference, CHAT, max_tokens=24)
        client = process.client()
        result = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=24, temperature=0)
        assert result.choices[0].message.content == expected
        assert result.usage.completion_tokens == stats.completion_tokens
        streamed = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=24, temperature=0,
                                                  stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == expected
        assert "speculative decoding with the heads of default" in process.log()
    finally:
        process.stop()


def test_bad_mtp_checkpoint_stops_the_server(tmp_path):
    (tmp_path / "mtp-step-00000001.safetensors").write_bytes(b"not a safetensors file")
    result = subprocess.run([sys.executable, "-m", "turboquant", "serve", "--port", "0", "--mtp-checkpoint",
                             str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "mtp-step-00000001.safetensors" in result.stderr


def test_serve_help_lists_flags():
    result = subprocess.run([sys.executable, "-m", "turboquant.server.main", "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for flag in ("--weights", "--mtp-checkpoint", "--host", "--port", "--cache-type-k", "--cache-type-v",
                 "--threads", "--max-concurrent", "--ctx", "--api-key", "--model-name"):
        assert flag in result.stdout


# ------------------------------------------------------------------ concurrency


def test_concurrent_streams_match_alone(server):
    prompts = [[{"role": "user", "content": f"Count from {i} to {i + 5}."}] for i in range(8)]
    client = server.client(timeout=300)
    alone = [client.chat.completions.create(model=MODEL_NAME, messages=p, max_tokens=10, temperature=0)
             .choices[0].message.content for p in prompts]

    results = [None] * len(prompts)
    errors = []
    barrier = threading.Barrier(len(prompts))

    def stream(index):
        try:
            barrier.wait(timeout=60)
            chunks = client.chat.completions.create(model=MODEL_NAME, messages=prompts[index], max_tokens=10,
                                                    temperature=0, stream=True)
            results[index] = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        except Exception as exc:  # collected and reported by the assert below
            errors.append((index, repr(exc)))

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(len(prompts))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert not errors
    for index in range(len(prompts)):
        assert results[index] == alone[index], f"client {index}"
    # The log shows that the requests overlapped: some started while others were running.
    assert any(f", {n} running" in server.log() for n in range(2, 9))


def test_queue_full_503(single_slot_server):
    server = single_slot_server
    long_request = threading.Thread(
        target=lambda: raw_post(server, "/v1/completions", {"prompt": COMPLETION_PROMPT, "max_tokens": 40,
                                                            "temperature": 0}, api_key=None))
    long_request.start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(server.base_url + "/health", timeout=10).json()["running"] < 1:
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.05)
        response = raw_post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 2}, api_key=None)
        error = assert_openai_error(response, 503)
        assert error["code"] == "queue_full"
    finally:
        long_request.join(timeout=120)


def test_disconnect_frees_slot(single_slot_server):
    server = single_slot_server
    body = {"prompt": COMPLETION_PROMPT, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", server.base_url + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[len("data: "):])["choices"][0]["text"]
        # Leaving the block closes the connection mid-stream.
    deadline = time.monotonic() + 30
    while httpx.get(server.base_url + "/health", timeout=10).json()["running"] != 0:
        assert time.monotonic() < deadline, "the disconnected request still occupies its worker"
        time.sleep(0.05)
    assert "cancelled after" in server.log()
    # The single worker is free again: a new request is admitted and completes.
    response = raw_post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 2}, api_key=None)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2


def test_shutdown_logged(single_slot_server):
    single_slot_server.stop()
    log = single_slot_server.log()
    assert "server stopping" in log
    assert "server stopped" in log
