"""The server's OpenAPI schema (``/openapi.json``) and a bounded schemathesis run against it.

schemathesis generates requests from the published schema, valid and invalid, and sends them
to a real server with the default model. Each response must not be a 5xx, must have a status,
content type, headers and body that the schema declares, and must reject requests that
violate the schema. Every error must be an OpenAI error body. The run is derandomized and
limited to MAX_EXAMPLES examples per operation, so it stays under two minutes. A longer run,
for example before a release (about 20 minutes on 2 cores):

    turboquant-api --port 8000 --ctx 24 --max-concurrent 2 &
    schemathesis run http://127.0.0.1:8000/openapi.json --checks all \\
        --exclude-checks positive_data_acceptance -n 300 --request-timeout 60 --continue-on-failure

positive_data_acceptance is left out because some rules cannot be written in JSON Schema:
user and assistant messages must alternate, and the prompt must be shorter than the context.
Requests that break them are schema-valid and still get a 400.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from test_server import ServerProcess  # noqa: E402

# Examples per operation, with schemathesis's coverage phase adding its own boundary cases.
# 12 examples took 63 to 70 s on the 2-core test machine at a load average of about 4 and
# 179 s at 8. 8 examples took 93 s at a load average of 8.
MAX_EXAMPLES = 8
# A 24-token context bounds every generated request to at most about 20 completion tokens,
# so that the run spends its time on many requests, not on long generations.
SCHEMA_CTX = "24"
# Vocabulary size of Gemma 3: the length of tokenizer.ggml.tokens in the default GGUF file, as
# the gguf package reads it (which takes about 20 s, so the value is written here).
GEMMA3_VOCAB_SIZE = 262144

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("schema") / "server.log", "--ctx", SCHEMA_CTX,
                            "--max-concurrent", "2", "--max-queue", "8")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.base_url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def test_openapi_routes_and_errors(server):
    document = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
    assert set(document["paths"]) == {"/health", "/v1/models", "/v1/models/{model_id}", "/v1/chat/completions",
                                      "/v1/completions"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], f"{method} {path}"
    chat = document["paths"]["/v1/chat/completions"]["post"]
    for status in ("400", "401", "408", "413", "415", "500", "503"):
        reference = chat["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert reference == "#/components/schemas/ErrorResponse"
    assert "text/event-stream" in chat["responses"]["200"]["content"]


def test_openapi_request_limits(server):
    document = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
    components = document["components"]["schemas"]
    sampling = components["ChatCompletionRequest"]["properties"]
    assert sampling["temperature"]["minimum"] == 0
    assert sampling["temperature"]["maximum"] == 2
    assert sampling["top_k"]["maximum"] == 2**31 - 1
    assert sampling["n"]["maximum"] == 1
    assert components["ChatMessage"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant"]
    prompt_forms = components["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    token_ids = [form["items"] for form in prompt_forms if form.get("items", {}).get("type") == "integer"]
    assert token_ids == [{"type": "integer", "minimum": 0, "maximum": GEMMA3_VOCAB_SIZE - 1}]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_schemathesis_conformance(case):
    response = case.call_and_validate(checks=CHECKS, timeout=60)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert isinstance(error["message"], str)
        assert error["message"]
