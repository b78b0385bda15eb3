"""`MooncakeKVStore` against a real `mooncake_master` on a free loopback port.

Two clients share the pool: `owner` contributes a segment, `client` contributes none, so what
`client` puts lands in `owner`'s segment and every read by `client` crosses clients over the TCP
transport. The hazards of `reference/mooncake-notes.md` are reproduced with the real processes: a
reader's lease, a get batch larger than the staging buffer, a killed and restarted master, and a
killed storage node (repeated transfer failures).

Skipped only where the wheel has no build (the `mooncake` extra's marker is false); where the wheel
is installed, a master that cannot start fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from packaging.requirements import Requirement

from kvstore.block import encode_block, verify_block
from kvstore.block_key import chain_blocks, chain_root
from kvstore.errors import StoreUnavailable
from kvstore.mooncake_master import (
    MooncakeMaster,
    free_port,
    read_master_metrics,
    storage_node_command,
)
from kvstore.mooncake_store import MooncakeConfig, MooncakeKVStore

REPO = Path(__file__).resolve().parents[2]


def mooncake_expected() -> bool:
    """Whether the `mooncake` extra installs a wheel here (its marker, read from pyproject)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (spec,) = extras["optional-dependencies"]["mooncake"]
    marker = Requirement(spec).marker
    return marker is None or marker.evaluate()


pytestmark = [
    pytest.mark.skipif(not mooncake_expected(), reason="no Mooncake wheel for this platform"),
    pytest.mark.asyncio(loop_scope="module"),
]

BLOCK_TOKENS = 64
MIB = 1 << 20


def chain(count: int) -> list[bytes]:
    return chain_blocks(chain_root(os.urandom(8), "t", "m"), range(count * BLOCK_TOKENS), 64)


def blocks(keys: list[bytes], payload: int = 4096) -> list[tuple[bytes, bytes]]:
    return [(key, encode_block(key, BLOCK_TOKENS, payload)) for key in keys]


async def connect(master: MooncakeMaster, **knobs: Any) -> MooncakeKVStore:
    knobs = {"timeout_s": 1.0, **knobs}
    config = MooncakeConfig(master=master.address, metrics=master.metrics_address, **knobs)
    return await MooncakeKVStore.open(config)


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Poll `check` until it holds; how long that took. Fails past `within` seconds."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, f"not within {within}s"
        await asyncio.sleep(0.05)  # a poll interval, not a wait
    return time.monotonic() - start


@pytest.fixture(scope="module")
def master() -> Iterator[MooncakeMaster]:
    server = MooncakeMaster().start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(master: MooncakeMaster) -> AsyncIterator[tuple[MooncakeKVStore, MooncakeKVStore]]:
    owner = await connect(master, segment_bytes=64 * MIB, buffer_bytes=16 * MIB)
    client = await connect(master, segment_bytes=0, buffer_bytes=4 * MIB)
    try:
        yield owner, client
    finally:
        await asyncio.gather(owner.close(), client.close())


@pytest_asyncio.fixture(loop_scope="module")
async def owner(pool: tuple[MooncakeKVStore, MooncakeKVStore]) -> MooncakeKVStore:
    await pool[0].clear()
    return pool[0]


@pytest_asyncio.fixture(loop_scope="module")
async def client(pool: tuple[MooncakeKVStore, MooncakeKVStore]) -> MooncakeKVStore:
    return pool[1]


async def test_round_trip_across_clients(owner: MooncakeKVStore, client: MooncakeKVStore) -> None:
    items = blocks(chain(8))
    keys = [key for key, _ in items]
    before = await client.stats()
    assert await client.put(items) == 8
    for reader in (owner, client):
        values = await reader.get(keys)
        assert values == [value for _, value in items]
        assert all(
            verify_block(k, v) == BLOCK_TOKENS for k, v in zip(keys, values, strict=True) if v
        )
    after = await client.stats()
    assert (after.puts - before.puts, after.gets - before.gets, after.hits - before.hits) == (
        8,
        8,
        8,
    )
    assert after.blocks == 8 and after.used_bytes >= 8 * len(items[0][1])
    assert after.capacity_bytes == 64 * MIB  # the pool: only `owner` has a segment
    assert after.errors == before.errors and after.available


async def test_misses_are_not_errors(owner: MooncakeKVStore, client: MooncakeKVStore) -> None:
    stored, missing = chain(2), chain(2)
    await owner.put(blocks(stored))
    before = (await client.stats()).errors
    assert await client.get(missing) == [None, None]
    assert [v is not None for v in await client.get([missing[0], stored[0]])] == [False, True]
    assert await client.exists([*missing, *stored]) == [False, False, True, True]
    assert await client.prefix_blocks(missing) == 0
    assert await client.get([]) == [] and await client.exists([]) == []
    assert (await client.stats()).errors == before


async def test_prefix_stops_at_a_gap(owner: MooncakeKVStore, client: MooncakeKVStore) -> None:
    keys = chain(600)  # three chunks of exists: the gap is in the second
    await owner.put(blocks(keys[:300] + keys[301:], payload=256))
    assert await client.prefix_blocks(keys) == 300
    assert await client.prefix_blocks(keys[301:]) == 299
    assert (await client.exists(keys[299:302])) == [True, False, True]


async def test_remove_after_another_client_read(
    owner: MooncakeKVStore, client: MooncakeKVStore
) -> None:
    """A read grants the reader a 10 s lease; a plain remove is refused (-706) until it ends."""
    keys = chain(3)
    await owner.put(blocks(keys))
    assert None not in await client.get(keys)
    name = f"{owner.config.namespace}/{keys[0].hex()}"
    assert owner._client.remove(name, False) == -706  # the hazard, on the raw client
    assert await owner.remove([*keys, *chain(1)]) == 3
    assert await client.exists(keys) == [False] * 3
    assert await owner.remove(keys) == 0


async def test_values_mooncake_cannot_take_do_not_sink_their_batch(
    client: MooncakeKVStore,
) -> None:
    """An empty value, or one larger than the staging buffer, fails a whole put batch with -600
    and nothing of it is stored. The store does not send them: the rest is stored."""
    keys = chain(4)
    items = blocks(keys)
    too_big = b"x" * (client.config.buffer_bytes + 1)
    before = (await client.stats()).errors
    assert await client.put([items[0], (keys[1], b""), (keys[2], too_big), items[3]]) == 2
    assert await client.exists(keys) == [True, False, False, True]
    assert (await client.stats()).errors == before + 2


async def test_two_thousand_blocks_in_chunks(
    owner: MooncakeKVStore, client: MooncakeKVStore
) -> None:
    """2,000 × 4 KiB: 8 MiB through `client`'s 4 MiB buffer, so byte chunks as well as counts."""
    items = blocks(chain(2000))
    keys = [key for key, _ in items]
    assert await client.put(items) == 2000
    assert await client.prefix_blocks(keys) == 2000
    values = await client.get(keys)
    assert values == [value for _, value in items]
    assert await owner.get(keys[-3:]) == [value for _, value in items[-3:]]


async def test_a_get_batch_larger_than_the_buffer(
    master: MooncakeMaster, owner: MooncakeKVStore
) -> None:
    """A fresh client knows no value sizes: its first get batch (256 × 16 KiB = 4 MiB) overflows
    its 2 MiB buffer, where Mooncake answers `b''` for what does not fit. Nothing is lost."""
    items = blocks(chain(256), payload=16 << 10)
    assert await owner.put(items) == 256
    fresh = await connect(master, segment_bytes=0, buffer_bytes=2 * MIB)
    try:
        assert await fresh.get([key for key, _ in items]) == [value for _, value in items]
        assert (await fresh.stats()).errors == 0
    finally:
        await fresh.close()


async def test_no_master_is_a_clear_error_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="no Mooncake master"):
        await MooncakeKVStore.connect(f"127.0.0.1:{free_port()}", segment_bytes=0)
    assert time.monotonic() - start < 1.0  # setup() itself would retry for ~90 s


# -- failures: each test has its own master --------------------------------------------------


async def test_a_dead_master_costs_nothing_and_a_restart_recovers() -> None:
    master = MooncakeMaster().start()
    owner = await connect(master, segment_bytes=32 * MIB, buffer_bytes=8 * MIB)
    client = await connect(master, segment_bytes=0, buffer_bytes=8 * MIB)
    try:
        old = blocks(chain(4))
        old_keys = [key for key, _ in old]
        assert await client.put(old) == 4

        master.stop()
        durations = []
        for round_ in range(10):
            for call in (
                lambda: client.get(old_keys),
                lambda: client.exists(old_keys),
                lambda: client.prefix_blocks(old_keys),
                lambda: client.put(blocks(chain(2))),
            ):
                start = time.monotonic()
                answer = await call()
                durations.append(time.monotonic() - start)
                assert answer in ([None] * 4, [False] * 4, 0), answer
            if round_ < 9:
                await asyncio.sleep(0.1)
        stats = await client.stats()
        assert not stats.available and stats.errors >= len(durations) - 2
        assert max(durations) < 1.5, durations  # bounded by timeout_s even for the first call
        slow = [d for d in durations if d > 0.02]
        assert len(slow) <= 3, durations  # the rest: answered without calling the client

        master.start()  # same port, no keys: the metadata lived in the master's memory
        fresh = blocks(chain(4))

        async def round_trip() -> bool:
            values = [value for _, value in fresh]
            return (
                await client.put(fresh) == 4 and await client.get([k for k, _ in fresh]) == values
            )

        took = await eventually(round_trip, within=10.0)
        assert client.available and await client.exists(old_keys) == [False] * 4
        assert took < 10.0
    finally:
        await asyncio.gather(owner.close(), client.close())
        master.stop()


async def test_a_hung_master_times_out_and_callers_do_not_pile_up() -> None:
    """A stopped (not dead) master accepts connections and never answers: calls are bounded by
    `timeout_s`, and beyond `max_in_flight` they answer at once instead of queueing."""
    master = MooncakeMaster().start()
    client = await connect(
        master, segment_bytes=16 * MIB, buffer_bytes=4 * MIB, timeout_s=0.5, max_in_flight=2
    )
    try:
        items = blocks(chain(4))
        keys = [key for key, _ in items]
        assert await client.put(items) == 4
        assert master.proc is not None
        os.kill(master.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            answers = await asyncio.gather(*(client.exists(keys) for _ in range(10)))
            assert time.monotonic() - start < 1.0
            assert answers == [[False] * 4] * 10 and not client.available
            assert (await client.stats()).errors >= 10
        finally:
            os.kill(master.proc.pid, signal.SIGCONT)

        async def back() -> bool:
            return await client.exists(keys) == [True] * 4

        await eventually(back, within=10.0)
    finally:
        await client.close()
        master.stop()


@contextlib.contextmanager
def storage_node(master: MooncakeMaster) -> Iterator[subprocess.Popen[bytes]]:
    """A 32 MiB storage node in its own process (the wheel's `mooncake_client`)."""
    cmd = storage_node_command(master.address, port=free_port(), segment_bytes=32 * MIB)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def pool_capacity(master: MooncakeMaster) -> float:
    metrics = await read_master_metrics(master.metrics_address) or {}
    return metrics.get("master_total_capacity_bytes", 0.0)


async def test_a_dead_storage_node_rebuilds_the_client_once() -> None:
    """The node holding the data dies: reads find keys they cannot fetch and puts answer -800
    until the master drops the node (`client_ttl`). After three transfer failures in a row the
    store rebuilds its client (once: rebuilding more often only churns), and works again as
    soon as a new node joins."""
    master = MooncakeMaster(extra_args=["--client_ttl=5"]).start()
    client = await connect(
        master, segment_bytes=0, buffer_bytes=8 * MIB, backoff_s=0.2, timeout_s=2.5
    )
    try:
        items = blocks(chain(16))
        keys = [key for key, _ in items]
        with storage_node(master) as node:
            await eventually(lambda: _positive(pool_capacity(master)), within=10.0)
            assert await client.put(items) == 16
            assert await client.get(keys[:2]) == [v for _, v in items[:2]]
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()

        for _ in range(6):  # each try at the dead peer costs up to ~1 s (its admission timeout)
            start = time.monotonic()
            assert await client.get(keys) == [None] * 16
            assert time.monotonic() - start < 3.0

        async def rebuilt() -> bool:
            await client.exists(keys[:1])  # calls drive the probe: an idle store needs none
            return client.resets == 1 and client.available

        await eventually(rebuilt, within=5.0)
        assert (await client.stats()).errors >= 3

        with storage_node(master):
            fresh = blocks(chain(4))

            async def round_trip() -> bool:
                if await client.put(fresh) != 4:
                    return False
                return await client.get([k for k, _ in fresh]) == [v for _, v in fresh]

            await eventually(round_trip, within=15.0)
        assert client.resets == 1
    finally:
        await client.close()
        master.stop()


async def _positive(value: Awaitable[float]) -> bool:
    return await value > 0
