"""A session store that survives its primary (Redis) going away.

Sessions are an optimisation (cache affinity, prefix reuse), never a reason to fail a request:
when the primary raises `SessionStoreError`, the call is served by an in-process
`MemorySessionStore` and the primary is left alone for `retry_interval_s`, so an outage costs
one failed round trip per interval instead of one per call. One warning per outage, one info
line when the primary answers again.

Sessions begun or continued during an outage live in the fallback. After recovery, a resolve or
get that finds nothing in the primary consults the fallback, and the session's next commit
carries its history into the primary (as the commit's `seed`) and leaves the fallback.
Listing shows the primary's sessions only while it is up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from session.errors import SessionStoreError
from session.memory_store import MemorySessionStore
from session.record import Resolution, SessionRecord, TurnCommit
from session.store import SessionPage, SessionStore

__all__ = ["FailoverSessionStore"]

log = logging.getLogger("session.failover")

_T = TypeVar("_T")


class FailoverSessionStore:
    """`primary` while it answers, `fallback` while it does not; never raises
    `SessionStoreError`."""

    def __init__(
        self,
        primary: SessionStore,
        fallback: MemorySessionStore,
        *,
        retry_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}+fallback"
        self.retry_interval_s = retry_interval_s
        self._clock = clock
        self.degraded = False
        """The primary failed and has not answered since."""
        self.failovers = 0
        """Outages seen."""
        self.fallback_calls = 0
        """Calls served by the fallback because the primary was down."""
        self._down_until = 0.0
        self._down_since = 0.0

    async def _route(
        self,
        on_primary: Callable[[], Awaitable[_T]],
        on_fallback: Callable[[], Awaitable[_T]],
    ) -> _T:
        """Call the primary unless it is resting; on failure mark it down and use the fallback."""
        if self.degraded and self._clock() < self._down_until:
            self.fallback_calls += 1
            return await on_fallback()
        try:
            result = await on_primary()
        except SessionStoreError as exc:
            self._mark_down(exc)
            self.fallback_calls += 1
            return await on_fallback()
        if self.degraded:
            self.degraded = False
            log.info(
                "session store %s recovered after %.1fs",
                self.primary.name,
                self._clock() - self._down_since,
            )
        return result

    def _mark_down(self, exc: SessionStoreError) -> None:
        now = self._clock()
        self._down_until = now + self.retry_interval_s
        if self.degraded:
            return
        self.degraded = True
        self._down_since = now
        self.failovers += 1
        log.warning(
            "session store %s unavailable (%s); serving sessions from the in-process store, "
            "retrying every %.1fs",
            self.primary.name,
            exc,
            self.retry_interval_s,
        )

    async def resolve(
        self,
        tenant: str,
        session_id: str | None,
        tip_digests: Sequence[bytes],
        root: bytes | None,
    ) -> Resolution:
        async def on_primary() -> Resolution:
            found = await self.primary.resolve(tenant, session_id, tip_digests, root)
            if found.record is not None or not len(self.fallback):
                return found
            local = await self.fallback.resolve(tenant, session_id, tip_digests, root)
            if local.record is not None or not found.related:
                return local
            return found

        return await self._route(
            on_primary, lambda: self.fallback.resolve(tenant, session_id, tip_digests, root)
        )

    async def commit(self, turn: TurnCommit, *, seed: SessionRecord | None = None) -> None:
        async def on_primary() -> None:
            kept = (
                await self.fallback.get(turn.tenant, turn.session_id)
                if len(self.fallback)
                else None
            )
            await self.primary.commit(turn, seed=kept or seed)
            if kept is not None:
                await self.fallback.delete(turn.tenant, turn.session_id)

        await self._route(on_primary, lambda: self.fallback.commit(turn, seed=seed))

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        async def on_primary() -> SessionRecord | None:
            record = await self.primary.get(tenant, session_id)
            if record is None and len(self.fallback):
                record = await self.fallback.get(tenant, session_id)
            return record

        return await self._route(on_primary, lambda: self.fallback.get(tenant, session_id))

    async def delete(self, tenant: str, session_id: str) -> bool:
        async def on_primary() -> bool:
            in_primary = await self.primary.delete(tenant, session_id)
            return await self.fallback.delete(tenant, session_id) or in_primary

        return await self._route(on_primary, lambda: self.fallback.delete(tenant, session_id))

    async def list(self, tenant: str, cursor: str | None, limit: int) -> SessionPage:
        return await self._route(
            lambda: self.primary.list(tenant, cursor, limit),
            lambda: self.fallback.list(tenant, cursor, limit),
        )

    async def close(self) -> None:
        try:
            await self.primary.close()
        finally:
            await self.fallback.close()
