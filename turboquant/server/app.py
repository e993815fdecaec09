"""FastAPI application of the OpenAI-compatible server.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /health`` and the OpenAPI schema ``GET /openapi.json``. Every
error is an OpenAI error body, ``{"error": {"message", "type", "param", "code"}}``. Request
bodies pass through ``http_guard.RequestGuard`` (size, time and JSON checks) before a route
sees them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, _core
from ..chat import ReplyDelta
from . import schemas
from .engine import Engine, GenerationJob, QueueFullError, RequestCancelled, elapsed
from .http_guard import HTTPLimits, RequestGuard

log = logging.getLogger("turboquant.server")

# The OpenAI API reference allows up to 4 stop sequences. A few more cost little and help other tools.
MAX_STOP_STRINGS = 16

# How often a non-streamed request checks whether its client is still connected, in seconds.
DISCONNECT_POLL_SECONDS = 0.25

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Routes whose POST body must be a JSON document.
JSON_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


class APIError(Exception):
    """An error sent to the client as an OpenAI error body with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def response(self, headers: Optional[dict] = None) -> JSONResponse:
        detail = schemas.ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        if self.status == 401:
            headers = dict(headers or {}, **{"WWW-Authenticate": "Bearer"})
        return JSONResponse(schemas.ErrorResponse(error=detail).model_dump(), status_code=self.status,
                            headers=headers)


def _is_union_tag(part) -> bool:
    # pydantic names the member of a Union that failed ("str", "list[int]"); it is not a parameter.
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _validation_error(exc: RequestValidationError) -> APIError:
    """Turn FastAPI's first validation error into a 400 that names the parameter."""
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_union_tag(part)]
    param = ".".join(location) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('msg', '')}; send a JSON object")
    if param is None:
        return APIError(400, f"invalid request body: {first.get('msg', 'invalid value')}; send a JSON object",
                        code="invalid_value")
    if kind == "missing":
        return APIError(400, f"missing required parameter '{param}'", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        # Only chat_template_kwargs forbids unknown keys, so a misspelt option gets a 400 instead of no effect.
        return APIError(400, f"unknown parameter '{param}'; chat_template_kwargs accepts only 'enable_thinking'",
                        param=param, code="unknown_parameter")
    return APIError(400, f"invalid value for '{param}': {first.get('msg', 'invalid value')}", param=param,
                    code="invalid_value")


# ------------------------------------------------------------------ request checks


def _reject_unsupported(request: schemas.SamplingRequest) -> None:
    """Raise a 400 for parameters that would change the result but are not implemented."""
    if request.n != 1:
        raise APIError(400, f"n={request.n} is not supported; this server returns one choice (n=1)", param="n")
    if request.logprobs not in (None, False, 0):
        raise APIError(400, "logprobs are not supported; leave 'logprobs' unset", param="logprobs")
    if request.logit_bias:
        raise APIError(400, "logit_bias is not supported; leave it unset or empty", param="logit_bias")
    if isinstance(request, schemas.ChatCompletionRequest):
        if request.top_logprobs is not None:
            raise APIError(400, "top_logprobs is not supported; leave it unset", param="top_logprobs")
        if request.tools or request.functions:
            param = "tools" if request.tools else "functions"
            raise APIError(400, f"tool and function calling are not supported; leave '{param}' unset", param=param)
        if request.response_format and request.response_format.get("type", "text") != "text":
            raise APIError(400, "only response_format {'type': 'text'} is supported", param="response_format")
    if isinstance(request, schemas.CompletionRequest):
        if request.echo:
            raise APIError(400, "echo is not supported; leave it false", param="echo")
        if request.best_of not in (None, 1):
            raise APIError(400, f"best_of={request.best_of} is not supported; use 1", param="best_of")
        if request.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported; leave it unset", param="suffix")


def _stop_strings(stop) -> list:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"'stop' has {len(stops)} strings; pass at most {MAX_STOP_STRINGS}", param="stop")
    for text in stops:
        if not text:
            raise APIError(400, "'stop' contains an empty string; every stop string needs at least one character",
                           param="stop")
    return stops


def _sampling(request: schemas.SamplingRequest, max_tokens: int) -> dict:
    """Build the keyword arguments of Model.generate, validated by constructing a Sampler."""
    seed = None if request.seed is None else request.seed % (1 << 64)
    sampling = dict(
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        min_p=request.min_p,
        repetition_penalty=request.repetition_penalty,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        seed=seed,
    )
    try:
        _core.Sampler(**sampling)
    except (ValueError, TypeError, OverflowError) as exc:
        raise APIError(400, f"invalid sampling parameters: {exc}") from None
    sampling.update(max_tokens=max_tokens, stop=_stop_strings(request.stop) or None)
    return sampling


def _enable_thinking(model, body: schemas.ChatCompletionRequest) -> bool:
    """Return whether the request switches thinking on, from reasoning_effort and chat_template_kwargs.

    Raises APIError (400) when the two contradict each other, or when they switch thinking on for a
    model without Gemma 4's chat format.
    """
    from_effort = None if body.reasoning_effort is None else body.reasoning_effort != "none"
    from_kwargs = body.chat_template_kwargs.enable_thinking if body.chat_template_kwargs is not None else None
    if from_effort is not None and from_kwargs is not None and from_effort != from_kwargs:
        raise APIError(400, f"reasoning_effort {body.reasoning_effort!r} contradicts chat_template_kwargs."
                       f"enable_thinking={str(from_kwargs).lower()}; send one of them, or values that agree",
                       param="reasoning_effort")
    enable = from_kwargs if from_kwargs is not None else bool(from_effort)
    if enable and model.chat_format != "gemma4":
        param = "chat_template_kwargs.enable_thinking" if from_kwargs else "reasoning_effort"
        raise APIError(400, f"'{param}' switches thinking on, but this model has no thinking mode (only Gemma 4 "
                       "models have one); leave reasoning_effort unset or 'none' and enable_thinking unset or false",
                       param=param)
    return enable


def _chat_prompt(model, messages: list, enable_thinking: bool) -> list:
    """Render messages with the model's chat template (Gemma 3 or Gemma 4) and return the prompt's token ids."""
    converted = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise APIError(400, f"messages[{index}].role {message.role!r} is not supported; use 'system', "
                           "'user' or 'assistant'", param=f"messages.{index}.role")
        content = message.content
        if not isinstance(content, str):
            for part_index, part in enumerate(content):
                # The Gemma 4 template would write a placeholder for an image or audio part, but the
                # server has no embeddings to put there.
                if part.type != "text":
                    raise APIError(400, f"messages[{index}].content[{part_index}] has type {part.type!r}; only "
                                   "'text' parts are supported", param="messages")
            content = [part.model_dump() for part in content]
        converted.append({"role": role, "content": content})
        if message.reasoning_content is not None:
            converted[-1]["reasoning_content"] = message.reasoning_content
    # NOTE: control-token names typed in message text (such as "<end_of_turn>") become control
    # tokens too, as in Model.chat, because the whole rendered prompt is encoded with special=True.
    try:
        return model.encode_chat(converted, enable_thinking=enable_thinking)
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from None


def _completion_prompt(model, prompt) -> list:
    """Return the token ids of a completion prompt: a string, or a list of token ids."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(400, f"'prompt' contains {len(prompt)} prompts; send one prompt per request",
                           param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return model.tokenize(prompt, add_bos=True, special=True)
    if not prompt:
        raise APIError(400, "'prompt' is an empty list; pass text or token ids", param="prompt")
    for index, token in enumerate(prompt):
        if not 0 <= token < model.n_vocab:
            raise APIError(400, f"prompt[{index}] = {token} is outside the vocabulary [0, {model.n_vocab})",
                           param="prompt")
    return list(prompt)


def _max_tokens(request, prompt_tokens: int, n_ctx: int, param: str) -> int:
    """Check the prompt against the context and return the completion token limit."""
    if prompt_tokens >= n_ctx:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens but the context is {n_ctx} tokens, which leaves "
                       "no room for a reply; shorten the prompt or restart the server with a larger --ctx",
                       param=param, code="context_length_exceeded")
    limit = request.max_tokens
    # Only chat requests declare max_completion_tokens. With extra="allow", a completion request
    # that sends it gets an undeclared attribute of any type, so getattr() must not be used.
    if isinstance(request, schemas.ChatCompletionRequest) and request.max_completion_tokens is not None:
        limit = request.max_completion_tokens
    room = n_ctx - prompt_tokens
    # A larger limit is accepted: generation then ends at the full context with finish_reason "length".
    return room if limit is None else min(limit, room)


def prepare_chat(model, body: schemas.ChatCompletionRequest) -> tuple:
    """Check a chat request and return its (prompt token ids, Model.generate keyword arguments).

    Raises APIError (status 400) for a request that the server cannot run.
    """
    _reject_unsupported(body)
    prompt_ids = _chat_prompt(model, body.messages, _enable_thinking(model, body))
    max_tokens = _max_tokens(body, len(prompt_ids), model.n_ctx, "messages")
    sampling = _sampling(body, max_tokens)
    if model.chat_format == "gemma4":
        sampling["thought_channel"] = True
    return prompt_ids, sampling


def prepare_completion(model, body: schemas.CompletionRequest) -> tuple:
    """Check a text completion request and return its (prompt token ids, Model.generate keyword arguments).

    Raises APIError (status 400) for a request that the server cannot run.
    """
    _reject_unsupported(body)
    prompt_ids = _completion_prompt(model, body.prompt)
    max_tokens = _max_tokens(body, len(prompt_ids), model.n_ctx, "prompt")
    return prompt_ids, _sampling(body, max_tokens)


# ------------------------------------------------------------------------ the app


_ERROR_STATUSES = {
    400: "Invalid request: malformed JSON, a missing, invalid or unsupported parameter, or a prompt that "
         "fills the context",
    401: "Missing or invalid API key (only when the server runs with --api-key)",
    408: "The request body did not arrive within the body timeout",
    413: "The request body is larger than --max-body-bytes",
    415: "The body is not JSON (Content-Type other than application/json)",
    500: "Unexpected failure in the server",
    503: "Every worker is busy and the queue is full, or the server is shutting down",
}


def _error_responses(*statuses: int) -> dict:
    return {status: {"model": schemas.ErrorResponse, "description": _ERROR_STATUSES[status]} for status in statuses}


def _completion_responses(model) -> dict:
    """Return the OpenAPI responses of a completion route: JSON, or Server-Sent Events with stream."""
    ok = {"model": model, "description": "The completion, or with 'stream': true a text/event-stream of chunks "
          "ending with 'data: [DONE]'",
          "content": {"text/event-stream": {}}}
    return {200: ok, **_error_responses(400, 401, 408, 413, 415, 500, 503)}


def _openapi_schema(app: FastAPI, n_vocab: int) -> dict:
    """Return the OpenAPI schema of app, with the token id limit of the served model.

    FastAPI's 422 responses are left out because this server sends 400 for invalid requests.
    """
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        prompt = components.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
        for form in prompt.get("anyOf", ()):
            items = form.get("items", {})
            items = items.get("items", items)
            if items.get("type") == "integer":
                items["maximum"] = n_vocab - 1
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(engine: Engine, model_name: str, api_key: Optional[str] = None,
               limits: Optional[HTTPLimits] = None) -> FastAPI:
    """Build the FastAPI app that serves engine's model under model_name.

    limits: body size and timeouts of the HTTP layer (default: HTTPLimits()).
    """
    model = engine.model
    created = int(time.time())
    limits = limits or HTTPLimits()

    async def lifespan(app):
        log.info("server ready: model %s (%s), context %d tokens, %d workers, queue %d, %d threads, "
                 "KV cache %s/%s", model_name, model.path, model.n_ctx, engine.max_concurrent, engine.max_queue,
                 engine.threads, model.cache_type_k, model.cache_type_v)
        yield
        log.info("server stopping: cancelling %d running and %d queued requests", engine.running, engine.queued)
        engine.shutdown()
        log.info("server stopped")

    app = FastAPI(title="turboquant OpenAI-compatible API", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: _openapi_schema(app, model.n_vocab)
    app.add_middleware(RequestGuard, limits=limits, json_paths=JSON_ROUTES)

    # --------------------------------------------------------------- errors

    @app.exception_handler(APIError)
    async def api_error_handler(request: Request, exc: APIError, headers: Optional[dict] = None):
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return exc.response(headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(request: Request, exc: RequestValidationError):
        return await api_error_handler(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            error = APIError(404, f"unknown route {request.method} {request.url.path}; the server provides "
                             "GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health and "
                             "GET /openapi.json", code="not_found")
        elif exc.status_code == 405:
            error = APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                             code="method_not_allowed")
        else:
            error = APIError(exc.status_code, str(exc.detail))
        # Starlette's 405 carries the Allow header that HTTP requires with that status.
        return await api_error_handler(request, error, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error_handler(request: Request, exc: Exception):
        # Starlette re-raises the exception after this response, and uvicorn logs its traceback.
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return APIError(500, f"internal server error: {type(exc).__name__}: {exc}", type="server_error").response()

    def check_api_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            reason = "missing" if not header else "invalid"
            raise APIError(401, f"{reason} API key; send the header 'Authorization: Bearer KEY' with the key "
                           "given to --api-key", code="invalid_api_key")

    # --------------------------------------------------------------- routes

    @app.get("/health", response_model=schemas.Health)
    async def health():
        return {"status": "ok", "model": model_name, "running": engine.running, "queued": engine.queued}

    @app.get("/v1/models", response_model=schemas.ModelList, responses=_error_responses(401))
    async def list_models(request: Request):
        check_api_key(request)
        return schemas.ModelList(data=[schemas.ModelCard(id=model_name, created=created)]).model_dump()

    @app.get("/v1/models/{model_id:path}", response_model=schemas.ModelCard,
             responses={404: {"model": schemas.ErrorResponse, "description": "No model with this id"},
                        **_error_responses(401)})
    async def retrieve_model(model_id: str, request: Request):
        check_api_key(request)
        if model_id != model_name:
            raise APIError(404, f"model {model_id!r} not found; this server serves {model_name!r}", param="model",
                           code="model_not_found")
        return schemas.ModelCard(id=model_name, created=created).model_dump()

    @app.post("/v1/chat/completions", response_model=None,
              responses=_completion_responses(schemas.ChatCompletion))
    async def chat_completions(body: schemas.ChatCompletionRequest, request: Request):
        check_api_key(request)
        # Tokenizing a long prompt takes seconds (about 1.4 s per MB on the 2-core test machine),
        # so it runs in a thread, where the tokenizer releases the GIL, and the event loop keeps
        # serving other clients.
        prompt_ids, sampling = await asyncio.to_thread(prepare_chat, model, body)
        return await _generate(engine, model_name, request, body, prompt_ids, sampling, chat=True)

    @app.post("/v1/completions", response_model=None, responses=_completion_responses(schemas.Completion))
    async def completions(body: schemas.CompletionRequest, request: Request):
        check_api_key(request)
        prompt_ids, sampling = await asyncio.to_thread(prepare_completion, model, body)
        return await _generate(engine, model_name, request, body, prompt_ids, sampling, chat=False)

    return app


# ----------------------------------------------------------------------- generation


async def _generate(engine: Engine, model_name: str, request: Request, body, prompt_ids: list, sampling: dict,
                    chat: bool):
    """Admit one request to the engine and return its response, streamed or whole."""
    request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    job = GenerationJob(request_id=request_id, prompt_ids=prompt_ids, sampling=sampling,
                        loop=asyncio.get_running_loop())
    try:
        engine.submit(job)
    except QueueFullError as exc:
        raise APIError(503, str(exc), type="server_error", code="queue_full") from None
    log.info("request %s %s: %d prompt tokens, max_tokens %d, stream %s, %d running, %d queued", request_id,
             request.url.path, len(prompt_ids), sampling["max_tokens"], body.stream, engine.running,
             engine.queued)
    shape = _ResponseShape(request_id, model_name, chat, len(prompt_ids))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(job, shape, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _complete(request, job, shape)

async def _complete(request: Request, job: GenerationJob, shape: "_ResponseShape"):
    """Collect every piece of job into one response, cancelling the job if the client leaves."""
    content = []
    reasoning = []
    while True:
        try:
            kind, value = await asyncio.wait_for(job.events.get(), timeout=DISCONNECT_POLL_SECONDS)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                log.info("request %s: client disconnected; cancelling", job.request_id)
                return JSONResponse({}, status_code=499)
            continue
        if kind == "piece":
            if isinstance(value, ReplyDelta):
                reasoning.append(value.reasoning)
                content.append(value.content)
            else:
                content.append(value)
        elif kind == "done":
            _log_finished(job, value)
            return JSONResponse(shape.response("".join(content), value, "".join(reasoning)))
        else:
            raise _worker_error(value)

async def _stream(job: GenerationJob, shape: "_ResponseShape", include_usage: bool):
    """Yield the Server-Sent Events of job: text chunks (reasoning or answer), the closing chunk, usage,
    then [DONE]."""
    finished = False
    first = True
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "piece":
                yield _sse(shape.chunk(value, None, first, include_usage))
                first = False
                continue
            if kind == "done":
                yield _sse(shape.chunk(None, value.finish_reason or "stop", first, include_usage))
                if include_usage:
                    yield _sse(shape.usage_chunk(value))
                _log_finished(job, value)
            else:
                error = _worker_error(value)
                log.warning("request %s: stream ended by an error: %s", job.request_id, error.message)
                detail = schemas.ErrorDetail(message=error.message, type=error.type, code=error.code)
                yield _sse(schemas.ErrorResponse(error=detail).model_dump())
            finished = True
            yield "data: [DONE]\n\n"
            return
    finally:
        if not finished:
            # Starlette cancels this generator when the client disconnects.
            job.cancelled.set()
            log.info("request %s: client disconnected during the stream; cancelling", job.request_id)

def _log_finished(job: GenerationJob, stats) -> None:
    now = time.perf_counter()
    queued = elapsed(job.submitted_at, job.started_at)
    first = elapsed(job.submitted_at, job.first_piece_at)
    log.info("request %s finished: %d prompt tokens (%d cached), %d completion tokens (%d reasoning), "
             "finish_reason %s, queued %.3f s, first text after %s, total %.3f s, decode %.1f tokens/s",
             job.request_id, stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens,
             stats.reasoning_tokens, stats.finish_reason,
             queued or 0.0, "-" if first is None else f"{first:.3f} s", now - job.submitted_at,
             stats.decode_tokens_per_s)


def _worker_error(value) -> APIError:
    if isinstance(value, RequestCancelled):
        return APIError(503, "the request was cancelled because the server is shutting down", type="server_error",
                        code="server_shutdown")
    return APIError(500, f"generation failed: {type(value).__name__}: {value}", type="server_error")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _ResponseShape:
    """Builder of the response and chunk bodies of one request, with its id and creation time."""

    def __init__(self, request_id: str, model_name: str, chat: bool, prompt_tokens: int):
        self.request_id = request_id
        self.model_name = model_name
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())

    def _usage(self, stats) -> schemas.Usage:
        details = schemas.CompletionTokensDetails(reasoning_tokens=stats.reasoning_tokens) if self.chat else None
        return schemas.Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                             total_tokens=stats.prompt_tokens + stats.completion_tokens,
                             completion_tokens_details=details)

    def response(self, text: str, stats, reasoning: str = "") -> dict:
        """Return the whole response body; reasoning is the thought-channel text (null when empty)."""
        finish = stats.finish_reason or "stop"
        if self.chat:
            message = schemas.AssistantMessage(content=text, reasoning_content=reasoning or None)
            choice = schemas.ChatChoice(message=message, finish_reason=finish)
            body = schemas.ChatCompletion(id=self.request_id, created=self.created, model=self.model_name,
                                          choices=[choice], usage=self._usage(stats))
        else:
            choice = schemas.CompletionChoice(text=text, finish_reason=finish)
            body = schemas.Completion(id=self.request_id, created=self.created, model=self.model_name,
                                      choices=[choice], usage=self._usage(stats))
        return body.model_dump()

    def chunk(self, piece, finish_reason: Optional[str], first: bool, include_usage: bool) -> dict:
        """Return one stream chunk: a piece (text, or a ReplyDelta of a Gemma 4 chat), or (piece None)
        the closing chunk with finish_reason.

        The role goes with the first chunk, so a stream never starts with a chunk without text
        unless the reply is empty. A ReplyDelta becomes delta.reasoning_content or delta.content.
        """
        text, reasoning = piece, None
        if isinstance(piece, ReplyDelta):
            text, reasoning = piece.content or None, piece.reasoning or None
        if self.chat:
            delta = schemas.ChatDelta(role="assistant" if first else None, content=text, reasoning_content=reasoning)
            choice = schemas.ChatChunkChoice(delta=delta, finish_reason=finish_reason)
            body = schemas.ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model_name,
                                               choices=[choice]).model_dump()
            body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        else:
            choice = schemas.CompletionChoice(text=text or "", finish_reason=finish_reason)
            body = schemas.Completion(id=self.request_id, created=self.created, model=self.model_name,
                                      choices=[choice]).model_dump()
        if not include_usage:
            del body["usage"]
        return body

    def usage_chunk(self, stats) -> dict:
        """Return the chunk of stream_options.include_usage: no choices, only usage."""
        if self.chat:
            body = schemas.ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model_name,
                                               choices=[], usage=self._usage(stats))
        else:
            body = schemas.Completion(id=self.request_id, created=self.created, model=self.model_name, choices=[],
                                      usage=self._usage(stats))
        return body.model_dump()
