"""Strict JSON for request bodies: bytes → a dict, or an `InvalidRequest` saying what is wrong.

Stricter than the workers' own parsers, so a hostile body is refused before anything reads it:
invalid UTF-8, lone UTF-16 surrogates, NaN and ±Infinity, duplicate keys, integers outside
signed 64 bits, numbers that overflow a double, nesting deeper than `max_json_depth`, and any
top level but an object.

jiter (pydantic's parser) decodes, not orjson: it refuses duplicate keys as it parses, where
orjson keeps the last one silently. It takes about half again orjson's time (≈ +0.12 ms on a
64K-token chat body, `bench/parse_cost.py`), which validating messages as TypedDicts pays back;
`check_structure`'s walk adds ≈ 0.09 ms there.
It also stops at 200 levels (`PARSER_MAX_DEPTH`), under the 254 that `orjson.dumps` (which
writes the upstream body) can take.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jiter

from gateway.errors import InvalidRequest

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
PARSER_MAX_DEPTH = 200
"""jiter's own nesting limit: deeper is refused whatever `max_json_depth` says."""

_WHERE = re.compile(r"\s+at line \d+ column \d+$")
_DUPLICATE = re.compile(r'Detected duplicate key "(.*)"')


def _json_error(exc: ValueError, raw: bytes, max_depth: int) -> InvalidRequest:
    """jiter's message, made to say what the client did wrong (only on the error path)."""
    text = str(exc)
    found = _WHERE.search(text)
    what, where = (text[: found.start()], text[found.start() :].strip()) if found else (text, "")
    if dup := _DUPLICATE.match(what):
        return InvalidRequest(f"duplicate key {dup.group(1)!r} in a JSON object ({where})")
    if what.startswith("recursion limit"):
        limit = min(max_depth, PARSER_MAX_DEPTH)
        return InvalidRequest(f"JSON nesting is deeper than the limit of {limit}")
    if what == "invalid unicode code point":
        return InvalidRequest(f"request body is not valid UTF-8 ({where})")
    if "surrogate" in what or "hex escape" in what:
        return InvalidRequest(
            f"request body has an invalid \\u escape, such as a lone UTF-16 surrogate ({where})"
        )
    if what in ("expected value", "invalid number") and (b"NaN" in raw or b"Infinity" in raw):
        return InvalidRequest(f"NaN and Infinity are not JSON numbers ({where})")
    if what == "number out of range":
        return InvalidRequest(f"a number in the request body is out of range ({where})")
    return InvalidRequest(f"request body is not valid JSON: {text}")


def _out_of_range(value: int | float) -> bool:
    if type(value) is int:
        return not I64_MIN <= value <= I64_MAX
    return not math.isfinite(value)  # 1e400 parses as inf


def _check_tree(param: str, root: dict[str, Any] | list[Any], depth: int, limit: int) -> None:
    """Level by level below one top-level field; `depth` is that of `root`."""
    level: list[Any] = [root]
    while level:
        if depth > limit:
            raise InvalidRequest(
                f"'{param}' nests arrays and objects deeper than the limit of {limit}",
                param=param,
            )
        below: list[Any] = []
        for node in level:
            for value in node.values() if type(node) is dict else node:
                kind = type(value)
                if kind is str:
                    continue
                if kind is dict or kind is list:
                    below.append(value)
                elif (kind is int or kind is float) and _out_of_range(value):
                    raise InvalidRequest(
                        f"'{param}' holds a number out of range: {value!r:.40}", param=param
                    )
        level = below
        depth += 1


def check_structure(body: dict[str, Any], max_depth: int) -> None:
    """Nesting depth and number range of every value, naming the top-level field at fault."""
    for key, value in body.items():
        kind = type(value)
        if kind is dict or kind is list:
            _check_tree(key, value, 2, max_depth)
        elif (kind is int or kind is float) and _out_of_range(value):
            raise InvalidRequest(f"'{key}' is out of range: {value!r:.40}", param=key)


def decode_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a dict: valid UTF-8 and JSON, no NaN, no duplicate keys, at most 200 levels.
    Depth and number range are `check_structure`'s, once array lengths are known to be sane."""
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = jiter.from_json(
            raw, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys"
        )
    except ValueError as exc:
        raise _json_error(exc, raw, max_depth) from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body
