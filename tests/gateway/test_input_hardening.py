"""Input hardening: every hostile or oversized input gets a clear OpenAI-shaped 4xx naming what
is wrong, never a 5xx or a hang. The parser's rules one by one, then the same through a real
uvicorn server on a socket (header limits live below the app, in `gateway.http_limits`)."""

from __future__ import annotations

import gc
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields
from typing import Any

import httpx
import orjson
import pytest

from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.request_parsing import parse_request, read_body
from gateway.server import GC_YOUNG_THRESHOLD, GatewayServer, uvicorn_config
from gateway.settings import GatewaySettings, LimitsConfig, load_settings
from tests.support.procs import free_port, wait_http_ok

LIMITS = LimitsConfig(
    max_body_bytes=64 * 1024,
    max_output_tokens=4096,
    max_header_bytes=4096,
    max_headers=20,
    max_json_depth=8,
    max_messages=4,
    max_message_chars=50,
    max_total_chars=120,
    max_stop=2,
    max_n=4,
    max_tools=2,
)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]


def _refused(raw: bytes | str, path: str = CHAT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(path, raw.encode() if isinstance(raw, str) else raw, LIMITS)
    err = info.value
    assert err.status == 400
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    return err


def _body(**extra: Any) -> bytes:
    # The standard library's encoder: orjson refuses to write integers past 64 bits.
    return json.dumps({"model": "m", "messages": MSG, **extra}).encode()


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# --- the JSON itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"model": "m\xff", "messages": []}', "UTF-8"),
        (b'{"model": "\xc0\xaf", "messages": []}', "UTF-8"),  # overlong encoding of "/"
        (b'{"model": "\xed\xa0\x80", "messages": []}', "UTF-8"),  # a surrogate, UTF-8 encoded
        ('{"model": "\\ud800", "messages": []}', "surrogate"),
        ('{"model": "\\udc00x", "messages": []}', "surrogate"),
        ('{"model": "\\ud800\\u0041", "messages": []}', "surrogate"),
        ('{"model": "m", "messages": [], "temperature": NaN}', "NaN and Infinity"),
        ('{"model": "m", "messages": [], "temperature": Infinity}', "NaN and Infinity"),
        ('{"model": "m", "messages": [], "temperature": -Infinity}', "NaN and Infinity"),
        ('{"model": "m", "model": "n", "messages": []}', "duplicate key 'model'"),
        ('{"\\u006dodel": "m", "model": "n", "messages": []}', "duplicate key 'model'"),
        ('{"model": "m", "messages": [{"role": "user", "role": "system"}]}', "duplicate key"),
        ('{"model": "m", "x": {"a": 1, "b": {"c": 1, "c": 2}}}', "duplicate key 'c'"),
        ('{"model": "m", "x": ' + "1" * 5000 + "}", "out of range"),
        ("[" * 100_000 + "]" * 100_000, "deeper than"),
        ("{" + '"a":{' * 100_000, "deeper than"),
        ('{"model": "m",}', "not valid JSON"),
        ('{"model": "m"} {}', "not valid JSON"),
        ('\ufeff{"model": "m"}', "not valid JSON"),
        ('{"model": "a\nb"}', "not valid JSON"),  # a raw control character in a string
        ("", "empty"),
        (" \n\t", "empty"),
    ],
)
def test_hostile_json_is_a_clear_400(raw: bytes | str, says: str) -> None:
    assert says in _refused(raw).message


@pytest.mark.parametrize("raw", ["[]", "[{}]", '"text"', "1", "null", "true"])
def test_top_level_must_be_an_object(raw: str) -> None:
    assert "must be a JSON object" in _refused(raw).message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 2**64}, "max_tokens"),
        ({"max_tokens": 2**63}, "max_tokens"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"top_k": 10**30}, "top_k"),  # an SGLang field the schema does not know
        ({"chat_template_kwargs": {"a": [1, {"b": 10**25}]}}, "chat_template_kwargs"),
        ({"messages": [{"role": "user", "content": "x", "ext": [2**70]}]}, "messages"),
    ],
)
def test_integers_beyond_64_bits_are_refused_naming_the_field(
    extra: dict[str, Any], param: str
) -> None:
    err = _refused(_body(**extra))
    assert err.param == param and "out of range" in err.message


def test_numbers_that_overflow_a_double_are_refused() -> None:
    raw = b'{"model": "m", "messages": [], "temperature": 1e400}'
    assert _refused(raw).param == "temperature"
    assert _refused(b'{"model": "m", "x": [-1e999]}').param == "x"


def test_64_bit_extremes_are_accepted() -> None:
    for seed in (2**63 - 1, -(2**63)):
        assert parse_request(CHAT, _body(seed=seed, top_k=seed), LIMITS).body["seed"] == seed


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_completion_tokens": 4097}, "max_completion_tokens"),
        ({"n": 10**6}, "n"),
        ({"n": 5}, "n"),  # within OpenAI's 128, over the configured 4
        ({"temperature": 1e300}, "temperature"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_logprobs": 10**9}, "top_logprobs"),
    ],
)
def test_absurd_values_name_the_param(extra: dict[str, Any], param: str) -> None:
    assert _refused(_body(**extra)).param == param


def test_nesting_up_to_the_limit_is_accepted_and_one_more_is_not() -> None:
    # The body object is level 1, so a field may hold max_json_depth - 1 levels.
    parse_request(CHAT, _body(x=_nested(LIMITS.max_json_depth - 1)), LIMITS)
    err = _refused(_body(x=_nested(LIMITS.max_json_depth)))
    assert err.param == "x" and "deeper than the limit of 8" in err.message
    assert _refused(_body(x={"a": {"b": _nested(7)}})).param == "x"


# --- limits on sizes and counts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        (CHAT, {"messages": MSG * 5}, "messages", "array_above_max_length"),
        (CHAT, {"messages": MSG, "stop": ["a", "b", "c"]}, "stop", "array_above_max_length"),
        (CHAT, {"messages": MSG, "tools": [{}] * 3}, "tools", "array_above_max_length"),
        (CHAT, {"messages": MSG, "functions": [{}] * 3}, "functions", "array_above_max_length"),
        (
            CHAT,
            {"messages": [*MSG, {"role": "user", "content": "x" * 51}]},
            "messages.1.content",
            "string_above_max_length",
        ),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 30}] * 2}]},
            "messages.0.content",
            "string_above_max_length",
        ),
        (
            CHAT,
            {"messages": [{"role": "user", "content": "z" * 45}] * 3},
            "messages",
            "string_above_max_length",
        ),
        (COMPLETIONS, {"prompt": "p" * 51}, "prompt", "string_above_max_length"),
        (COMPLETIONS, {"prompt": ["a", "p" * 51]}, "prompt.1", "string_above_max_length"),
        (COMPLETIONS, {"prompt": ["p" * 45] * 3}, "prompt", "string_above_max_length"),
        (COMPLETIONS, {"prompt": ["a", "b", "c"], "n": 2}, "prompt", None),
        (COMPLETIONS, {"prompt": "a", "best_of": 5}, "best_of", None),
    ],
)
def test_size_and_count_limits_name_the_param(
    path: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    err = _refused(orjson.dumps({"model": "m", **body}), path)
    assert (err.param, err.code) == (param, code)


def test_limits_allow_what_fits() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": ""}],
        "stop": ["a", "b"],
        "tools": [{}, {}],
        "n": 4,
    }
    assert parse_request(CHAT, orjson.dumps(body), LIMITS).batch_size == 4
    prompts = {"model": "m", "prompt": ["a", "b"], "n": 2}
    assert parse_request(COMPLETIONS, orjson.dumps(prompts), LIMITS).batch_size == 4


def test_every_limit_is_read_from_its_environment_variable() -> None:
    env = {f"DUALPATH_LIMITS_{f.name.upper()}": "7" for f in fields(LimitsConfig)}
    limits = load_settings(env=env).limits
    assert all(getattr(limits, f.name) == 7 for f in fields(LimitsConfig))


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


@pytest.mark.parametrize("declared", ["²", "-1", "1e3", " 5", "0x10", ""])
async def test_a_content_length_that_is_not_digits_is_400(declared: str) -> None:
    with pytest.raises(InvalidRequest):
        await read_body({"content-length": declared}, _chunks(b"{}"), LIMITS)


async def test_a_declared_length_of_many_digits_is_413_not_a_crash() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body({"content-length": "9" * 5000}, _chunks(b"{}"), LIMITS)


# --- through a real server on a socket -------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The gateway app (no workers: a parsed request ends at 404 model_not_found) under the
    same uvicorn configuration as `dualpath serve`, in a thread."""
    settings = GatewaySettings(port=free_port(), limits=LIMITS)
    threshold = gc.get_threshold()
    srv = GatewayServer(uvicorn_config(settings))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.port}"
    try:
        wait_http_ok(base + "/health")
        yield base
    finally:
        srv.should_exit = True
        thread.join(15)
        gc.unfreeze()  # what the server froze and set is this test process's
        gc.set_threshold(*threshold)


def _exchange(base: str, data: bytes, *more: bytes) -> bytes:
    """Send a raw request head (and more), read until the server closes or 10 s pass."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            for part in (data, *more):
                conn.sendall(part)
        except OSError:
            pass  # the server may close before it has read everything we meant to send
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def _status_and_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)["error"]


HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\n"


def test_the_started_server_froze_its_startup_objects_out_of_the_cyclic_gc(server: str) -> None:
    assert gc.get_freeze_count() > 0


def test_the_started_server_collects_young_objects_less_often(server: str) -> None:
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD


def test_a_header_block_over_the_byte_limit_is_431(server: str) -> None:
    status, error = _status_and_error(
        _exchange(server, HEALTH + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n")
    )
    assert status == 431
    assert error["code"] == "request_header_fields_too_large"
    assert "4096-byte limit" in error["message"]


def test_too_many_header_fields_is_431(server: str) -> None:
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(25))
    status, error = _status_and_error(_exchange(server, HEALTH + many + b"\r\n"))
    assert status == 431
    assert "26 request headers are over the limit of 20" in error["message"]  # Host too


def test_a_head_that_never_ends_is_cut_off_at_the_limit(server: str) -> None:
    endless = [b"X-Pad-%d: %s\r\n" % (i, b"b" * 100) for i in range(2000)]  # ~220 KB, no end
    status, error = _status_and_error(_exchange(server, HEALTH, *endless))
    assert status == 431 and "request head is over" in error["message"]


def test_headers_within_the_limits_pass(server: str) -> None:
    some = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(15))
    answer = _exchange(server, HEALTH + some + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")


def test_a_large_body_is_not_mistaken_for_a_large_head(server: str) -> None:
    # ~60 KB of body arrives with a small head: the head counter must stop at its end.
    body = _body(x="q" * 60_000)
    with httpx.Client(base_url=server, timeout=10) as client:
        answer = client.post(CHAT, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
        # The same keep-alive connection, then a head over the limit: 431 for that request.
        big = client.get("/health", headers={"x-big": "b" * 5000})
        assert big.status_code == 431


def test_a_body_over_the_limit_is_413(server: str) -> None:
    body = _body(x="q" * 70_000)
    answer = httpx.post(
        server + CHAT, content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [], "temperature": NaN}',
        b'{"model": "m", "model": "n", "messages": []}',
        b'{"model": "m\xff"}',
        b"[" * 60_000,
        b'{"model": "m", "messages": [], "max_tokens": 100000000000000000000000}',
    ],
)
def test_hostile_bodies_over_http_are_400_and_the_server_goes_on(server: str, raw: bytes) -> None:
    answer = httpx.post(
        server + CHAT, content=raw, headers={"content-type": "application/json"}, timeout=10
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server + "/health", timeout=10).status_code == 200
