"""What only the Redis store has: round trips, key TTLs, SCAN cursors, outages and restarts."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.embedded_redis import RedisServer
from session.errors import SessionStoreError
from session.failover_store import FailoverSessionStore
from session.memory_store import MemorySessionStore
from session.redis_store import RedisSessionStore
from session.store import StoreLimits
from tests.session.test_store_contract import TENANT, expected, make_turn


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisSessionStore]:
    store = RedisSessionStore(redis_url, StoreLimits(idle_ttl_s=60.0))
    yield store
    await store.close()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private server, for tests that kill or restart it."""
    server = RedisServer().start()
    yield server
    server.stop()


async def test_one_round_trip_per_call(store: RedisSessionStore) -> None:
    first = make_turn()
    steps = [
        lambda: store.resolve(TENANT, None, [os.urandom(16), os.urandom(16)], first.root),
        lambda: store.commit(first),
        lambda: store.resolve(TENANT, None, [first.tip.digest], first.root),
        lambda: store.commit(make_turn(previous=first)),
        lambda: store.resolve(TENANT, "s1", [], None),
        lambda: store.get(TENANT, "s1"),
        lambda: store.delete(TENANT, "s1"),
    ]
    for step in steps:
        before = store.round_trips
        await step()
        assert store.round_trips == before + 1


async def test_every_key_has_the_idle_ttl(store: RedisSessionStore, redis_url: str) -> None:
    first = make_turn()
    await store.commit(first)
    await store.commit(make_turn(previous=first))
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = await client.keys("*")
        assert len(keys) == 4  # record, facts, tip index, root set
        for key in keys:
            assert 0 < await client.pttl(key) <= 60_000, key
    finally:
        await client.aclose()


async def test_list_resumes_inside_and_across_scan_batches(store: RedisSessionStore) -> None:
    ids = {f"s{i}" for i in range(260)}
    for sid in ids:
        await store.commit(make_turn(sid))
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = await store.list(TENANT, cursor, 7)
        assert 1 <= len(page.data) <= 7 or page.next_cursor is None
        seen += [r.id for r in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None and set(seen) == ids  # a rehash under way may repeat a few (SCAN)
    restart = await store.list(TENANT, "not a cursor", 5)
    assert len(restart.data) == 5


async def test_script_reloaded_after_script_flush(store: RedisSessionStore, redis_url: str) -> None:
    turn = make_turn()
    await store.commit(turn)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    assert await store.get(TENANT, "s1") == expected(turn)
    await store.commit(make_turn(previous=turn))
    assert (await store.get(TENANT, "s1")).turns == 2


async def test_script_survives_a_restart(own_server: RedisServer) -> None:
    """The restarted server knows no scripts (NOSCRIPT → reloaded) and the pooled connections
    it broke are replaced without failing the call."""
    store = RedisSessionStore(own_server.url)
    try:
        await store.commit(make_turn("before"))
        own_server.stop()
        own_server.start()
        assert await _scripts_known(own_server.url, store) == [False]
        turn = make_turn("after")
        await store.commit(turn)
        assert await _scripts_known(own_server.url, store) == [True]
        assert await store.get(TENANT, "after") == expected(turn)
        assert await store.get(TENANT, "before") is None  # nothing is persisted
    finally:
        await store.close()


async def _scripts_known(url: str, store: RedisSessionStore) -> list[bool]:
    client = aioredis.Redis.from_url(url)
    try:
        return list(await client.script_exists(store._commit.sha))
    finally:
        await client.aclose()


async def test_killed_redis_fails_fast(own_server: RedisServer) -> None:
    store = RedisSessionStore(own_server.url, timeout_s=0.5)
    try:
        await store.commit(make_turn())
        own_server.stop()
        calls = (lambda: store.resolve(TENANT, "s1", [], None), lambda: store.commit(make_turn()))
        for call in calls:
            started = time.monotonic()
            with pytest.raises(SessionStoreError) as raised:
                await call()
            assert time.monotonic() - started < 1.0
            assert isinstance(raised.value.__cause__, (RedisError, OSError))
    finally:
        await store.close()


async def test_hung_redis_times_out(own_server: RedisServer) -> None:
    store = RedisSessionStore(own_server.url, timeout_s=0.2)
    assert own_server.proc is not None
    try:
        await store.commit(make_turn())
        os.kill(own_server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SessionStoreError):
            await store.get(TENANT, "s1")
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(own_server.proc.pid, signal.SIGCONT)
        await store.close()


async def test_failover_serves_through_an_outage_and_recovers(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    limits = StoreLimits()
    primary = RedisSessionStore(own_server.url, limits, timeout_s=0.2)
    store = FailoverSessionStore(
        primary,
        MemorySessionStore(limits),
        retry_interval_s=1.0,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.INFO, logger="session.failover")
    try:
        await store.commit(make_turn("up"))
        assert not store.degraded
        own_server.stop()

        first = make_turn("outage")
        await store.commit(first)
        assert store.degraded and store.failovers == 1
        tried = primary.round_trips
        second = make_turn(previous=first)
        await store.commit(second)
        found = await store.resolve(TENANT, None, [second.tip.digest], None)
        assert found.record == expected(first, second) and found.tip_index == 0
        assert primary.round_trips == tried  # left alone within the interval
        now[0] += 1.5  # the primary is tried again, and is still down
        assert await store.get(TENANT, "outage") == expected(first, second)
        assert store.degraded and store.failovers == 1 and store.fallback_calls == 4
        assert primary.round_trips == tried + 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].name == "session.failover"

        own_server.start()
        now[0] += 1.5
        assert (await store.resolve(TENANT, "outage", [], None)).record == expected(first, second)
        assert not store.degraded
        assert any("recovered" in r.getMessage() for r in caplog.records)
        third = make_turn(previous=second)
        await store.commit(third)
        assert await primary.get(TENANT, "outage") == expected(first, second, third)
        assert await store.fallback.get(TENANT, "outage") is None
        assert store.failovers == 1 and store.fallback_calls == 4
    finally:
        await store.close()
