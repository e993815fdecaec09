"""Pydantic models of the OpenAI-compatible requests and responses.

Request models accept unknown fields and ignore them (``extra="allow"``), so clients that
send newer OpenAI parameters keep working. Parameters that the server cannot honour and
that would change the result are declared here and rejected in ``app.py`` with a 400.
The same models make the OpenAPI schema at ``/openapi.json``, so limits that ``app.py``
checks itself (with messages that say what to do) are stated in the field descriptions.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# Largest value of the integer parameters that reach the C sampler and generator (int32).
MAX_INT32 = 2**31 - 1

# ---------------------------------------------------------------------------- requests


# Request models are strict: JSON types must match (0 is not false, "5" is not 5), as the
# published schema states.
_REQUEST_CONFIG = ConfigDict(extra="allow", strict=True)


class StreamOptions(BaseModel):
    model_config = _REQUEST_CONFIG

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    # allow_inf_nan=False: JSON has no infinity or NaN, but 1e400 decodes to infinity.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: Optional[str] = Field(default=None, description="Ignored: the server has one model.")
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_INT32, description=(
        "Maximum completion tokens. Without it, or when it is larger than the room left in the "
        "context, generation ends at the end of the context with finish_reason 'length'."))
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**64 - 1,
                                description="Taken modulo 2**64 as the seed of the sampler.")
    stop: Optional[Union[str, list[str]]] = Field(default=None, description=(
        "A stop string or a list of at most 16 stop strings, each at least one character long."),
        json_schema_extra={"anyOf": [{"type": "string", "minLength": 1},
                                     {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 16},
                                     {"type": "null"}]})
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, description="Number of choices; only 1 is supported, other values get a 400.",
                   json_schema_extra={"minimum": 1, "maximum": 1})
    # Extensions that llama.cpp's server also accepts.
    top_k: int = Field(default=0, ge=0, le=MAX_INT32, description="0 turns top-k off.")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="1 turns the penalty off.")
    # OpenAI parameters that are rejected unless left at their default (see app.py).
    # Their published schema admits only the values that the server accepts; app.py rejects the
    # others with a message that states what to change.
    logprobs: Optional[Union[bool, int]] = Field(default=None, description="Not supported: leave unset, false or 0.",
                                                 json_schema_extra={"anyOf": [{"enum": [False, 0]}, {"type": "null"}]})
    logit_bias: Optional[dict[str, float]] = Field(default=None, description="Not supported: leave unset or empty.",
                                                   json_schema_extra={"maxProperties": 0})


class ContentPart(BaseModel):
    """One part of a message's content; only parts of type 'text' are supported."""

    # text is optional here so that an image part gets the chat template's message, which
    # names the part type, but the published schema requires it.
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"required": ["type", "text"]})

    type: str = Field(description="'text'; other types (images, audio) get a 400.",
                      json_schema_extra={"enum": ["text"]})
    text: Optional[str] = Field(default=None, json_schema_extra={"type": "string"})


class ChatMessage(BaseModel):
    model_config = _REQUEST_CONFIG

    role: Literal["system", "developer", "user", "assistant"] = Field(description=(
        "'developer' is treated as 'system'. Only the first message may be a system message, and "
        "user and assistant messages must alternate, starting with user."))
    content: Union[str, list[ContentPart]]
    reasoning_content: Optional[str] = Field(default=None, description=(
        "Reasoning of an earlier assistant reply. On a Gemma 4 model it goes back into the prompt as a "
        "thought channel when the message comes after the last user message, as Google's chat template "
        "does; otherwise, and on Gemma 3, it is left out."))


class ChatTemplateKwargs(BaseModel):
    """Options of the chat template, in the form that vLLM and SGLang accept. Only enable_thinking exists."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enable_thinking: Optional[bool] = Field(default=None, description=(
        "true writes <|think|> into the system turn of a Gemma 4 prompt, so the model reasons in a "
        "thought channel first (400 on a Gemma 3 model); false or unset leaves it out."))


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_INT32,
                                                 description="Wins over max_tokens.")
    top_logprobs: Optional[int] = Field(default=None, description="Not supported: leave unset.",
                                        json_schema_extra={"type": "null"})
    tools: Optional[list[Any]] = Field(default=None, description="Not supported: leave unset or empty.",
                                       json_schema_extra={"maxItems": 0})
    functions: Optional[list[Any]] = Field(default=None, description="Not supported: leave unset or empty.",
                                           json_schema_extra={"maxItems": 0})
    response_format: Optional[dict[str, Any]] = Field(default=None, description="Only {'type': 'text'} is supported.",
                                                      json_schema_extra={"properties": {"type": {"enum": ["text"]}}})
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = Field(default=None, description=(
        "'none' turns thinking off and every other level turns it on (Gemma 4 has no effort levels); unset "
        "leaves the choice to chat_template_kwargs.enable_thinking, whose default is off. A level other "
        "than 'none' gets a 400 on a Gemma 3 model, and so does a value that contradicts enable_thinking."))
    chat_template_kwargs: Optional[ChatTemplateKwargs] = None


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(description=(
        "Text, a list of token ids, or a list that contains exactly one of those."),
        json_schema_extra={"anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
            {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
             "minItems": 1, "maxItems": 1},
        ]})
    echo: bool = Field(default=False, description="Not supported: leave false.", json_schema_extra={"enum": [False]})
    best_of: Optional[int] = Field(default=None, description="Not supported: leave unset or 1.",
                                   json_schema_extra={"anyOf": [{"enum": [1]}, {"type": "null"}]})
    suffix: Optional[str] = Field(default=None, description="Not supported: leave unset or empty.",
                                  json_schema_extra={"anyOf": [{"type": "string", "maxLength": 0}, {"type": "null"}]})


# --------------------------------------------------------------------------- responses


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description=(
        "Completion tokens in thought channels, from <|channel> to <channel|> with both markers; 0 on "
        "Gemma 3 models."))


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: Optional[CompletionTokensDetails] = Field(default=None, description=(
        "Set in chat completions; null in text completions."))


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description="The answer, without the thought channels of a Gemma 4 reply.")
    reasoning_content: Optional[str] = Field(default=None, description=(
        "The text of the thought channels of a Gemma 4 reply, without markers and channel name; null when "
        "the reply has none and on Gemma 3 models."))


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = Field(default=None, description=(
        "A piece of the thought channel of a Gemma 4 reply; a chunk carries either this or content."))


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class Completion(BaseModel):
    """A text completion, and also the shape of each streamed completion chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "turboquant"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    running: int
    queued: int
