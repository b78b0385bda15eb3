"""One agent replaying its turns in order (the paper's A.3 rule).

Turn *i*'s messages are every earlier turn (its user message, the assistant's actual reply) and
this turn's user message, whose length `PromptSteer` picks so the prompt tracks the trace. Each
turn after the first waits its `tool_s` (× the run's scale) after the previous reply ended. The
agent stops at its first failed request: later turns would extend a context it never got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from loadtest.replay.chat_request import Endpoint, TurnOutcome, TurnRequest, send_turn
from loadtest.replay.prompt_text import PromptSteer, user_text
from loadtest.trace import AgentTrace


@dataclass(slots=True)
class AgentRecord:
    """How one agent's replay went (times on the run's clock)."""

    agent: str
    turns: int
    """Turns it was to replay."""
    done: int = 0
    """Turns that succeeded (in order: the first failure stops the agent)."""
    start_s: float | None = None
    end_s: float | None = None
    error: str | None = None

    @property
    def jct_s(self) -> float | None:
        """First send → last token, for an agent that finished every turn."""
        if self.error is not None or self.done < self.turns or self.start_s is None:
            return None
        return None if self.end_s is None else self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What every agent of a run shares."""

    client: httpx.AsyncClient
    endpoint: Endpoint
    model: str
    clock: Callable[[], float]
    slots: asyncio.Semaphore
    """Bounds the requests in flight (`--max-concurrency`)."""
    on_outcome: Callable[[TurnOutcome], None]
    seed: int = 0
    tool_latency_scale: float = 1.0
    retry_shed: int = 0

    async def send(self, req: TurnRequest) -> TurnOutcome:
        """One turn, retried after `Retry-After` while the server sheds it and retries remain;
        a retried turn keeps its first send time, so its TTFT includes the wait."""
        sent_at: float | None = None
        attempt = 0
        while True:
            async with self.slots:
                outcome = await send_turn(self.client, self.endpoint, req, self.clock, sent_at)
            if outcome.retry_after_s is None or attempt >= self.retry_shed:
                return outcome
            attempt += 1
            sent_at = outcome.sample.sent_at
            await asyncio.sleep(outcome.retry_after_s)


async def replay_agent(agent: AgentTrace, agent_id: str, ctx: AgentContext) -> AgentRecord:
    """Replay `agent`'s turns under the id `agent_id` (its session id); never raises for a
    failed request (it is recorded, and the agent stops)."""
    record = AgentRecord(agent_id, len(agent.turns))
    steer = PromptSteer()
    messages: list[dict[str, str]] = []
    for index, turn in enumerate(agent.turns):
        if index and turn.tool_s and ctx.tool_latency_scale:
            await asyncio.sleep(turn.tool_s * ctx.tool_latency_scale)
        words = steer.words(turn.append)
        messages.append({"role": "user", "content": user_text(ctx.seed, agent_id, index, words)})
        req = TurnRequest(agent_id, index, ctx.model, tuple(messages), turn.output)
        outcome = await ctx.send(req)
        ctx.on_outcome(outcome)
        sample = outcome.sample
        if record.start_s is None:
            record.start_s = sample.sent_at
        if not sample.ok:
            record.error = sample.error or "unfinished"
            break
        record.done += 1
        record.end_s = sample.end_at
        steer.observe(
            turn.append, turn.output, words, outcome.reported_prompt, sample.output_tokens
        )
        messages.append({"role": "assistant", "content": outcome.reply})
    return record
