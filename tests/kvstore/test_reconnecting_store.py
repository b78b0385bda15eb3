"""A store that cannot be opened yet answers misses, retries on a clock, then passes through."""

from __future__ import annotations

import asyncio

from kvstore.block import encode_block
from kvstore.embedded_store import EmbeddedKVStore
from kvstore.errors import StoreUnavailable
from kvstore.reconnecting_store import ReconnectingStore
from kvstore.store import KVStore

KEY = bytes(range(16))


async def test_misses_until_the_backend_opens_then_passes_through() -> None:
    now = [0.0]
    attempts: list[float] = []
    backend = EmbeddedKVStore(1 << 20)

    async def opener() -> KVStore:
        attempts.append(now[0])
        if len(attempts) < 3:
            raise StoreUnavailable("not yet")
        return backend

    store = ReconnectingStore("test", opener, retry_s=1.0, clock=lambda: now[0])
    value = encode_block(KEY, 64, 100)

    async def settle() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    try:
        assert await store.put([(KEY, value)]) == 0  # first attempt starts, fails
        await settle()
        assert await store.get([KEY]) == [None] and await store.prefix_blocks([KEY]) == 0
        await settle()
        assert attempts == [0.0]  # no retry before retry_s
        stats = await store.stats()
        assert not stats.available and stats.errors == 3
        now[0] = 1.5
        assert await store.exists([KEY]) == [False]  # second attempt, fails
        await settle()
        now[0] = 3.0
        await store.exists([KEY])  # third attempt, opens
        await settle()
        assert attempts == [0.0, 1.5, 3.0]
        assert await store.put([(KEY, value)]) == 1
        assert await store.get([KEY]) == [value]
        assert (await store.stats()).available
    finally:
        await store.close()
