"""The soak's load: N agents, each looping multi-turn streamed chat sessions, one aiohttp client.

One process, one event loop, one connection pool as large as the agents: the leanest client
that still speaks HTTP like an SDK does (keep-alive, chunked SSE). Each turn is booked as one
`Sample`: when it started, TTFT (the first token's content, not the role chunk), E2E (`[DONE]`),
the workers that served it (`x-dualpath-prefill` / `x-dualpath-decode`), the gateway's own time
(`server-timing: gateway;dur=`), and, for a failure, its kind:

    http_<status>   a non-200 answer (429 shed, 503 no worker, 502 worker failed, ...)
    connect         the gateway refused or dropped the connection before a response head
    timeout         no byte for `read_timeout_s`
    cut             the stream broke off (connection closed, malformed chunking)
    error_event     an SSE `data: {"error": ...}` event: the gateway ended a started stream
    no_done         the stream ended cleanly but without `data: [DONE]`
    unfinished      still running when the soak's drain timed out
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

SYSTEM = (
    "You are a coding agent working in a large repository. Read files, run the tests, "
    "propose minimal patches, and explain each step briefly. "
) * 6


@dataclass(slots=True)
class Sample:
    agent: int
    turn: int
    started: float
    """`time.monotonic()` when the request was sent."""
    ended: float = 0.0
    """`time.monotonic()` when the turn ended, however it ended."""
    ttft: float | None = None
    e2e: float | None = None
    error: str | None = None
    detail: str = ""
    decode: str | None = None
    prefill: str | None = None
    gateway_ms: float | None = None
    queue_ms: float | None = None
    cached_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    base: str
    model: str = "tiny"
    agents: int = 1000
    turns: int = 6
    """Turns per session; then the agent starts a new session."""
    max_tokens: int = 32
    ramp_s: float = 10.0
    """Agents start spread over this long, not all in one instant."""
    think_s: float = 0.0
    """Between turns an agent waits this long (±50%), as for a tool run; 0: a closed loop."""
    read_timeout_s: float = 300.0
    seed: int = 0


@dataclass(slots=True)
class Load:
    spec: LoadSpec
    samples: list[Sample] = field(default_factory=list)
    stopping: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the last turn in flight ends after `stopping`."""


def _server_timing(value: str | None) -> tuple[float | None, float | None]:
    """(gateway ms, queue ms) from `gateway;dur=X, queue;dur=Y`."""
    found: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, params = part.strip().partition(";")
        if params.startswith("dur="):
            with contextlib.suppress(ValueError):
                found[name] = float(params[4:])
    return found.get("gateway"), found.get("queue")


async def _read_stream(response: aiohttp.ClientResponse, s: Sample) -> str:
    """Read SSE events to `[DONE]`; the reply text. Books TTFT, E2E, usage or the error."""
    text: list[str] = []
    async for raw in response.content:
        if not raw.startswith(b"data: "):
            continue
        data = raw[6:].strip()
        if data == b"[DONE]":
            s.e2e = time.monotonic() - s.started
            return "".join(text)
        event = orjson.loads(data)
        if "error" in event:
            s.error, s.detail = "error_event", str(event["error"].get("message", ""))[:200]
            return ""
        usage = event.get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            s.cached_tokens = details.get("cached_tokens") or 0
            s.prompt_tokens = usage.get("prompt_tokens") or 0
            s.completion_tokens = usage.get("completion_tokens") or 0
        for choice in event.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if s.ttft is None:
                    s.ttft = time.monotonic() - s.started
                text.append(piece)
    s.error = "no_done"
    return ""


async def turn(
    http: aiohttp.ClientSession, load: Load, agent: int, n: int, sid: str, body: bytes
) -> tuple[Sample, str]:
    s = Sample(agent, n, time.monotonic())
    headers = {"content-type": "application/json", "x-session-id": sid}
    load.in_flight += 1
    try:
        async with http.post(load.spec.base + "/v1/chat/completions", data=body,
                             headers=headers) as r:  # fmt: skip
            s.decode = r.headers.get("x-dualpath-decode")
            s.prefill = r.headers.get("x-dualpath-prefill")
            s.gateway_ms, s.queue_ms = _server_timing(r.headers.get("server-timing"))
            if r.status != 200:
                s.error, s.detail = f"http_{r.status}", (await r.text())[:200]
                return s, ""
            return s, await _read_stream(r, s)
    except TimeoutError as exc:
        s.error, s.detail = "timeout", repr(exc)[:200]
    except aiohttp.ClientConnectorError as exc:
        s.error, s.detail = "connect", repr(exc)[:200]
    except (aiohttp.ClientError, ValueError) as exc:
        # No head yet: the connection was dropped; after the head: the stream was cut.
        s.error = "cut" if s.decode is not None else "connect"
        s.detail = repr(exc)[:200]
    except asyncio.CancelledError:
        s.error = "unfinished"  # still running when the drain timed out
        raise
    finally:
        load.in_flight -= 1
        if load.stopping and not load.in_flight:
            load.idle.set()
        s.ended = time.monotonic()
        load.samples.append(s)
    return s, ""


async def agent_loop(http: aiohttp.ClientSession, load: Load, agent: int) -> None:
    spec = load.spec
    rng = random.Random(spec.seed * 100_003 + agent)
    await asyncio.sleep(rng.uniform(0, spec.ramp_s))  # a ramp, not a thundering herd
    session = 0
    while not load.stopping:
        sid = f"soak-{agent}-{session}"
        messages: list[dict[str, str]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Task {sid}: the test suite fails; find out why."},
        ]
        for n in range(spec.turns):
            if load.stopping:
                return
            body = orjson.dumps(
                {
                    "model": spec.model,
                    "messages": messages,
                    "max_tokens": spec.max_tokens,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            )
            s, reply = await turn(http, load, agent, n, sid, body)
            if s.error is not None:
                break  # the agent starts a fresh session, as a real one would after an error
            if spec.think_s > 0:
                await asyncio.sleep(spec.think_s * rng.uniform(0.5, 1.5))  # the agent's tools
            messages.append({"role": "assistant", "content": reply})
            messages.append({"role": "user", "content": f"Tool output {n}: 41 passed, 1 failed."})
        session += 1


def client_session(agents: int, read_timeout_s: float) -> aiohttp.ClientSession:
    """One pool with a connection per agent (plus slack), no per-host cap."""
    connector = aiohttp.TCPConnector(limit=agents + 16, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout_s)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
    )
