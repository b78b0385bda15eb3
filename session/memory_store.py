"""The in-process session store: the embedded default, and the fallback while Redis is away.

Bounded by `max_sessions` (least recently used evicted first) and `idle_ttl_s`; the tip index
and the per-root sets are bounded with it (an evicted session takes its tip entry along, root
sets keep at most `max_related` ids and are pruned of the departed when read).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace

from session.record import Resolution, SessionRecord, TurnCommit, thin_checkpoints
from session.store import SessionPage, StoreLimits

_Key = tuple[str, str]


def apply_commit(
    record: SessionRecord | None, turn: TurnCommit, limits: StoreLimits
) -> SessionRecord:
    """The record after `turn`: shared by the stores that merge in-process."""
    now = turn.facts.at
    if record is None:
        record = SessionRecord(
            id=turn.session_id,
            tenant=turn.tenant,
            model=turn.model,
            created=now,
            last_seen=now,
            turns=0,
            prompt_tokens=0,
            output_tokens=0,
            chars=0,
            hashed_tokens=0,
            last_prefill=None,
            last_decode=None,
            parent=turn.parent,
            tip=turn.tip,
            checkpoints=b"",
            recent=(),
        )
    recent = (*record.recent, turn.facts)[-limits.max_turn_facts :]
    return replace(
        record,
        model=turn.model,
        last_seen=now,
        turns=record.turns + 1,
        prompt_tokens=turn.prompt_tokens,
        output_tokens=turn.output_tokens,
        chars=record.chars + turn.chars,
        hashed_tokens=record.hashed_tokens + turn.hashed_tokens,
        last_prefill=turn.prefill or record.last_prefill,
        last_decode=turn.decode or record.last_decode,
        tip=turn.tip,
        checkpoints=thin_checkpoints(turn.checkpoints, limits.max_checkpoints),
        recent=recent,
    )


class MemorySessionStore:
    name = "memory"

    def __init__(
        self, limits: StoreLimits | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.limits = limits or StoreLimits()
        self._clock = clock
        self._sessions: OrderedDict[_Key, SessionRecord] = OrderedDict()
        self._tips: dict[tuple[str, bytes], str] = {}
        self._roots: OrderedDict[tuple[str, bytes], OrderedDict[str, None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        """Drop idle sessions from the cold end, then the excess over the bound."""
        horizon = self._clock() - self.limits.idle_ttl_s
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if oldest.last_seen >= horizon and len(self._sessions) <= self.limits.max_sessions:
                break
            self._drop(key)

    def _drop(self, key: _Key) -> SessionRecord | None:
        record = self._sessions.pop(key, None)
        if record is not None and self._tips.get((key[0], record.tip.digest)) == key[1]:
            del self._tips[(key[0], record.tip.digest)]
        return record

    def _live(self, key: _Key, touch: bool = True) -> SessionRecord | None:
        """The record if it has not idled out; `touch` marks it recently used."""
        record = self._sessions.get(key)
        if record is None:
            return None
        if record.last_seen < self._clock() - self.limits.idle_ttl_s:
            self._drop(key)
            return None
        if touch:
            self._sessions.move_to_end(key)
        return record

    def _related(self, tenant: str, root: bytes | None) -> tuple[SessionRecord, ...]:
        ids = self._roots.get((tenant, root)) if root is not None else None
        if not ids:
            return ()
        out: list[SessionRecord] = []
        for sid in reversed(list(ids)):
            record = self._live((tenant, sid), touch=False)  # a candidate, not a use
            if record is None:
                del ids[sid]
            elif len(out) < self.limits.max_related:
                out.append(record)
        return tuple(out)

    async def resolve(
        self,
        tenant: str,
        session_id: str | None,
        tip_digests: Sequence[bytes],
        root: bytes | None,
    ) -> Resolution:
        if session_id is not None:
            record = self._live((tenant, session_id))
            if record is not None:
                return Resolution(record=record)
        else:
            for i, digest in enumerate(tip_digests):
                sid = self._tips.get((tenant, digest))
                record = self._live((tenant, sid)) if sid is not None else None
                if record is not None:
                    return Resolution(record=record, tip_index=i)
        return Resolution(related=self._related(tenant, root))

    async def commit(self, turn: TurnCommit, *, seed: SessionRecord | None = None) -> None:
        key = (turn.tenant, turn.session_id)
        old = self._live(key)
        if old is None and seed is not None and (seed.tenant, seed.id) == key:
            old = seed
        if old is not None and self._tips.get((turn.tenant, old.tip.digest)) == turn.session_id:
            del self._tips[(turn.tenant, old.tip.digest)]
        record = apply_commit(old, turn, self.limits)
        self._sessions[key] = record
        self._sessions.move_to_end(key)
        self._tips[(turn.tenant, turn.tip.digest)] = turn.session_id
        ids = self._roots.setdefault((turn.tenant, turn.root), OrderedDict())
        ids[turn.session_id] = None
        ids.move_to_end(turn.session_id)
        while len(ids) > self.limits.max_related:
            ids.popitem(last=False)
        self._roots.move_to_end((turn.tenant, turn.root))
        while len(self._roots) > self.limits.max_sessions:
            self._roots.popitem(last=False)
        self._expire()

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        return self._live((tenant, session_id))

    async def delete(self, tenant: str, session_id: str) -> bool:
        return self._drop((tenant, session_id)) is not None

    async def list(self, tenant: str, cursor: str | None, limit: int) -> SessionPage:
        self._expire()
        start = int(cursor) if cursor and cursor.isdigit() else 0
        mine = [r for (t, _), r in reversed(self._sessions.items()) if t == tenant]
        page = mine[start : start + limit]
        more = start + limit < len(mine)
        return SessionPage(tuple(page), str(start + limit) if more else None)

    async def close(self) -> None:
        self._sessions.clear()
        self._tips.clear()
        self._roots.clear()
