"""One streamed chat turn: the SSE decoder, the stream's timing, and every way a response can
fail turned into the sample's `error`. The server here is an `httpx.MockTransport` answering with
a plain function: the point is the client's handling of bytes no healthy server sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.replay.chat_request import (
    Endpoint,
    StreamState,
    TurnOutcome,
    TurnRequest,
    send_turn,
)
from loadtest.replay.config import Timeouts
from loadtest.replay.errors import ReplayStreamError
from loadtest.replay.sse import SSEDecoder

URL = "http://server.test/v1/chat/completions"
REQ = TurnRequest("agent-1", 0, "tiny", ({"role": "user", "content": "hi"},), 3)


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}]})


USAGE = _event(
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
)
GOOD = [
    _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    _chunk("one"),
    _chunk(" two"),
    _chunk(" three"),
    USAGE,
    b"data: [DONE]\n\n",
]


@given(cuts=st.lists(st.integers(0, sum(map(len, GOOD))), max_size=12), crlf=st.booleans())
def test_sse_decoder_any_split(cuts: list[int], crlf: bool) -> None:
    data = b"".join(GOOD)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    decoder = SSEDecoder()
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        out += decoder.feed(data[last:cut])
        last = cut
    assert out == [e[6:-2] for e in GOOD]
    assert not decoder.pending


def test_sse_decoder_skips_comments_and_bounds_events() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    assert decoder.feed(b": keep-alive\n\nevent: x\ndata: a\ndata: b\n\n") == [b"a\nb"]
    with pytest.raises(ReplayStreamError, match="over 64 bytes"):
        decoder.feed(b"data: " + b"x" * 100)


def test_stream_state_times_tokens_and_reads_usage() -> None:
    state = StreamState(max_tokens=3)
    for t, event in enumerate(GOOD):
        state.feed(event[6:-2], float(t))
    assert (state.first_at, state.second_at, state.last_token_at, state.done) == (1, 2, 3, True)
    assert state.reply == "one two three"
    assert state.usage is not None and state.usage["prompt_tokens"] == 10
    itl = state.itl()
    assert itl is not None and (itl.count, itl.mean_s, itl.max_s) == (2, 1.0, 1.0)


def test_stream_state_refuses_a_runaway_reply() -> None:
    state = StreamState(max_tokens=1)
    with pytest.raises(ReplayStreamError, match="characters"):
        for _ in range(100):
            state.feed(_chunk("x" * 100)[6:-2], 0.0)


Handler = Callable[[httpx.Request], httpx.Response]


async def _send(handler: Handler, timeouts: Timeouts | None = None) -> TurnOutcome:
    endpoint = Endpoint(URL, timeouts or Timeouts(), api_key="k")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        clock = asyncio.get_running_loop().time
        return await send_turn(client, endpoint, REQ, clock)


async def test_a_good_stream_makes_a_sample() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"".join(GOOD), headers={"x-dualpath-read-path": "de"})

    outcome = await _send(handler)
    sample = outcome.sample
    assert sample.ok and sample.error is None
    assert (sample.output_tokens, sample.prompt_tokens, sample.cached_tokens) == (3, 10, 8)
    assert sample.read_path == "de"
    assert outcome.reply == "one two three"
    body = orjson.loads(seen[0].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 3 and body["ignore_eos"] is True
    assert seen[0].headers["x-session-id"] == "agent-1"
    assert seen[0].headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("response", "error", "retry_after"),
    [
        (
            httpx.Response(429, json={"error": {"message": "busy"}}, headers={"retry-after": "3"}),
            "HTTP 429: busy",
            3.0,
        ),
        (httpx.Response(500, text="boom"), "HTTP 500: boom", None),
        (httpx.Response(200, content=b"".join(GOOD[:3])), "ended before [DONE]", None),
        (httpx.Response(200, content=_event({"error": {"message": "oom"}})), "oom", None),
        (httpx.Response(200, content=b"data: {nope\n\n"), "not JSON", None),
    ],
)
async def test_failures_become_the_samples_error(
    response: httpx.Response, error: str, retry_after: float | None
) -> None:
    outcome = await _send(lambda _request: response)
    sample = outcome.sample
    assert not sample.ok and error in (sample.error or "")
    assert sample.end_at is None
    assert outcome.retry_after_s == retry_after


async def test_a_transport_error_is_recorded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    outcome = await _send(handler)
    assert outcome.sample.error == "ConnectError: refused"


async def test_silence_between_chunks_times_out() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield GOOD[1]
        await asyncio.sleep(5)
        yield GOOD[2]

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    timeouts = Timeouts(first_token_s=5, between_chunks_s=0.05)
    outcome = await _send(handler, timeouts)
    sample = outcome.sample
    assert sample.error == "timeout: no next chunk within 0.05s"
    assert sample.first_token_at is not None
