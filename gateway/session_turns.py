"""The session step of a chat turn: identify and hash it before dispatch, commit it after.

Owns the session store and the tracker; the routes call `begin` and pass `on_complete` to the
dispatcher. Commits run in the background so the client never waits for the store, and a turn
that does not finish (client gone, worker failed) is not committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engines.tokenizer import load_tokenizer
from gateway.errors import InvalidRequest
from gateway.pd_dispatch import Completed, OnComplete
from gateway.placement import PDPair
from gateway.prompt_tokens import TemplateTokens
from gateway.request_parsing import ParsedRequest
from gateway.settings import GatewaySettings, SessionConfig
from gateway.tenancy import tenant_of
from kvstore import block_key
from session.errors import InvalidSessionId
from session.identity import claimed_session
from session.memory_store import MemorySessionStore
from session.store import SessionStore, StoreLimits
from session.tracker import Prompt, SessionTracker, TrackerConfig, TurnOutcome, TurnPlan

log = logging.getLogger(__name__)


def build_store(config: SessionConfig) -> SessionStore:
    limits = StoreLimits(
        max_sessions=config.max_sessions,
        idle_ttl_s=config.idle_ttl_s,
        max_checkpoints=config.max_checkpoints,
        max_turn_facts=config.max_turn_facts,
    )
    memory = MemorySessionStore(limits)
    if not config.redis_url:
        return memory
    from session.failover_store import FailoverSessionStore
    from session.redis_store import RedisSessionStore

    redis = RedisSessionStore(config.redis_url, limits, timeout_s=config.redis_timeout_s)
    return FailoverSessionStore(redis, memory, retry_interval_s=config.redis_retry_s)


@dataclass(frozen=True, slots=True)
class Turn:
    plan: TurnPlan
    messages_json: bytes
    """The canonical messages JSON the plan was hashed from, reused for the upstream body."""


class SessionTurns:
    def __init__(self, tracker: SessionTracker) -> None:
        self.tracker = tracker
        # Commits in flight; each removes itself when done, so the set is bounded by load.
        self._commits: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> SessionTurns:
        config = settings.sessions
        renderer = TemplateTokens(load_tokenizer(settings.tokenizer or None))
        tracker_config = TrackerConfig(
            block_tokens=config.block_tokens,
            tip_candidates=config.tip_candidates,
            secret=config.secret.encode(),
        )
        return cls(SessionTracker(build_store(config), renderer, block_key, tracker_config))

    @property
    def store(self) -> SessionStore:
        return self.tracker.store

    def chain_root(self, headers: Mapping[str, str], model: str) -> bytes:
        """The root of the request's block keys: the tracker's, so workers name blocks alike."""
        return block_key.chain_root(self.tracker.config.secret, tenant_of(headers), model)

    async def begin(self, req: ParsedRequest, headers: Mapping[str, str]) -> Turn | None:
        """Identify and hash a chat turn; None for requests that carry no messages."""
        messages = req.body.get("messages")
        if req.path != "/v1/chat/completions" or not isinstance(messages, list):
            return None
        try:
            claimed = claimed_session(headers, req.body)
        except InvalidSessionId as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        tools = req.body.get("tools")
        prompt = Prompt(
            tenant=tenant_of(headers),
            model=req.model,
            claimed=claimed,
            messages=messages,
            canonical=orjson.dumps(messages),
            tools=tools if isinstance(tools, list) else None,
        )
        return Turn(await self.tracker.begin(prompt), prompt.canonical)

    def on_complete(self, plan: TurnPlan, started_at: float, pair: PDPair) -> OnComplete:
        """The dispatcher's callback that commits `plan` once the turn has finished."""

        def complete(done: Completed) -> None:
            outcome = _outcome(done, started_at, pair)
            task = asyncio.create_task(self._commit(plan, outcome))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

        return complete

    async def _commit(self, plan: TurnPlan, outcome: TurnOutcome) -> None:
        try:
            await self.tracker.finish(plan, outcome)
        except Exception:  # a lost commit costs a later turn its hits, never a request
            log.exception("could not commit a turn of session %s", plan.session_id)

    async def close(self) -> None:
        if self._commits:
            await asyncio.wait(self._commits, timeout=5.0)
        await self.store.close()


def _outcome(done: Completed, started_at: float, pair: PDPair) -> TurnOutcome:
    usage: dict[str, Any] = done.usage or {}
    output = usage.get("completion_tokens")
    output_tokens = output if isinstance(output, int) else 0
    ttft = tpot = None
    if done.first_chunk_at is not None:
        ttft = done.first_chunk_at - started_at
        if output_tokens > 1:
            tpot = (done.ended_at - done.first_chunk_at) / (output_tokens - 1)
    return TurnOutcome(
        output_tokens=output_tokens,
        ttft_s=ttft,
        tpot_s=tpot,
        prefill=pair.prefill.url,
        decode=pair.decode.url,
        at=time.time(),
    )
