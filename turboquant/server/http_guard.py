"""Limits of the HTTP layer: body size, JSON decoding, and timeouts for slow or stalled clients.

``RequestGuard`` is an ASGI middleware in front of the FastAPI app. For every request it reads
the whole body before the app sees it, within ``body_timeout`` seconds and ``max_body_bytes``
bytes, and for the JSON routes it checks the content type and decodes the body strictly:
UTF-8 only, standard JSON only (no ``NaN`` or ``Infinity``), at most ``MAX_JSON_DEPTH`` levels
of nesting, and no lone UTF-16 surrogates (``"\\ud800"``), which no UTF-8 text can contain.
Failures become OpenAI error bodies with status 400, 408, 413 or 415, so that no malformed
body reaches the request handlers. While a response is sent, each write that waits longer
than ``send_timeout`` seconds for the client to read ends the response.

``HeaderTimeoutH11Protocol`` is uvicorn's h11 protocol with one addition: a connection must
deliver the complete head of each request (request line and headers) within
``header_timeout`` seconds of opening or of the previous response, else it is closed. uvicorn
0.55 has no such timeout, so a client that sends its headers a byte at a time, or nothing at
all, would hold its connection forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

log = logging.getLogger("turboquant.server")

# Maximum nesting of arrays and objects in a request body. The deepest valid request is a
# chat message with content parts: body > messages > message > content > part > text, so
# 6 levels; extra fields that clients send (metadata, tools) rarely go much deeper.
MAX_JSON_DEPTH = 64

# Bodies larger than this are decoded in a thread, so that the event loop keeps serving
# other clients: the checks of a 4 MB body take about 0.5 s on the 2-core test machine.
DECODE_IN_THREAD_BYTES = 64 * 1024

# A JSON string literal. It is applied only to text that json.loads accepted, where every
# literal is well formed, so the pattern needs no error handling.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# The escape of a UTF-16 surrogate (\uD800 to \uDFFF): the only way JSON text can carry one,
# because a strict UTF-8 decoder rejects encoded surrogates.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_OPENING = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSING = np.frombuffer(b"]}", dtype=np.uint8)


@dataclass(frozen=True)
class HTTPLimits:
    """Limits of the HTTP layer; sizes in bytes, times in seconds."""

    # The default admits a full 131,072-token context (Gemma 4) with room for the rest of the
    # request. As text in \uXXXX escapes it takes about 3 MiB: about 4 characters per token
    # and 6 bytes per character. As token ids of up to 7 bytes each it takes 0.9 MiB.
    max_body_bytes: int = 4 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 60.0

    def __post_init__(self):
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        for name in ("header_timeout", "body_timeout", "send_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value}")


class BodyError(Exception):
    """A request body that the server rejects, with the HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


# ----------------------------------------------------------------------- JSON decoding


def _reject_constant(name: str):
    raise BodyError(400, f"the request body is not valid JSON: {name} is not a JSON value; send numbers as "
                    "finite decimals", code="invalid_json")


def decode_json_body(body: bytes):
    """Decode a request body as strict JSON and return the value; raise BodyError if it is not.

    Checks, in order: the bytes are UTF-8, the text is standard JSON, nesting is at most
    MAX_JSON_DEPTH levels, and no string or key contains a lone surrogate.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = body[exc.start:exc.end].hex(" ")
        raise BodyError(400, f"the request body is not valid UTF-8: invalid byte(s) {bad} at byte offset "
                        f"{exc.start}; encode the JSON body as UTF-8", code="invalid_encoding") from None
    if text.startswith("\ufeff"):
        raise BodyError(400, "the request body starts with a byte order mark (EF BB BF); send UTF-8 JSON "
                        "without it", code="invalid_encoding")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column "
                        f"{exc.colno}); send a JSON object", code="invalid_json") from None
    except RecursionError:
        raise BodyError(400, f"the request body is nested too deeply to decode; nest arrays and objects at most "
                        f"{MAX_JSON_DEPTH} levels deep", code="invalid_json") from None
    # Both checks read the bytes at C speed. Only a body that may fail them is walked in
    # Python, which finds the place to name in the message.
    if _nesting_depth(body) > MAX_JSON_DEPTH or _SURROGATE_ESCAPE.search(body):
        _check_json_value(value)
    return value


def _nesting_depth(body: bytes) -> int:
    """Return the deepest nesting of arrays and objects in a valid JSON body (1 for a flat object)."""
    structure = np.frombuffer(_STRING_LITERAL.sub(b"", body), dtype=np.uint8)
    steps = np.isin(structure, _OPENING).astype(np.int64) - np.isin(structure, _CLOSING)
    return int(steps.cumsum().max(initial=0))


def _json_path(path: tuple) -> str:
    """Return the dotted path of a JSON value, with lone surrogates in keys written as \\udXXX escapes."""
    parts = [str(part).encode("utf-8", "backslashreplace").decode("utf-8") for part in path[:8]]
    if len(path) > 8:
        return ".".join(parts) + "..."
    return ".".join(parts) or "(the body)"


def _check_json_value(root) -> None:
    """Raise BodyError for nesting past MAX_JSON_DEPTH or a string with a lone surrogate."""
    if isinstance(root, str):
        _check_text(root, ())
    if not isinstance(root, (list, dict)):
        return
    # Iterative, so that the check itself cannot overflow the stack. Only containers are
    # pushed; scalars are checked where they are found.
    stack = [(root, (), 0)]
    while stack:
        container, path, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            raise BodyError(400, f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels "
                            f"deep (at '{_json_path(path)}'); flatten the request", code="invalid_json")
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, path + (key,))
            if isinstance(item, str):
                _check_text(item, path + (key,))
            elif isinstance(item, (list, dict)):
                stack.append((item, path + (key,), depth + 1))


def _check_text(text: str, path: tuple) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code_point = ord(text[exc.start])
        raise BodyError(400, f"the string at '{_json_path(path)}' contains a lone surrogate \\u{code_point:04x} at "
                        f"character {exc.start}, which is not valid Unicode text; escape a character outside "
                        "the BMP as a surrogate pair or send it as UTF-8", code="invalid_encoding",
                        param=_json_path(path) if path else None) from None


# ------------------------------------------------------------------------- middleware


def _is_json_content_type(value: Optional[str]) -> bool:
    """Return True for a missing content type, application/json and application/*+json."""
    if value is None:
        return True
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/")
                                                 and media_type.endswith("+json"))


def _error_body(message: str, type: str, code: Optional[str], param: Optional[str] = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


class _ClientDisconnected(Exception):
    """Raised when the client disconnects before its whole body has arrived."""


class _SendTimeout(Exception):
    """Raised when the client has not read the response for send_timeout seconds."""


class RequestGuard:
    """ASGI middleware that reads, limits and checks request bodies before the app runs.

    json_paths: the paths of POST routes whose body must be a JSON document.
    """

    def __init__(self, app, limits: HTTPLimits, json_paths: frozenset):
        self.app = app
        self.limits = limits
        self.json_paths = json_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = f"{scope['method']} {scope['path']}"
        try:
            body = await self._read_body(scope, receive)
            if scope["method"] == "POST" and scope["path"] in self.json_paths:
                await self._check_json(scope, body)
                if _header(scope, b"content-type") is None:
                    # FastAPI parses a body as JSON only when the Content-Type header declares JSON.
                    scope = dict(scope, headers=list(scope["headers"]) + [(b"content-type", b"application/json")])
        except BodyError as exc:
            log.warning("%s -> %d: %s", where, exc.status, exc.message)
            await self._send_error(send, exc)
            return
        except _ClientDisconnected as exc:
            # No response can reach a client that has gone, so the request ends here.
            log.info("%s: the client disconnected after %d bytes of the body", where, exc.args[0])
            return

        replayed = False

        async def replay_receive():
            # The app gets the body that was read once, then the messages that follow it
            # (http.disconnect), which is how Starlette notices a client that went away.
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def timed_send(message):
            try:
                await asyncio.wait_for(send(message), timeout=self.limits.send_timeout)
            except asyncio.TimeoutError:
                raise _SendTimeout() from None

        try:
            await self.app(scope, replay_receive, timed_send)
        except _SendTimeout:
            # Returning without finishing the response makes uvicorn close the connection.
            log.warning("%s: the client read nothing for %g s; closing the connection", where,
                        self.limits.send_timeout)

    async def _read_body(self, scope, receive):
        """Return the whole body, read within the size and time limits."""
        limit = self.limits.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BodyError(413, f"the request body is {int(length)} bytes, more than the limit of {limit} "
                            "bytes; send a shorter request or restart the server with a larger --max-body-bytes",
                            code="request_too_large")
        chunks = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyError(408, f"the request body did not arrive within {self.limits.body_timeout:g} s "
                                f"({size} bytes received); send the whole body at once", code="timeout") from None
            if message["type"] == "http.disconnect":
                raise _ClientDisconnected(size)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"the request body is more than the limit of {limit} bytes; send a shorter "
                                "request or restart the server with a larger --max-body-bytes",
                                code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _check_json(self, scope, body: bytes) -> None:
        content_type = _header(scope, b"content-type")
        if not _is_json_content_type(content_type):
            raise BodyError(415, f"Content-Type {content_type!r} is not supported; send the body as JSON with "
                            "'Content-Type: application/json'", code="unsupported_media_type")
        if len(body) > DECODE_IN_THREAD_BYTES:
            await asyncio.to_thread(decode_json_body, body)
        else:
            decode_json_body(body)

    async def _send_error(self, send, exc: BodyError) -> None:
        body = _error_body(exc.message, "invalid_request_error", exc.code, exc.param)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if exc.status in (408, 413):
            # The rest of the body is not read, so the connection cannot carry another request.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> Optional[str]:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


# ------------------------------------------------------------------ uvicorn protocol


def header_timeout_protocol(header_timeout: float):
    """Return an h11 protocol class for uvicorn.Config(http=...) that enforces header_timeout."""
    # Imported here so that HTTPLimits (used by the command-line parser) works without uvicorn.
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, closing connections whose request head is late."""

        def connection_made(self, transport):
            super().connection_made(transport)
            self._head_timer = None
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            # A new request cycle object appears once h11 has parsed a complete request head.
            self._cycle_when_armed = self.cycle
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout_expired)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout_expired(self) -> None:
            self._head_timer = None
            if self.cycle is not self._cycle_when_armed or self.transport.is_closing():
                return
            log.info("closing connection from %s: no complete request head within %g s",
                     "%s:%d" % self.client if self.client else "unknown client", header_timeout)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._cycle_when_armed:
                self._disarm_head_timer()

        def on_response_complete(self) -> None:
            self._arm_head_timer()
            super().on_response_complete()
            # A pipelined request that was already buffered starts inside the call above.
            if self._head_timer is not None and self.cycle is not self._cycle_when_armed:
                self._disarm_head_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol
