"""The session store contract: every implementation behaves as the in-process store does.

Records are compared field by field with `apply_commit` applied to the same commits, so the
Redis store's server-side merge cannot drift from the in-process one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from session.failover_store import FailoverSessionStore
from session.memory_store import MemorySessionStore, apply_commit
from session.record import (
    CHECKPOINT_BYTES,
    ChainTip,
    Checkpoint,
    SessionRecord,
    TurnCommit,
    TurnFacts,
    thin_checkpoints,
    unpack_checkpoints,
)
from session.redis_store import RedisSessionStore
from session.store import SessionStore, StoreLimits

TENANT = "acme"
_ticks = itertools.count(1)


def _checkpoints(count: int) -> bytes:
    return b"".join(
        Checkpoint(i, 40 * i, os.urandom(8), os.urandom(16)).pack() for i in range(count)
    )


def make_turn(
    session_id: str | None = None,
    tenant: str | None = None,
    *,
    root: bytes | None = None,
    previous: TurnCommit | None = None,
    checkpoints: int = 3,
    **changes: object,
) -> TurnCommit:
    """A turn with fresh random digests; `previous` makes it that turn's successor (its tip
    replaced, its session and root kept, its checkpoints plus one). `at` grows with each turn."""
    at = time.time() + next(_ticks) * 1e-3
    if session_id is None:
        session_id = previous.session_id if previous else "s1"
    if tenant is None:
        tenant = previous.tenant if previous else TENANT
    chain = previous.checkpoints + _checkpoints(1) if previous else _checkpoints(checkpoints)
    count = previous.tip.messages + 2 if previous else 2
    tip = ChainTip(count, 100 * count, os.urandom(16), 30 * count, os.urandom(16), os.urandom(6))
    turn = TurnCommit(
        tenant=tenant,
        session_id=session_id,
        model="tiny",
        parent=None,
        tip=tip,
        checkpoints=chain,
        replaced_tip=previous.tip.digest if previous else None,
        root=root or (previous.root if previous else os.urandom(8)),
        prompt_tokens=30 * count,
        output_tokens=12,
        chars=400,
        hashed_tokens=100,
        prefill="prefill-0",
        decode="decode-1",
        facts=TurnFacts(17, 13, 12, 0.05, 0.01, at),
    )
    return replace(turn, **changes) if changes else turn  # type: ignore[arg-type]


def expected(*turns: TurnCommit, limits: StoreLimits | None = None) -> SessionRecord:
    record = None
    for turn in turns:
        record = apply_commit(record, turn, limits or StoreLimits())
    assert record is not None
    return record


async def wait_for(condition: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)  # a poll interval


MakeStore = Callable[..., SessionStore]


@pytest.fixture(params=["memory", "redis", "failover"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(kind: str, redis_url: str) -> AsyncIterator[MakeStore]:
    made: list[SessionStore] = []

    def make(
        limits: StoreLimits | None = None, clock: Callable[[], float] = time.time
    ) -> SessionStore:
        limits = limits or StoreLimits()
        store: SessionStore
        if kind == "memory":
            store = MemorySessionStore(limits, clock)
        elif kind == "redis":
            store = RedisSessionStore(redis_url, limits)
        else:
            store = FailoverSessionStore(
                RedisSessionStore(redis_url, limits), MemorySessionStore(limits)
            )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def store(make_store: MakeStore) -> SessionStore:
    return make_store()


async def test_commit_creates_the_record(store: SessionStore) -> None:
    turn = make_turn(parent="p-session")
    await store.commit(turn)
    record = await store.get(TENANT, "s1")
    assert record == expected(turn)
    assert (record.turns, record.created, record.parent) == (1, turn.facts.at, "p-session")


async def test_second_commit_updates_and_moves_the_tip(store: SessionStore) -> None:
    first = make_turn()
    second = make_turn(previous=first, parent="ignored", prefill=None, decode="", model="m2")
    await store.commit(first)
    await store.commit(second)
    record = await store.get(TENANT, "s1")
    assert record == expected(first, second)
    assert record.turns == 2 and record.recent == (first.facts, second.facts)
    assert (record.parent, record.last_prefill) == (None, "prefill-0")
    assert (record.last_decode, record.model) == ("decode-1", "m2")
    assert (record.created, record.last_seen) == (first.facts.at, second.facts.at)

    gone = await store.resolve(TENANT, None, [first.tip.digest], None)
    assert gone.record is None
    offered = [os.urandom(16), os.urandom(16), second.tip.digest, first.tip.digest]
    found = await store.resolve(TENANT, None, offered, None)
    assert found.record == record and found.tip_index == 2 and found.related == ()


@pytest.mark.parametrize("name", ["named", "", "with: colon, spaces and ü"])
async def test_named_resolve(store: SessionStore, name: str) -> None:
    turn = make_turn(name)
    await store.commit(turn)
    found = await store.resolve(TENANT, name, [os.urandom(16)], turn.root)
    assert found.record == expected(turn)
    assert (found.tip_index, found.related) == (None, ())


async def test_unknown_name_gives_related_sessions_newest_first(make_store: MakeStore) -> None:
    store = make_store(StoreLimits(max_related=3))
    root = os.urandom(8)
    turns = [make_turn(f"r{i}", root=root) for i in range(5)]
    for turn in turns:
        await store.commit(turn)
    await store.commit(make_turn("elsewhere"))

    for name, tips in (("unknown", []), (None, [os.urandom(16)])):
        found = await store.resolve(TENANT, name, tips, root)
        assert found.record is None and found.tip_index is None
        assert [r.id for r in found.related] == ["r4", "r3", "r2"]
        assert found.related[0] == expected(turns[4])
    assert (await store.resolve(TENANT, "unknown", [], None)).related == ()


async def test_related_skips_deleted_sessions(make_store: MakeStore) -> None:
    store = make_store(StoreLimits(max_related=3))
    root = os.urandom(8)
    for i in range(3):
        await store.commit(make_turn(f"r{i}", root=root))
    assert await store.delete(TENANT, "r1")
    found = await store.resolve(TENANT, "unknown", [], root)
    assert [r.id for r in found.related] == ["r2", "r0"]


@pytest.mark.parametrize(
    ("tenant_a", "tenant_b", "id_a", "id_b"),
    [("a", "b", "s", "s"), ("a:b", "a", "c", "b:c"), ("t ü", "t", "x y", "ü x y")],
)
async def test_tenants_never_cross(
    store: SessionStore, tenant_a: str, tenant_b: str, id_a: str, id_b: str
) -> None:
    a = make_turn(id_a, tenant_a, model="model-a")
    b = make_turn(id_b, tenant_b, model="model-b", root=a.root, tip=replace(a.tip))
    await store.commit(a)
    await store.commit(b)
    assert await store.get(tenant_a, id_a) == expected(a)
    assert await store.get(tenant_b, id_b) == expected(b)
    if id_a != id_b:
        assert await store.get(tenant_a, id_b) is None
        assert await store.get(tenant_b, id_a) is None
    by_tip = await store.resolve(tenant_b, None, [a.tip.digest], None)
    assert by_tip.record == expected(b)
    related = await store.resolve(tenant_a, "nobody", [], a.root)
    assert [r.model for r in related.related] == ["model-a"]
    assert [r.id for r in (await store.list(tenant_a, None, 10)).data] == [id_a]

    assert await store.delete(tenant_a, id_a)
    assert await store.get(tenant_b, id_b) == expected(b)
    assert (await store.resolve(tenant_b, None, [a.tip.digest], None)).record is not None


async def test_delete(store: SessionStore) -> None:
    turn = make_turn()
    await store.commit(turn)
    assert await store.delete(TENANT, "s1") is True
    assert await store.get(TENANT, "s1") is None
    assert (await store.resolve(TENANT, None, [turn.tip.digest], None)).record is None
    assert (await store.resolve(TENANT, "s1", [], None)).record is None
    assert await store.delete(TENANT, "s1") is False


async def test_list_pages(store: SessionStore) -> None:
    ids = {f"sess-{i:02d}" for i in range(25)}
    for sid in sorted(ids):
        await store.commit(make_turn(sid))
    await store.commit(make_turn("other-tenant", "someone-else"))

    seen: set[str] = set()
    cursor: str | None = None
    for _ in range(10):
        page = await store.list(TENANT, cursor, 10)
        page_ids = [r.id for r in page.data]
        assert len(page_ids) <= 10 and len(set(page_ids)) == len(page_ids)
        assert all(r.tenant == TENANT for r in page.data)
        seen.update(page_ids)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert seen == ids


async def test_facts_are_bounded(make_store: MakeStore) -> None:
    limits = StoreLimits(max_turn_facts=3)
    store = make_store(limits)
    turns = [make_turn()]
    for _ in range(4):
        turns.append(make_turn(previous=turns[-1]))
    for turn in turns:
        await store.commit(turn)
    record = await store.get(TENANT, "s1")
    assert record == expected(*turns, limits=limits)
    assert record.recent == tuple(t.facts for t in turns[-3:]) and record.turns == 5


async def test_checkpoints_are_thinned(make_store: MakeStore) -> None:
    limits = StoreLimits(max_checkpoints=8)
    store = make_store(limits)
    turn = make_turn(checkpoints=21)
    await store.commit(turn)
    record = await store.get(TENANT, "s1")
    assert record.checkpoints == thin_checkpoints(turn.checkpoints, 8)
    assert len(record.checkpoints) <= 8 * CHECKPOINT_BYTES
    assert record.checkpoint_list()[-4:] == list(unpack_checkpoints(turn.checkpoints))[-4:]


async def test_idle_sessions_expire(kind: str, make_store: MakeStore, redis_url: str) -> None:
    now = [time.time()]
    store = make_store(StoreLimits(idle_ttl_s=1.0), clock=lambda: now[0])
    turn = make_turn(facts=replace(make_turn().facts, at=now[0]))
    await store.commit(turn)
    assert (await store.get(TENANT, "s1")) is not None

    if kind == "memory":
        now[0] += 1.5
    else:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await wait_for(lambda: _no_keys(client))
        finally:
            await client.aclose()
    assert await store.get(TENANT, "s1") is None
    found = await store.resolve(TENANT, None, [turn.tip.digest], turn.root)
    assert found.record is None and found.related == ()


async def _no_keys(client: aioredis.Redis) -> bool:
    return not await client.keys("*")


async def test_concurrent_commits_all_count(make_store: MakeStore) -> None:
    limits = StoreLimits(max_turn_facts=8)
    store = make_store(limits)
    root = os.urandom(8)
    turns = [make_turn(root=root) for _ in range(20)]
    await asyncio.gather(*(store.commit(t) for t in turns))
    record = await store.get(TENANT, "s1")
    assert record.turns == 20
    assert record.chars == sum(t.chars for t in turns)
    assert len(record.recent) == 8
    by_tip = await store.resolve(TENANT, None, [t.tip.digest for t in turns], None)
    assert by_tip.record is not None and turns[by_tip.tip_index].tip == record.tip
