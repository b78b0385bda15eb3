"""The backends the KV store contract runs against: add one to `BACKENDS`."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kvstore.embedded_store import EmbeddedKVStore
from kvstore.http_store import HTTPKVStore
from kvstore.store import KVStore
from kvstore.store_server import serving
from tests.kvstore.contract import DEFAULT_CAPACITY, REQUEST_KEYS, Backend, Sizing


@contextlib.asynccontextmanager
async def embedded(sizing: Sizing) -> AsyncIterator[KVStore]:
    store = EmbeddedKVStore(sizing.capacity_bytes)
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def embedded_disk(sizing: Sizing) -> AsyncIterator[KVStore]:
    """Memory for two of the largest values: nearly every block goes through the disk tier."""
    memory = 2 * sizing.largest_value
    store = EmbeddedKVStore(
        memory,
        disk_dir=sizing.scratch / "disk",
        disk_capacity_bytes=sizing.capacity_bytes - memory,
    )
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def http(sizing: Sizing) -> AsyncIterator[KVStore]:
    """A real store server in this event loop, on a free loopback port, and its client."""
    async with embedded(sizing) as served, serving(served) as url:
        client = HTTPKVStore(url, timeout_s=5.0, max_keys_per_request=REQUEST_KEYS)
        try:
            yield client
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def mooncake(sizing: Sizing) -> AsyncIterator[KVStore]:
    """A real `mooncake_master` per store (so pool-wide stats see only this test's blocks), and a
    client whose own segment holds them."""
    pytest.importorskip("mooncake.store", reason="no mooncake wheel for this platform")
    from kvstore.mooncake_master import MooncakeMaster
    from kvstore.mooncake_store import MooncakeKVStore

    master = MooncakeMaster().start()
    try:
        store = await MooncakeKVStore.connect(
            master.address,
            segment_bytes=max(sizing.capacity_bytes, 16 << 20),
            buffer_bytes=16 << 20,
            metrics=master.metrics_address,
            # Setup takes ~50 ms; the bound is for a master that never answers, and no contract
            # test waits on it, so it leaves room for a host that stalls for seconds (CI's).
            timeout_s=10.0,
        )
        try:
            yield store
        finally:
            await store.close()
    finally:
        master.stop()


BACKENDS: dict[str, Backend] = {
    "embedded": Backend(embedded, exact_lru=True),
    "embedded-disk": Backend(embedded_disk, exact_lru=True),
    "http": Backend(http, exact_lru=True),
    # Mooncake evicts by its own lease order, not an exact byte-bounded LRU.
    "mooncake": Backend(mooncake, exact_lru=False),
}

OpenStore = Callable[..., Awaitable[KVStore]]


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
async def open_store(backend: Backend, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores of the backend under test (`capacity_bytes`, all tiers); closes them all."""
    numbers = itertools.count()
    async with contextlib.AsyncExitStack() as stack:

        async def open_(capacity_bytes: int = DEFAULT_CAPACITY) -> KVStore:
            sizing = Sizing(tmp_path / f"store-{next(numbers)}", capacity_bytes)
            return await stack.enter_async_context(backend.open(sizing))

        yield open_


@pytest.fixture
async def store(open_store: OpenStore) -> KVStore:
    return await open_store()
