"""Robustness of the HTTP server against malformed, oversized, slow and numerous requests.

One server subprocess with the real default model and small limits (64 KiB bodies, 2 s for
request heads and bodies, 5 s per response write) serves every test. Requests are raw HTTP
over sockets or httpx, so that they can be malformed and slow. After each test that attacks
the server, the server must still list its model on ``/v1/models`` and run a real completion.
"""

import json
import socket
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_server import ServerProcess, assert_openai_error  # noqa: E402

MAX_BODY = 65536
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# Upper bound for a timeout to take effect: the timeout plus scheduling slack on a busy
# 2-core machine where other processes compete for the CPU.
TIMEOUT_SLACK = 8.0

CHAT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("robust") / "server.log", "--max-body-bytes", str(MAX_BODY),
                            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                            "--send-timeout", "5", "--max-concurrent", "2", "--max-queue", "4")
    yield process
    process.stop()


def post(server, path, content, content_type="application/json", **kwargs):
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return httpx.post(server.base_url + path, content=content, headers=headers, timeout=60, **kwargs)


def assert_server_healthy(server):
    """Check that the server lists its model and runs a real completion."""
    models = httpx.get(server.base_url + "/v1/models", timeout=30)
    assert models.status_code == 200, models.text
    body = {"prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
    completion = httpx.post(server.base_url + "/v1/completions", json=body, timeout=120)
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] == 2


def open_socket(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def wait_closed(sock, limit):
    """Return the seconds until the server closes sock (reads return EOF or reset), at most limit."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"the server kept the connection open for more than {limit} s")
    return time.monotonic() - start


def read_response(sock, limit):
    """Read one HTTP response on sock until the server closes it; return (status, body bytes)."""
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else None
    return status, body


# ------------------------------------------------------------------ oversized bodies


def test_body_over_limit_413(server):
    body = json.dumps({"prompt": "a" * (MAX_BODY + 1), "max_tokens": 1}).encode()
    error = assert_openai_error(post(server, "/v1/completions", body), 413)
    assert error["code"] == "request_too_large"
    assert str(MAX_BODY) in error["message"]
    assert "--max-body-bytes" in error["message"]
    assert_server_healthy(server)


def test_chunked_body_over_limit_413(server):
    # Without Content-Length the limit applies while the body arrives.
    def chunks():
        for _ in range(2 * MAX_BODY // 4096 + 1):
            yield b"a" * 4096

    response = post(server, "/v1/chat/completions", chunks())
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large"
    assert_server_healthy(server)


def test_body_at_limit_accepted(server):
    text = "a" * (MAX_BODY - 100)
    body = json.dumps({"prompt": text, "max_tokens": 1})
    body = body + " " * (MAX_BODY - len(body))
    assert len(body) == MAX_BODY
    # The prompt is longer than the 256-token context: the body passes the size check and
    # reaches the context check.
    error = assert_openai_error(post(server, "/v1/completions", body.encode()), 400, "prompt")
    assert error["code"] == "context_length_exceeded"


def test_max_body_bytes_default_in_help():
    from turboquant.server import build_parser
    from turboquant.server.http_guard import HTTPLimits

    assert HTTPLimits().max_body_bytes == 4 * 1024 * 1024
    assert build_parser().parse_args([]).max_body_bytes == 4 * 1024 * 1024
    assert "--max-body-bytes" in build_parser().format_help()


# ------------------------------------------------------------------ slow clients


def test_idle_connection_closed(server):
    with open_socket(server) as sock:
        waited = wait_closed(sock, HEADER_TIMEOUT + TIMEOUT_SLACK)
    assert waited >= HEADER_TIMEOUT - 0.5
    assert "no complete request head" in server.log()


def test_headers_byte_at_a_time_closed(server):
    head = b"GET /v1/models HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 1000
    start = time.monotonic()
    closed = False
    with open_socket(server) as sock:
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                assert time.monotonic() - start < HEADER_TIMEOUT + TIMEOUT_SLACK, "the connection stayed open"
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            closed = wait_closed(sock, TIMEOUT_SLACK) is not None
    assert closed
    assert time.monotonic() - start >= HEADER_TIMEOUT - 0.5
    assert_server_healthy(server)


def test_slow_head_after_keep_alive_closed(server):
    # A second request on a kept-alive connection has the same time for its head.
    with open_socket(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        waited = wait_closed(sock, HEADER_TIMEOUT + TIMEOUT_SLACK)
    assert waited < HEADER_TIMEOUT + TIMEOUT_SLACK


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_stalled_body_408(server, path):
    head = (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 200\r\n\r\n").encode()
    with open_socket(server) as sock:
        sock.sendall(head + b'{"prompt": "stalled')
        start = time.monotonic()
        status, body = read_response(sock, BODY_TIMEOUT + TIMEOUT_SLACK)
        waited = time.monotonic() - start
    assert status == 408, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "timeout"
    assert waited >= BODY_TIMEOUT - 0.5
    health = httpx.get(server.base_url + "/health", timeout=30).json()
    assert health["running"] == 0
    assert health["queued"] == 0


def test_disconnect_mid_body_logged(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n")
    with open_socket(server) as sock:
        sock.sendall(head + b'{"prompt": "gone')
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while "the client disconnected after 16 bytes of the body" not in server.log():
        assert time.monotonic() < deadline, "the disconnect was not logged"
        time.sleep(0.1)
    assert_server_healthy(server)


def test_slow_stream_reader_does_not_block(server):
    # A client that sends a streamed request and never reads its response.
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = open_socket(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    try:
        sock.sendall(head + body)
        # Other clients are served while the stream is unread.
        assert_server_healthy(server)
        # The generation finishes and frees its worker although no client reads the stream.
        deadline = time.monotonic() + 120
        while httpx.get(server.base_url + "/health", timeout=30).json()["running"] != 0:
            assert time.monotonic() < deadline, "the unread stream still occupies a worker"
            time.sleep(0.2)
    finally:
        sock.close()
    assert_server_healthy(server)


# ------------------------------------------------------------------ malformed JSON


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_invalid_utf8_400(server, path):
    body = b'{"prompt": "caf\xe9", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    error = assert_openai_error(post(server, path, body), 400)
    assert "not valid UTF-8" in error["message"]
    assert "byte offset 15" in error["message"]
    assert error["code"] == "invalid_encoding"


def test_utf16_body_400(server):
    body = json.dumps({"prompt": "hi", "max_tokens": 1}).encode("utf-16")
    error = assert_openai_error(post(server, "/v1/completions", body), 400)
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ('{"prompt": "ab\\ud800", "max_tokens": 1}', "prompt"),
        ('{"prompt": "\\udfff", "max_tokens": 1}', "prompt"),
        ('{"prompt": "hi", "stop": ["x", "\\ud800"], "max_tokens": 1}', "stop.1"),
        ('{"prompt": "hi", "\\ud800": 1, "max_tokens": 1}', "\\ud800"),
    ],
)
def test_lone_surrogate_completion_400(server, body, param):
    response = post(server, "/v1/completions", body.encode())
    error = assert_openai_error(response, 400)
    assert "lone surrogate" in error["message"]
    assert error["code"] == "invalid_encoding"
    assert error["param"] == param


def test_lone_surrogate_chat_400(server):
    body = '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}'
    error = assert_openai_error(post(server, "/v1/chat/completions", body.encode()), 400,
                                "messages.0.content.0.text")
    assert "lone surrogate" in error["message"]


def test_surrogate_pair_accepted(server):
    # A character outside the BMP escaped as a surrogate pair is valid JSON text.
    body = '{"prompt": "\\ud83d\\ude00", "max_tokens": 1, "temperature": 0}'
    response = post(server, "/v1/completions", body.encode())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("depth", [65, 30_000])
def test_deeply_nested_json_400(server, depth):
    # 30,000 levels fit in the 64 KiB body limit and pass Python's recursion limit (1,000)
    # inside the json module.
    body = '{"prompt": ' + "[" * depth + "]" * depth + "}"
    error = assert_openai_error(post(server, "/v1/completions", body.encode()), 400)
    assert "64 levels" in error["message"]
    assert_server_healthy(server)


def test_invalid_json_names_position(server):
    error = assert_openai_error(post(server, "/v1/completions", b'{"prompt": "x",}'), 400)
    assert "not valid JSON" in error["message"]
    assert "(line 1, column 16)" in error["message"]
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_400(server, literal):
    body = '{"prompt": "hi", "temperature": ' + literal + "}"
    error = assert_openai_error(post(server, "/v1/completions", body.encode()), 400)
    assert literal.lstrip("-") in error["message"]


def test_number_overflow_400(server):
    error = assert_openai_error(post(server, "/v1/completions", b'{"prompt": "hi", "top_p": 1e400}'), 400, "top_p")
    assert "finite" in error["message"]
    body = json.dumps({"prompt": "hi", "top_k": 10**20}).encode()
    assert_openai_error(post(server, "/v1/completions", body), 400, "top_k")


# ------------------------------------------------------------------ content types


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_wrong_content_type_415(server, content_type):
    body = json.dumps({"prompt": "hi", "max_tokens": 1}).encode()
    error = assert_openai_error(post(server, "/v1/completions", body, content_type=content_type), 415)
    assert error["code"] == "unsupported_media_type"
    assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json", None])
def test_json_content_types_accepted(server, content_type):
    body = json.dumps({"prompt": "hi", "max_tokens": 1, "temperature": 0}).encode()
    response = post(server, "/v1/completions", body, content_type=content_type)
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ many connections


def test_many_connections(server):
    # 200 connections at once: 100 idle, 50 with half a request head, 50 complete requests.
    idle = [open_socket(server) for _ in range(100)]
    partial = [open_socket(server) for _ in range(50)]
    for sock in partial:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: te")
    statuses = []
    lock = threading.Lock()

    def list_models():
        try:
            status = httpx.get(server.base_url + "/v1/models", timeout=60).status_code
        except httpx.HTTPError as exc:
            status = repr(exc)
        with lock:
            statuses.append(status)

    try:
        clients = [threading.Thread(target=list_models) for _ in range(50)]
        for client in clients:
            client.start()
        assert_server_healthy(server)
        for client in clients:
            client.join(timeout=120)
        assert statuses == [200] * 50
    finally:
        for sock in idle + partial:
            sock.close()
    assert_server_healthy(server)


# ------------------------------------------------------------------ schemathesis findings


def test_method_not_allowed_has_allow_header(server):
    # HTTP requires the Allow header on a 405 (RFC 9110, section 15.5.6).
    response = httpx.request("TRACE", server.base_url + "/v1/completions", timeout=30)
    assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "field, value",
    [("echo", 0), ("stream", "true"), ("max_tokens", "5"), ("temperature", "1"), ("seed", 1.0), ("prompt", [True])],
)
def test_lax_types_rejected(server, field, value):
    body = {"prompt": "hi", "max_tokens": 1, field: value}
    response = httpx.post(server.base_url + "/v1/completions", json=body, timeout=60)
    assert_openai_error(response, 400, "prompt" if field == "prompt" else field)


def test_message_without_content_400(server):
    body = {"messages": [{"role": "user"}], "max_tokens": 1}
    response = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)
    error = assert_openai_error(response, 400, "messages.0.content")
    assert error["code"] == "missing_required_parameter"


def test_send_timeout_ends_response(caplog):
    # A real stream rarely fills the socket buffers (tens of KB on loopback), so this drives a
    # FastAPI streaming route behind RequestGuard with a send that blocks after the first chunk,
    # as for a client that stopped reading.
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from turboquant.server.http_guard import HTTPLimits, RequestGuard

    app = FastAPI()
    app.add_middleware(RequestGuard, limits=HTTPLimits(send_timeout=0.2), json_paths=frozenset())

    @app.get("/stream")
    async def stream():
        async def events():
            for index in range(1000):
                yield f"data: {index}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    received = []
    sent = []

    async def receive():
        received.append(True)
        if len(received) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects

    async def send(message):
        sent.append(message["type"])
        if len(sent) >= 3:
            await asyncio.Event().wait()  # the client stopped reading

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "GET", "path": "/stream", "raw_path": b"/stream", "query_string": b"", "headers": [],
             "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "root_path": ""}
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="turboquant.server"):
        asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    assert time.monotonic() - start < 5
    assert sent == ["http.response.start", "http.response.body", "http.response.body"]
    assert "GET /stream: the client read nothing for 0.2 s; closing the connection" in caplog.text


# ------------------------------------------------------------------ JSON decoding, in process


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "\\\\ud800"}',  # an escaped backslash, then the letters "ud800"
        b'{"prompt": "[[[[{{{{\\"]]]"}',  # brackets inside a string are not nesting
        b'{"prompt": "\\ud83d\\ude00"}',  # a surrogate pair
        b'{"p": ' + b"[" * 63 + b"]" * 63 + b"}",  # 64 levels with the outer object
    ],
)
def test_decode_json_body_accepts(body):
    from turboquant.server.http_guard import decode_json_body

    assert decode_json_body(body) == json.loads(body)


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"p": ' + b"[" * 64 + b"]" * 64 + b"}", "more than 64 levels deep (at 'p.0.0.0.0.0.0.0...')"),
        (b'["a", {"b": ["\\udfff"]}]', "the string at '1.b.0' contains a lone surrogate \\udfff"),
        (b'"\\ud800"', "the string at '(the body)' contains a lone surrogate \\ud800"),
    ],
)
def test_decode_json_body_rejects(body, message):
    from turboquant.server.http_guard import BodyError, decode_json_body

    with pytest.raises(BodyError) as caught:
        decode_json_body(body)
    assert caught.value.status == 400
    assert message in caught.value.message
