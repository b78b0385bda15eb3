"""The KV store contract (`kvstore.store`), run against every backend of `conftest.BACKENDS`."""

from __future__ import annotations

import os

import pytest

from kvstore.block import verify_block
from kvstore.store import KVStore
from tests.kvstore.conftest import OpenStore
from tests.kvstore.contract import (
    BLOCK_BYTES,
    BLOCK_TOKENS,
    REQUEST_KEYS,
    Backend,
    blocks,
    chain,
)


@pytest.fixture
def exact_lru(backend: Backend) -> None:
    if not backend.exact_lru:
        pytest.skip("the backend is not a byte-bounded LRU with exact accounting")


async def test_put_get_round_trip(store: KVStore) -> None:
    items = blocks(chain(6))
    assert await store.put(items) == 6
    values = await store.get([key for key, _ in items])
    assert values == [value for _, value in items]
    for (key, _), value in zip(items, values, strict=True):
        assert value is not None and verify_block(key, value) == BLOCK_TOKENS


async def test_missing_keys(store: KVStore) -> None:
    stored, missing = chain(2), chain(2)
    await store.put(blocks(stored))
    assert await store.get(missing) == [None, None]
    assert await store.exists(missing) == [False, False]
    assert await store.prefix_blocks(missing) == 0
    mixed = [missing[0], stored[0], missing[1], stored[1]]
    assert [v is not None for v in await store.get(mixed)] == [False, True, False, True]
    assert await store.get([]) == [] and await store.exists([]) == []
    assert await store.prefix_blocks([]) == 0


async def test_exists_and_prefix_stop_at_a_gap(store: KVStore) -> None:
    keys = chain(7)
    await store.put(blocks(keys[:3] + keys[4:]))
    assert await store.exists(keys) == [True, True, True, False, True, True, True]
    assert await store.prefix_blocks(keys) == 3
    assert await store.prefix_blocks(keys[4:]) == 3
    assert await store.prefix_blocks(keys[:3]) == 3


async def test_remove(store: KVStore) -> None:
    keys = chain(4)
    await store.put(blocks(keys))
    assert await store.remove([keys[1], keys[3], *chain(1)]) == 2
    assert await store.exists(keys) == [True, False, True, False]
    assert await store.get([keys[1]]) == [None]
    assert await store.remove([keys[1]]) == 0
    assert await store.prefix_blocks(keys) == 1


async def test_clear(store: KVStore) -> None:
    keys = chain(5)
    await store.put(blocks(keys))
    assert await store.clear() == 5
    assert await store.exists(keys) == [False] * 5
    assert (await store.stats()).blocks == 0
    assert await store.clear() == 0
    assert await store.put(blocks(keys[:2])) == 2
    assert await store.prefix_blocks(keys) == 2


@pytest.mark.usefixtures("exact_lru")
async def test_eviction_takes_a_chains_tail_before_its_head(open_store: OpenStore) -> None:
    store = await open_store(8 * BLOCK_BYTES)
    keys = chain(12)
    assert await store.put(blocks(keys)) == 8  # what is stored once the batch is in
    assert await store.exists(keys) == [True] * 8 + [False] * 4
    assert await store.prefix_blocks(keys) == 8
    stats = await store.stats()
    assert (stats.blocks, stats.evictions) == (8, 4)
    assert stats.used_bytes + stats.disk_used_bytes == 8 * BLOCK_BYTES


@pytest.mark.usefixtures("exact_lru")
async def test_a_batch_cut_into_requests_still_keeps_its_head(open_store: OpenStore) -> None:
    keep = REQUEST_KEYS + 50
    store = await open_store(keep * 20)
    keys = chain(2 * REQUEST_KEYS)
    await store.put([(key, b"v" * 4 + key) for key in keys])  # 20 bytes each
    assert await store.prefix_blocks(keys) == keep
    assert (await store.stats()).blocks == keep
    assert await store.get(keys[keep - 1 : keep + 1]) == [b"v" * 4 + keys[keep - 1], None]


@pytest.mark.usefixtures("exact_lru")
async def test_get_refreshes_recency_and_exists_does_not(open_store: OpenStore) -> None:
    store = await open_store(4 * BLOCK_BYTES)
    a, b, c, d, e = chain(5)
    await store.put(blocks([a, b, c, d]))  # recency: a > b > c > d
    assert await store.get([d]) != [None]  # d > a > b > c
    assert await store.exists([c]) == [True]  # no change
    assert await store.prefix_blocks([c]) == 1  # no change
    await store.put(blocks([e]))  # c, the least recent, goes
    assert await store.exists([a, b, c, d, e]) == [True, True, False, True, True]


@pytest.mark.usefixtures("exact_lru")
async def test_a_value_larger_than_the_store_is_not_stored(open_store: OpenStore) -> None:
    store = await open_store(4 * BLOCK_BYTES)
    key, small = chain(2)
    assert await store.put([(key, os.urandom(8 * BLOCK_BYTES)), *blocks([small])]) == 1
    assert await store.exists([key, small]) == [False, True]


async def test_stats_move(store: KVStore) -> None:
    before = await store.stats()
    assert before.backend and before.available and before.errors == 0
    keys = chain(3)
    await store.put(blocks(keys))
    await store.get([keys[0], keys[2], *chain(1)])
    after = await store.stats()
    assert after.puts - before.puts == 3
    assert (after.gets - before.gets, after.hits - before.hits) == (3, 2)
    assert after.blocks - before.blocks == 3
    assert after.used_bytes + after.disk_used_bytes > before.used_bytes + before.disk_used_bytes
    assert after.errors == 0 and after.available


@pytest.mark.usefixtures("exact_lru")
async def test_stats_count_bytes_and_capacity(open_store: OpenStore) -> None:
    store = await open_store(16 * BLOCK_BYTES)
    await store.put(blocks(chain(5)))
    stats = await store.stats()
    assert stats.used_bytes + stats.disk_used_bytes == 5 * BLOCK_BYTES
    assert stats.capacity_bytes + stats.disk_capacity_bytes == 16 * BLOCK_BYTES
    assert (stats.blocks, stats.evictions) == (5, 0)


async def test_a_re_put_keeps_one_value_per_key(store: KVStore) -> None:
    items = blocks(chain(3))
    keys, values = [k for k, _ in items], [v for _, v in items]
    await store.put(items)
    before = await store.stats()
    assert await store.put(items) == 3
    assert await store.get(keys) == values
    other = b"another value of the same block"
    assert await store.put([(keys[1], other)]) == 1  # old or new: blocks are content-addressed
    assert (await store.get([keys[1]]))[0] in (values[1], other)
    after = await store.stats()
    assert after.blocks == before.blocks == 3


async def test_batches_larger_than_a_request(store: KVStore) -> None:
    count = 2 * REQUEST_KEYS + 88
    keys = chain(count)
    items = [(key, b"v" + key) for key in keys]
    assert await store.put(items) == count
    assert await store.exists(keys) == [True] * count
    assert await store.prefix_blocks(keys) == count
    assert await store.get(keys) == [value for _, value in items]
    cut = REQUEST_KEYS + 10
    assert await store.remove(keys[cut : cut + 1]) == 1
    assert await store.prefix_blocks(keys) == cut
    assert await store.remove(keys) == count - 1
