"""Request parsing: raw HTTP body → a validated `ParsedRequest`, or a clear 4xx.

Checks run cheapest first: content type, declared and actual size, JSON syntax, schema, limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest
from gateway.settings import LimitsConfig

SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    path: str
    """The OpenAI route, forwarded unchanged to both workers."""
    body: dict[str, Any]
    """The client's JSON object, unknown fields included."""
    model: str
    stream: bool
    include_usage: bool
    """The client asked for the usage chunk (`stream_options.include_usage`)."""
    batch_size: int
    """Items that SGLang treats as separate requests: `n`, or the length of a prompt list."""


def check_content_type(headers: Mapping[str, str]) -> None:
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {media or 'missing'!r}"
        )


async def read_body(
    headers: Mapping[str, str], chunks: AsyncIterator[bytes], limits: LimitsConfig
) -> bytes:
    """The whole body, refusing early when it is (or declares to be) over the limit."""
    limit = limits.max_body_bytes
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes is over the {limit}-byte limit"
            )
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


# Union members and validators that pydantic names in an error's location; not field names.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "function-after", "constrained-str"})


def _first_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    param = ".".join(loc) or None
    where = f"'{param}'" if param else "the request"
    return InvalidRequest(f"Invalid value for {where}: {err['msg']}", param=param)


def _batch_size(path: str, body: Mapping[str, Any]) -> int:
    if path == "/v1/completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return len(prompt) * int(body.get("n") or 1)
    return int(body.get("n") or 1)


def parse_request(path: str, raw: bytes, limits: LimitsConfig) -> ParsedRequest:
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        req: Any = SCHEMAS[path].model_validate(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name, None)
        if value is not None and value > limits.max_output_tokens:
            raise InvalidRequest(
                f"'{name}' of {value} is over the limit of {limits.max_output_tokens}", param=name
            )
    options = req.stream_options
    return ParsedRequest(
        path=path,
        body=body,
        model=req.model,
        stream=bool(req.stream),
        include_usage=bool(options and options.include_usage),
        batch_size=_batch_size(path, body),
    )
