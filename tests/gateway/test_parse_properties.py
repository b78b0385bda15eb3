"""Properties of the request parsers, on inputs hypothesis makes up.

- Any bytes, and any JSON-like text (duplicate keys, NaN, huge numbers, deep nesting, bad
  escapes, stray bytes), give a `ParsedRequest` or a 4xx `APIError`; nothing else escapes.
- The strict JSON decoder accepts exactly what a reference built on the standard library's
  `json` accepts, and decodes it to the same value.
- Valid requests round-trip: the body comes back unchanged, its flags read right.
- `read_body` returns the joined chunks, or refuses with 413 or 400, however they are cut.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.errors import APIError, InvalidRequest, PayloadTooLarge
from gateway.json_body import I64_MAX, I64_MIN, check_structure, decode_object
from gateway.request_parsing import parse_request, read_body
from gateway.settings import LimitsConfig

LIMITS = LimitsConfig(max_body_bytes=4000, max_output_tokens=512, max_json_depth=6, max_n=8)
PATHS = ("/v1/chat/completions", "/v1/completions")


# --- JSON-like text, valid or not ------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1e-400", "-0", "1E2"]),
    st.sampled_from(["01", "1.", ".5", "+1", "0x10", "1" * 4400]),  # not JSON
)
ESCAPES = st.sampled_from(
    ["\\n", '\\"', "\\\\", "\\u00e9", "\\ud83d\\ude00", "\\ud800", "\\udc00", "\\u12", "\\x41"]
)
TEXT = st.lists(st.text(max_size=6).map(lambda s: json.dumps(s)[1:-1]) | ESCAPES, max_size=3)
STRINGS = TEXT.map(lambda parts: '"' + "".join(parts) + '"')
KEYS = st.sampled_from(['"model"', '"messages"', '"n"', '"stream"', '"a"', '"\\u0061"']) | STRINGS


def _container(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    members = st.lists(st.tuples(KEYS, children), max_size=4)  # keys may repeat
    return st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]") | members.map(
        lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
    )


JSONISH = st.recursive(
    NUMBERS | STRINGS | st.sampled_from(["true", "false", "null"]), _container, max_leaves=12
)
DEEP = st.integers(min_value=1, max_value=300).map(lambda d: '{"a":' + "[" * d + "]" * d + "}")


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """JSON-like text, now and then damaged by a stray byte."""
    raw = draw(JSONISH | DEEP).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=2)) + raw[at:]
    return raw


def _reference(raw: bytes, max_depth: int) -> dict[str, Any] | None:
    """What the strict decoder should make of `raw`, from the standard library's `json`."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")
        return dict(items)

    def constant(name: str) -> None:
        raise ValueError(name)

    def fine(value: Any, depth: int) -> bool:
        if isinstance(value, dict | list):
            items = value.values() if isinstance(value, dict) else value
            keys = value.keys() if isinstance(value, dict) else ()
            return depth <= max_depth and all(fine(v, depth + 1) for v in (*items, *keys))
        if isinstance(value, str):
            return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)  # lone surrogates
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return I64_MIN <= value <= I64_MAX
        return True

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and fine(value, 1) else None


@given(raw_bodies())
def test_strict_json_accepts_what_the_reference_accepts(raw: bytes) -> None:
    expected = _reference(raw, LIMITS.max_json_depth)
    try:
        got = decode_object(raw, LIMITS.max_json_depth)
        check_structure(got, LIMITS.max_json_depth)
    except InvalidRequest as exc:
        assert expected is None, f"refused valid JSON: {exc.message}"
        return
    assert got == expected


@given(st.sampled_from(PATHS), raw_bodies() | st.binary(max_size=400))
def test_any_input_gives_a_parsed_request_or_a_4xx(path: str, raw: bytes) -> None:
    try:
        parse_request(path, raw, LIMITS)
    except APIError as exc:
        assert 400 <= exc.status < 500
        assert exc.body()["error"]["message"]


# --- valid requests round-trip ---------------------------------------------------------------

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=I64_MIN, max_value=I64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _depth(value: Any) -> int:
    """Levels of arrays and objects in `value` (0 for a scalar)."""
    if isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return 1 + max(map(_depth, items), default=0)
    return 0


EXTRAS = st.dictionaries(st.text(max_size=6).map(lambda s: "x_" + s), VALUES, max_size=3)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool"]),
            "content": st.text(max_size=40),
        }
    ),
    min_size=1,
    max_size=4,
)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(min_value=1, max_value=LIMITS.max_output_tokens),
        "n": st.integers(min_value=1, max_value=LIMITS.max_n),
        "temperature": st.floats(min_value=0, max_value=2),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": st.lists(st.text(max_size=4), max_size=LIMITS.max_stop),
        "seed": st.integers(min_value=I64_MIN, max_value=I64_MAX),
    },
)


@given(st.text(min_size=1, max_size=10), MESSAGES, OPTIONS, EXTRAS)
def test_valid_chat_requests_round_trip(
    model: str, messages: list[dict[str, str]], options: dict[str, Any], extras: dict[str, Any]
) -> None:
    assume(all(_depth(v) < LIMITS.max_json_depth for v in extras.values()))
    body = {"model": model, "messages": messages, **options, **extras}
    parsed = parse_request("/v1/chat/completions", orjson.dumps(body), LIMITS)
    assert parsed.body == body
    assert parsed.model == model
    assert parsed.stream is bool(options.get("stream"))
    assert parsed.include_usage is bool(options.get("stream_options", {}).get("include_usage"))
    assert parsed.batch_size == options.get("n", 1)


@given(
    st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=2),
)
def test_valid_completion_batches_round_trip(prompts: list[str], n: int) -> None:
    body = {"model": "m", "prompt": prompts, "n": n}
    parsed = parse_request("/v1/completions", orjson.dumps(body), LIMITS)
    assert parsed.body == body and parsed.batch_size == len(prompts) * n


# --- read_body -------------------------------------------------------------------------------


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@given(
    st.lists(st.binary(max_size=1500), max_size=5),
    st.none() | st.integers(min_value=0, max_value=10**30).map(str) | st.text(max_size=6),
)
async def test_read_body_joins_the_chunks_or_refuses(
    parts: list[bytes], declared: str | None
) -> None:
    headers = {} if declared is None else {"content-length": declared}
    whole = b"".join(parts)
    try:
        got = await read_body(headers, _chunks(parts), LIMITS)
    except PayloadTooLarge:
        assert len(whole) > LIMITS.max_body_bytes or int(declared or 0) > LIMITS.max_body_bytes
    except InvalidRequest:
        assert declared is not None and not (declared.isascii() and declared.isdigit())
    else:
        assert got == whole and len(got) <= LIMITS.max_body_bytes
