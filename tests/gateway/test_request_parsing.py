from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import APIError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.request_parsing import check_content_type, parse_request, read_body
from gateway.settings import LimitsConfig

LIMITS = LimitsConfig(max_body_bytes=1000, max_output_tokens=4096)
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def _parse(body: Any, path: str = CHAT) -> Any:
    return parse_request(path, orjson.dumps(body), LIMITS)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": MSG}, "model"),
        ({"model": 7, "messages": MSG}, "model"),
        ({"model": "m", "messages": MSG, "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": 10**12}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": MSG, "temperature": 3}, "temperature"),
        ({"model": "m", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MSG, "n": 0}, "n"),
        ({"model": "m", "prompt": 3}, "prompt"),
    ],
)
def test_bad_fields_name_the_param(body: dict[str, Any], param: str) -> None:
    path = "/v1/completions" if "prompt" in body else CHAT
    with pytest.raises(InvalidRequest) as info:
        _parse(body, path)
    assert info.value.param == param
    assert info.value.status == 400
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"[1, 2]", b'"text"', b"{'a': 1}", b"NaN"])
def test_malformed_json_is_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(CHAT, raw, LIMITS)


def test_unknown_fields_are_kept_and_usage_flags_read() -> None:
    body = {
        "model": "m",
        "messages": MSG,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "my_extension": {"a": 1},
        "n": 2,
    }
    parsed = _parse(body)
    assert parsed.body == body
    assert parsed.stream and parsed.include_usage and parsed.batch_size == 2


def test_completion_prompt_list_is_a_batch() -> None:
    assert _parse({"model": "m", "prompt": ["a", "b", "c"]}, "/v1/completions").batch_size == 3
    assert _parse({"model": "m", "prompt": [1, 2, 3]}, "/v1/completions").batch_size == 1


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/plain", False),
        ("", False),
    ],
)
def test_content_type(content_type: str, ok: bool) -> None:
    headers = {"content-type": content_type} if content_type else {}
    if ok:
        check_content_type(headers)
    else:
        with pytest.raises(UnsupportedMediaType):
            check_content_type(headers)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def test_body_over_the_limit_is_413_declared_or_not() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body({"content-length": "5000"}, _chunks(b"x"), LIMITS)
    with pytest.raises(PayloadTooLarge):
        await read_body({}, _chunks(b"x" * 600, b"y" * 600), LIMITS)
    assert await read_body({"content-length": "2"}, _chunks(b"{}"), LIMITS) == b"{}"


@given(st.binary(max_size=300))
def test_any_bytes_give_a_parsed_request_or_a_4xx(raw: bytes) -> None:
    try:
        parse_request(CHAT, raw, LIMITS)
    except APIError as exc:
        assert 400 <= exc.status < 500


@given(
    st.dictionaries(
        st.sampled_from(["model", "messages", "max_tokens", "stream", "n", "temperature", "stop"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    )
)
def test_any_json_object_gives_a_parsed_request_or_a_4xx(body: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        parse_request(CHAT, raw, LIMITS)
    except APIError as exc:
        assert 400 <= exc.status < 500
