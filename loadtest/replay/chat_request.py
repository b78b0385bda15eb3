"""One streamed chat completion → a `TurnOutcome`: its `RequestSample`, the reply and ITL stats.

The one place the replay talks to the generation endpoint, so the one place foreign failures are
translated: a transport error, a timeout, a non-200 answer or a malformed stream becomes the
sample's `error` string (and never an exception out of `send_turn`). Times come from the injected
`clock` (seconds, any origin); a chunk's time is when its bytes arrived.

Timeouts: `connect_s` to open (or borrow) a connection; `first_token_s` from sending to the
response's first body chunk; `between_chunks_s` for each later chunk. httpx's own read timeout is
the larger of the two, as a backstop; the asyncio deadline, moved on at every chunk, is the rule.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from loadtest.metrics import RequestSample, percentile
from loadtest.replay.config import Timeouts
from loadtest.replay.errors import ReplayStreamError
from loadtest.replay.sse import DONE, SSEDecoder

READ_PATH_HEADER = "x-dualpath-read-path"
"""A response header naming the read path the server chose, if it says (ours does not yet)."""
SESSION_HEADER = "x-session-id"
MAX_ERROR_BODY_BYTES = 4096
MAX_RETRY_AFTER_S = 60.0
MIN_REPLY_CHARS = 4096
CHARS_PER_TOKEN_BOUND = 64
"""A reply longer than this many characters per requested token is refused (a runaway stream)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    chat_url: str
    timeouts: Timeouts
    api_key: str | None = None
    ignore_eos: bool = True

    def client(self, max_connections: int) -> httpx.AsyncClient:
        t = self.timeouts
        read = max(t.first_token_s, t.between_chunks_s)
        return httpx.AsyncClient(
            timeout=httpx.Timeout(connect=t.connect_s, read=read, write=read, pool=t.connect_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )


@dataclass(frozen=True, slots=True)
class TurnRequest:
    agent: str
    turn: int
    """0-based."""
    model: str
    messages: Sequence[dict[str, str]]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class ItlStats:
    """Inter-token latency of one stream: the gaps between its content chunks after the first."""

    count: int
    mean_s: float
    p50_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, gaps: Sequence[float]) -> ItlStats | None:
        if not gaps:
            return None
        p50, p99 = percentile(gaps, 0.5), percentile(gaps, 0.99)
        assert p50 is not None and p99 is not None
        return cls(len(gaps), sum(gaps) / len(gaps), p50, p99, max(gaps))


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    sample: RequestSample
    reply: str
    itl: ItlStats | None = None
    retry_after_s: float | None = None
    """Set when the server shed the request (429 or 503): how long it asked us to wait."""
    reported_prompt: int | None = None
    """The server's `usage.prompt_tokens` (None: it sent no usage)."""


class StreamState:
    """What a stream has said so far. Pure: feed it payloads with their arrival times."""

    __slots__ = (
        "_chars",
        "_gaps",
        "_last",
        "_max_chars",
        "_parts",
        "chunks",
        "done",
        "done_at",
        "first_at",
        "second_at",
        "usage",
    )

    def __init__(self, max_tokens: int) -> None:
        self._parts: list[str] = []
        self._chars = 0
        self._max_chars = max(MIN_REPLY_CHARS, CHARS_PER_TOKEN_BOUND * max_tokens)
        self._gaps = array("d")
        self._last: float | None = None
        self.chunks = 0
        self.first_at: float | None = None
        self.second_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.done_at: float | None = None

    def feed(self, payload: bytes, now: float) -> None:
        if payload.strip() == DONE:
            self.done = True
            self.done_at = now
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ReplayStreamError(f"a stream event is not JSON: {payload[:80]!r}") from exc
        if not isinstance(event, dict):
            raise ReplayStreamError("a stream event is not a JSON object")
        if "error" in event:
            raise ReplayStreamError(f"error in stream: {_message(event)}")
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return
        delta = choices[0].get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            self._content(content, now)

    def _content(self, content: str, now: float) -> None:
        self.chunks += 1
        self._chars += len(content)
        if self._chars > self._max_chars:
            raise ReplayStreamError(f"the reply is over {self._max_chars} characters")
        self._parts.append(content)
        if self.first_at is None:
            self.first_at = now
        elif self.second_at is None:
            self.second_at = now
        if self._last is not None:
            self._gaps.append(now - self._last)
        self._last = now

    @property
    def last_token_at(self) -> float | None:
        """The last content chunk's time, else the end of the stream's."""
        return self._last if self._last is not None else self.done_at

    @property
    def reply(self) -> str:
        return "".join(self._parts)

    def itl(self) -> ItlStats | None:
        return ItlStats.of(self._gaps)


def _message(body: object) -> str:
    """An OpenAI-shaped error's message, else the body itself (shortened)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return str(body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        value = float(raw) if raw is not None else 1.0
    except ValueError:
        value = 1.0
    return min(max(value, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(value) else 1.0


async def _error_text(response: httpx.Response) -> str:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= MAX_ERROR_BODY_BYTES:
            break
    try:
        body: object = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = data[:300].decode("utf-8", "replace")
    return f"HTTP {response.status_code}: {_message(body)}"


def _body(endpoint: Endpoint, req: TurnRequest) -> bytes:
    body: dict[str, Any] = {
        "model": req.model,
        "messages": req.messages,
        "max_tokens": req.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    if endpoint.ignore_eos:
        body["ignore_eos"] = True
    return orjson.dumps(body)


def _headers(endpoint: Endpoint, req: TurnRequest) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream",
        SESSION_HEADER: req.agent,
        "x-request-id": f"{req.agent}:{req.turn}",
    }
    if endpoint.api_key:
        headers["authorization"] = f"Bearer {endpoint.api_key}"
    return headers


async def send_turn(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    req: TurnRequest,
    clock: Callable[[], float],
    sent_at: float | None = None,
) -> TurnOutcome:
    """Send one turn and read its stream to the end; `sent_at` keeps a retried turn's first
    send time."""
    request = client.build_request(
        "POST", endpoint.chat_url, content=_body(endpoint, req), headers=_headers(endpoint, req)
    )
    sent = clock() if sent_at is None else sent_at  # after encoding: that is the client's time
    state = StreamState(req.max_tokens)
    read_path: str | None = None
    retry_after: float | None = None
    error: str | None = None
    t = endpoint.timeouts
    loop = asyncio.get_running_loop()
    got_bytes = False
    try:
        async with asyncio.timeout(t.first_token_s) as deadline:
            response = await client.send(request, stream=True)
            try:
                read_path = response.headers.get(READ_PATH_HEADER)
                if response.status_code != 200:
                    if response.status_code in (429, 503):
                        retry_after = _retry_after(response)
                    error = await _error_text(response)
                else:
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        now = clock()
                        got_bytes = True
                        deadline.reschedule(loop.time() + t.between_chunks_s)
                        for payload in decoder.feed(chunk):
                            state.feed(payload, now)
                        if state.done:
                            break
                    if not state.done:
                        raise ReplayStreamError("the stream ended before [DONE]")
            finally:
                await response.aclose()
    except TimeoutError:
        waited = "next chunk" if got_bytes else "first chunk"
        limit = t.between_chunks_s if got_bytes else t.first_token_s
        error = f"timeout: no {waited} within {limit:g}s"
    except ReplayStreamError as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _outcome(req, state, sent, read_path, error, retry_after)


def _outcome(
    req: TurnRequest,
    state: StreamState,
    sent: float,
    read_path: str | None,
    error: str | None,
    retry_after: float | None,
) -> TurnOutcome:
    usage = state.usage or {}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    ok = error is None
    sample = RequestSample(
        agent=req.agent,
        turn=req.turn,
        sent_at=sent,
        first_token_at=state.first_at,
        end_at=state.last_token_at if ok else None,
        output_tokens=completion if isinstance(completion, int) else state.chunks,
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        cached_tokens=cached if isinstance(cached, int) else 0,
        second_token_at=state.second_at,
        read_path=read_path,
        error=error,
    )
    reported = prompt if isinstance(prompt, int) else None
    return TurnOutcome(sample, state.reply, state.itl(), retry_after, reported)
