"""Request parsing: raw HTTP body → a validated `ParsedRequest`, or a clear 4xx.

Checks run cheapest first: content type, declared and actual size, strict JSON
(`gateway.json_body`), array lengths (so a body of 100,000 tiny messages is refused before
anything visits each one), depth and number range, the schema, then characters and values
against `LimitsConfig`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.json_body import check_structure, decode_object
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
        if not (declared.isascii() and declared.isdigit()):  # str.isdigit() takes "²" too
            raise InvalidRequest("Content-Length is not a number")
        digits = declared.lstrip("0")
        # Past 18 digits int() could refuse the string itself (over 4,300 digits).
        if len(digits) > 18 or int(digits or "0") > limit:
            raise PayloadTooLarge(
                f"request body of {declared:.30} bytes is over the {limit}-byte limit"
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


def _too_many(param: str, items: int, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid '{param}': array too long; at most {limit} items, not {items}",
        param=param,
        code="array_above_max_length",
    )


def _too_long(param: str, chars: int, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid '{param}': string too long; at most {limit} characters, not {chars}",
        param=param,
        code="string_above_max_length",
    )


def _check_counts(body: Mapping[str, Any], limits: LimitsConfig) -> None:
    """Array lengths, read off the raw dict before pydantic builds a model per item."""
    for param, limit in (
        ("messages", limits.max_messages),
        ("tools", limits.max_tools),
        ("functions", limits.max_tools),
        ("stop", limits.max_stop),
    ):
        items = body.get(param)
        if isinstance(items, list) and len(items) > limit:
            raise _too_many(param, len(items), limit)


def _parts_chars(content: object) -> int:
    """Characters of a content-part list: the `text` of its parts."""
    if isinstance(content, list):
        return sum(len(t) for p in content if isinstance(t := p.get("text"), str))
    return 0


def _check_text(path: str, req: Any, limits: LimitsConfig) -> None:
    """Per-item and total characters of the chat messages or the completion prompts."""
    if path == "/v1/chat/completions":
        contents = [m.get("content") for m in req.messages]
        sizes = [len(c) if type(c) is str else _parts_chars(c) for c in contents]
        param = "messages.{}.content"
    elif isinstance(req.prompt, str):
        param, sizes = "prompt", [len(req.prompt)]
    else:
        param, sizes = "prompt.{}", [len(p) if isinstance(p, str) else 0 for p in req.prompt]
    longest = max(sizes, default=0)
    if longest > limits.max_message_chars:
        where = param.format(sizes.index(longest))
        raise _too_long(where, longest, limits.max_message_chars)
    total = sum(sizes)
    if total > limits.max_total_chars:
        name = param.split(".", 1)[0]
        raise InvalidRequest(
            f"'{name}' hold {total} characters in all, over the limit of {limits.max_total_chars}",
            param=name,
            code="string_above_max_length",
        )


# Integer fields each schema has validated (so `body` holds an int or None), and their limits.
_BOUNDED: dict[str, tuple[tuple[str, str], ...]] = {
    "/v1/chat/completions": (
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("n", "max_n"),
    ),
    "/v1/completions": (("max_tokens", "max_output_tokens"), ("n", "max_n"), ("best_of", "max_n")),
}


def _check_values(path: str, body: Mapping[str, Any], limits: LimitsConfig) -> int:
    """Numeric limits; returns the batch size (`n`, or prompts × `n`)."""
    for name, limit_name in _BOUNDED[path]:
        value = body.get(name)
        if value is not None and value > (limit := getattr(limits, limit_name)):
            raise InvalidRequest(f"'{name}' of {value} is over the limit of {limit}", param=name)
    batch = _batch_size(path, body)
    if batch > limits.max_n:
        raise InvalidRequest(
            f"{batch} completions (prompts × n) are over the limit of {limits.max_n}",
            param="prompt",
        )
    return batch


def parse_request(path: str, raw: bytes, limits: LimitsConfig) -> ParsedRequest:
    body = decode_object(raw, limits.max_json_depth)
    _check_counts(body, limits)
    check_structure(body, limits.max_json_depth)
    try:
        req: Any = SCHEMAS[path].model_validate(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
    _check_text(path, req, limits)
    batch = _check_values(path, body, limits)
    options = req.stream_options
    return ParsedRequest(
        path=path,
        body=body,
        model=req.model,
        stream=bool(req.stream),
        include_usage=bool(options and options.include_usage),
        batch_size=batch,
    )
