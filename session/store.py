"""The session store interface. Implementations: `MemorySessionStore` (in-process, the embedded
default), `RedisSessionStore` (shared by gateway replicas) and `FailoverSessionStore` (Redis, with
the in-process store while Redis is away). All pass `tests/session/test_store_contract.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from session.record import Resolution, SessionRecord, TurnCommit


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_sessions: int = 100_000
    """In-process store: sessions kept; the least recently used goes first."""
    idle_ttl_s: float = 4 * 3600.0
    """A session unused this long is forgotten (Redis: key TTL)."""
    max_checkpoints: int = 4096
    """Checkpoints kept per session; older ones are thinned (bounded chain per key)."""
    max_turn_facts: int = 32
    """Per-turn facts kept per session."""
    max_related: int = 8
    """Sessions remembered per first message, as fork and shared-prefix candidates."""


@dataclass(frozen=True, slots=True)
class SessionPage:
    data: tuple[SessionRecord, ...]
    next_cursor: str | None
    """Pass back as `cursor` for the next page; None on the last page."""


class SessionStore(Protocol):
    name: str

    async def resolve(
        self,
        tenant: str,
        session_id: str | None,
        tip_digests: Sequence[bytes],
        root: bytes | None,
    ) -> Resolution:
        """One round trip: the named session (or, without a name, the session whose tip digest
        is the first of `tip_digests` found); when there is none, up to `max_related` recent
        sessions of the tenant that share `root`, newest first."""
        ...

    async def commit(self, turn: TurnCommit, *, seed: SessionRecord | None = None) -> None:
        """Apply a finished turn atomically: create or update the record (turns + 1, facts
        appended and bounded, checkpoints thinned), move the tip index, add to the root set.

        `seed` is this session's record as another store kept it (the failover store's fallback
        during an outage): when this store has no record, the turn continues that history."""
        ...

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None: ...

    async def delete(self, tenant: str, session_id: str) -> bool:
        """End the session and drop its index entries; False if it did not exist."""
        ...

    async def list(self, tenant: str, cursor: str | None, limit: int) -> SessionPage:
        """The tenant's sessions, a page at a time (order is the store's own)."""
        ...

    async def close(self) -> None: ...
