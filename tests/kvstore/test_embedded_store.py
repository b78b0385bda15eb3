"""The embedded store beyond the contract: its disk tier, its bounds, its speed."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvstore.embedded_store import EmbeddedKVStore
from kvstore.errors import StoreUnavailable
from tests.kvstore.contract import BLOCK_BYTES, blocks, chain


@pytest.fixture
async def tiered(tmp_path: Path) -> AsyncIterator[EmbeddedKVStore]:
    """Two blocks in memory, four on disk."""
    store = EmbeddedKVStore(
        2 * BLOCK_BYTES, disk_dir=tmp_path / "disk", disk_capacity_bytes=4 * BLOCK_BYTES
    )
    yield store
    await store.close()


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


async def test_overflow_is_demoted_to_disk_tail_first(
    tiered: EmbeddedKVStore, tmp_path: Path
) -> None:
    keys = chain(4)
    assert await tiered.put(blocks(keys)) == 4
    assert files(tmp_path / "disk") == {keys[2].hex(), keys[3].hex()}  # no temp files left
    stats = await tiered.stats()
    assert (stats.used_bytes, stats.disk_used_bytes) == (2 * BLOCK_BYTES, 2 * BLOCK_BYTES)
    assert (stats.blocks, stats.evictions, stats.errors) == (4, 0, 0)
    assert (tmp_path / "disk" / keys[3].hex()).read_bytes() == blocks(keys)[3][1]


async def test_a_disk_hit_is_promoted_to_memory(tiered: EmbeddedKVStore, tmp_path: Path) -> None:
    keys = chain(4)
    items = blocks(keys)
    await tiered.put(items)
    assert await tiered.get([keys[3]]) == [items[3][1]]
    # keys[3] is back in memory, keys[1] (memory's least recent) went down in its place
    assert files(tmp_path / "disk") == {keys[1].hex(), keys[2].hex()}
    assert await tiered.get(keys) == [value for _, value in items]
    stats = await tiered.stats()
    assert (stats.blocks, stats.hits, stats.used_bytes) == (4, 5, 2 * BLOCK_BYTES)


async def test_the_disk_tier_is_bounded(tiered: EmbeddedKVStore, tmp_path: Path) -> None:
    keys = chain(10)
    assert await tiered.put(blocks(keys)) == 6  # the batch pushed out its own tail
    assert files(tmp_path / "disk") == {key.hex() for key in keys[2:6]}
    stats = await tiered.stats()
    assert (stats.blocks, stats.evictions, stats.disk_used_bytes) == (6, 4, 4 * BLOCK_BYTES)
    assert await tiered.prefix_blocks(keys) == 6


async def test_remove_and_clear_delete_files(tiered: EmbeddedKVStore, tmp_path: Path) -> None:
    keys = chain(5)
    await tiered.put(blocks(keys))
    assert await tiered.remove([keys[4], keys[0]]) == 2
    assert files(tmp_path / "disk") == {keys[2].hex(), keys[3].hex()}
    assert await tiered.clear() == 3
    assert files(tmp_path / "disk") == set()
    assert (await tiered.stats()).disk_used_bytes == 0


async def test_a_failing_disk_is_counted_never_raised(
    tiered: EmbeddedKVStore, tmp_path: Path
) -> None:
    keys = chain(4)
    items = blocks(keys)
    await tiered.put(items[:3])  # keys[2] is on disk
    (tmp_path / "disk" / keys[2].hex()).unlink()
    assert await tiered.get([keys[2]]) == [None]  # a failed read answers a miss
    shutil.rmtree(tmp_path / "disk")
    (tmp_path / "disk").write_bytes(b"not a directory")  # every write fails now (even as root)
    assert await tiered.put(items[3:]) == 1  # memory is fine; the demoted block is lost
    stats = await tiered.stats()
    assert (stats.errors, stats.evictions, stats.blocks) == (2, 1, 2)
    assert await tiered.exists(keys) == [True, False, False, True]
    assert await tiered.clear() == 2  # the failing wipe is counted, not raised
    assert (await tiered.stats()).errors == 3


async def test_start_removes_its_own_old_files_only(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    stale = chain(2)
    (disk / stale[0].hex()).write_bytes(b"old block")
    (disk / f".tmp-{stale[1].hex()}").write_bytes(b"half written")
    (disk / "notes.txt").write_text("not ours")
    store = EmbeddedKVStore(BLOCK_BYTES, disk_dir=disk, disk_capacity_bytes=BLOCK_BYTES)
    try:
        assert files(disk) == {"notes.txt"}
        assert await store.exists(stale) == [False, False]
        assert (await store.stats()).blocks == 0
    finally:
        await store.close()
    assert files(disk) == {"notes.txt"}


def test_an_unusable_disk_dir_fails_at_setup(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreUnavailable):
        EmbeddedKVStore(1024, disk_dir=tmp_path / "file" / "disk", disk_capacity_bytes=1024)
    with pytest.raises(ValueError):
        EmbeddedKVStore(1024, disk_dir=tmp_path / "disk")
    with pytest.raises(ValueError):
        EmbeddedKVStore(0)


async def test_oversized_values_are_rejected_and_counted() -> None:
    store = EmbeddedKVStore(100)
    big, small = chain(2)
    assert await store.put([(big, bytes(101)), (small, bytes(100))]) == 1
    stats = await store.stats()
    assert (stats.blocks, stats.errors, stats.puts, stats.used_bytes) == (1, 1, 1, 100)


async def test_keys_must_be_block_keys() -> None:
    store = EmbeddedKVStore(100)
    with pytest.raises(ValueError):
        await store.put([(b"short", b"value")])


async def test_prefix_of_512_blocks_spans_both_tiers(tmp_path: Path) -> None:
    """The latency target (≤ 1 ms p50) is measured by bench/kvstore.py, not timed here."""
    keys = chain(512)
    memory_only = EmbeddedKVStore(1 << 20)
    tiered = EmbeddedKVStore(
        256 * 20, disk_dir=tmp_path / "disk", disk_capacity_bytes=300 * 20
    )  # about half of the chain on disk
    try:
        for store in (memory_only, tiered):
            await store.put([(key, b"v" * 4 + key) for key in keys])
            assert await store.prefix_blocks(keys) == 512
            assert await store.prefix_blocks([*keys[:300], bytes(16), *keys[301:]]) == 300
    finally:
        await memory_only.close()
        await tiered.close()
