"""The OpenAI request schema, as pydantic types used only to validate what arrives on the wire,
and to describe the routes in `/openapi.json` (the routes read the raw body themselves).

Unknown fields are allowed and kept (the original JSON is forwarded, not a re-dump of these
models), so every OpenAI and SGLang field reaches the workers untouched. Types are strict: a
string where a number belongs is an error, as OpenAI's API treats it. Messages are TypedDicts,
not models: validating a 200-message agent turn costs half as much.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

_Model = ConfigDict(extra="allow", strict=True)

NonNegFloat = Annotated[float, Field(ge=0)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

# OpenAI's own bounds on `metadata`: 16 pairs, keys up to 64 and values up to 512 characters.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class StreamOptions(BaseModel):
    model_config = _Model
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


@with_config(_Model)
class ContentPart(TypedDict):
    """`{"type": "text", "text": …}`, `{"type": "image_url", "image_url": {…}}`, …"""

    type: str


@with_config(_Model)
class ChatMessage(TypedDict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: NotRequired[str | list[ContentPart] | None]
    name: NotRequired[str | None]
    tool_calls: NotRequired[list[dict[str, Any]] | None]
    tool_call_id: NotRequired[str | None]


class _GenerationRequest(BaseModel):
    model_config = _Model
    model: Annotated[str, Field(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    logprobs: bool | int | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    metadata: Metadata | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None


class CompletionRequest(_GenerationRequest):
    prompt: Annotated[str, Field(min_length=1)] | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None


# What the routes answer, for `/openapi.json` only (responses are relayed, never re-validated).


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx the gateway itself answers (`gateway.errors.APIError.body`)."""

    error: ErrorDetail


class Completion(BaseModel):
    """A non-streamed chat completion or completion, as the decode worker answered it."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


_ERRORS = {
    400: "Invalid request: bad JSON, a wrong type or value, or a limit passed (names `param`)",
    401: "Missing or wrong API key (when keys are configured)",
    404: "The model is not served here",
    413: "Request body over the size limit",
    415: "Content-Type is not application/json",
    429: "Shed by the scheduler, or the key is over its rate limit (`Retry-After`)",
    431: "Request headers over the size or count limit",
    502: "A worker failed",
    503: "No healthy worker, or held too long (`Retry-After`)",
    504: "A worker timed out",
}


SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event: `data` is a JSON chunk, or `[DONE]` last",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def generation_responses() -> dict[int | str, dict[str, Any]]:
    """`responses=` of the generation routes: the completion (JSON or SSE) and the errors."""
    ok: dict[str, Any] = {
        "model": Completion,
        "description": "The completion; with `stream`, server-sent events ending `data: [DONE]`",
        # Before OpenAPI 3.2 (`itemSchema`) an event stream's `schema` describes one event.
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
    errors = {code: {"model": ErrorResponse, "description": d} for code, d in _ERRORS.items()}
    return {200: ok, **errors}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:  # none of these models is recursive, so this ends
            target = defs[node["$ref"].rsplit("/", 1)[1]]
            return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` describing a raw-`Request` route's JSON body with `model`'s schema,
    self-contained (its `$defs` inlined, as `#/$defs/…` would point into the OpenAPI document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(schema, defs)}},
        }
    }
