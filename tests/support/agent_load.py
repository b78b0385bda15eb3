"""Agents that keep talking to a gateway while a test breaks what is behind it.

Each agent loops multi-turn chat sessions (named by `X-Session-ID`, streamed, usage included),
appending every reply and a new user message, and books each turn as a success or a failure.
A failure is anything a client would notice: a non-200 answer, a broken connection, an SSE error
event, or a stream that ends without `data: [DONE]`. The test waits on turn counts (`until`),
never on time, so the phases of a fault line up with real traffic however slow the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

BLOCK = 64
SYSTEM = "You are a coding agent. Read files, run tests, fix code. " * 12


@dataclass(frozen=True, slots=True)
class TurnResult:
    session: str
    turn: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class Tally:
    turns: list[TurnResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """One line per failed turn: what the client saw."""


class AgentLoad:
    """`agents` concurrent agents, each running sessions of `turns` turns until stopped."""

    def __init__(
        self,
        base: str,
        *,
        agents: int = 6,
        turns: int = 4,
        model: str = "tiny",
        key: str | None = None,
        max_tokens: int = 12,
    ) -> None:
        self.base = base
        self.agents = agents
        self.turns = turns
        self.model = model
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.max_tokens = max_tokens
        self.tally = Tally()
        self._changed = asyncio.Condition()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(base_url=base, timeout=30.0)

    @property
    def done(self) -> int:
        return len(self.tally.turns) + len(self.tally.failures)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._agent(f"agent{i}")) for i in range(self.agents)]

    async def until(self, turns: int, limit_s: float = 40.0) -> None:
        """Return once `turns` turns have ended (succeeded or failed) since the start."""
        await self.until_true(lambda tally: self.done >= turns, limit_s)

    async def for_at_least(self, seconds: float, turns: int) -> None:
        """Keep the agents going for `seconds` and at least `turns` more turns (so a phase spans
        both the store's retry intervals and real traffic); checked after every turn."""
        end, target = time.monotonic() + seconds, self.done + turns
        await self.until_true(
            lambda _: self.done >= target and time.monotonic() >= end, seconds + 40.0
        )

    async def until_true(self, predicate: Callable[[Tally], bool], limit_s: float = 40.0) -> None:
        """Return once `predicate(tally)` holds; it is checked after every turn."""
        async with asyncio.timeout(limit_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.tally))

    async def stop(self) -> Tally:
        """Let every agent finish its turn in flight, then stop them."""
        self._stopping = True
        await asyncio.gather(*self._tasks)
        await self._client.aclose()
        return self.tally

    async def _agent(self, name: str) -> None:
        session = 0
        while not self._stopping:
            sid = f"{name}-s{session}"
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{sid}: fix the failing test, please."},
            ]
            for turn in range(self.turns):
                if self._stopping:
                    return
                reply = await self._turn(sid, turn, messages)
                if reply is None:
                    break  # a failed turn ends its session: the next one starts afresh
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": f"Tool output {turn}: 3 passed, 1 failed."},
                ]
            session += 1

    async def _turn(self, sid: str, turn: int, messages: list[dict[str, Any]]) -> str | None:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {**self.headers, "content-type": "application/json", "x-session-id": sid}
        try:
            result, text = await self._stream(sid, turn, body, headers)
        except (httpx.HTTPError, ValueError) as exc:
            await self._book(None, f"{sid} turn {turn}: {exc!r}")
            return None
        await self._book(result, None)
        return text

    async def _stream(
        self, sid: str, turn: int, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[TurnResult, str]:
        text: list[str] = []
        usage: dict[str, Any] | None = None
        finished = False
        async with self._client.stream(
            "POST", "/v1/chat/completions", content=orjson.dumps(body), headers=headers
        ) as r:
            if r.status_code != 200:
                raise ValueError(f"status {r.status_code}: {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    finished = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    raise ValueError(f"error event: {event['error']}")
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    text.append((choice.get("delta") or {}).get("content") or "")
        if not finished or usage is None:
            raise ValueError(f"stream ended without [DONE] or usage (usage={usage})")
        details = usage.get("prompt_tokens_details") or {}
        result = TurnResult(
            sid,
            turn,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            details.get("cached_tokens") or 0,
        )
        return result, "".join(text)

    async def _book(self, result: TurnResult | None, failure: str | None) -> None:
        async with self._changed:
            if result is not None:
                self.tally.turns.append(result)
            if failure is not None:
                self.tally.failures.append(failure)
            self._changed.notify_all()


@contextlib.asynccontextmanager
async def agent_load(base: str, **kw: Any) -> AsyncIterator[AgentLoad]:
    """An `AgentLoad` started on entry and stopped on exit (its tally stays readable)."""
    load = AgentLoad(base, **kw)
    load.start()
    try:
        yield load
    finally:
        await load.stop()
