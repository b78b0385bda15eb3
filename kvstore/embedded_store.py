"""The embedded block store: an in-process LRU memory tier, optionally spilling to a disk tier.

The memory tier is bounded by the bytes of its values (Python's per-object overhead is not
counted). When it overflows, its least recently used blocks move to the disk tier, if there is one,
and otherwise leave the store. The disk tier (`DiskTier`) is bounded by bytes too; what it drops is
gone. The tiers are exclusive (a block lives in one of them) and every block in memory is more
recent than every block on disk, so together they behave as one LRU list: a `get` that hits disk
promotes the block back to memory.

The disk tier is a cache of this process, not durable storage: files are written without fsync,
and on start the directory's block files (and leftover temp files) are removed rather than
indexed, because they may come from a run with another capacity, secret or block shape, and a
store that starts empty keeps its stats and bounds honest. `close` removes them as well.

Disk I/O is synchronous (values are a few KB) and never raises from the data calls: a failed write
drops the block (counted in `errors` and `evictions`), a failed read answers a miss.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from kvstore.block_key import KEY_BYTES
from kvstore.errors import StoreUnavailable
from kvstore.store import StoreStats

_TEMP_PREFIX = ".tmp-"
_OWNED = re.compile(rf"(?:{re.escape(_TEMP_PREFIX)})?[0-9a-f]{{{2 * KEY_BYTES}}}")
"""Names this tier writes: a key's hex, or its temp file. Nothing else in the directory is ours."""


class DiskTier:
    """Blocks evicted from memory: one file per block, named by the key's hex, LRU by bytes."""

    def __init__(self, directory: Path, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("disk_capacity_bytes must be positive")
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.index: OrderedDict[bytes, int] = OrderedDict()
        """Key → value size, least recently used first."""
        self.errors = 0
        self.evictions = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.wipe()
        except OSError as exc:
            raise StoreUnavailable(f"disk tier {directory} is unusable: {exc}") from exc

    def wipe(self) -> None:
        """Remove every file this tier owns, indexed or not."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if _OWNED.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
        self.index.clear()
        self.used_bytes = 0

    def write(self, key: bytes, value: bytes) -> bool:
        """Keep `value` as the most recent block, dropping the oldest to make room; False (and
        the block is gone) if it does not fit or the write fails."""
        size = len(value)
        if size > self.capacity_bytes:
            return False
        while self.used_bytes + size > self.capacity_bytes:
            self._drop_oldest()
        name = key.hex()
        temp = os.path.join(self.directory, _TEMP_PREFIX + name)
        try:
            with open(temp, "wb") as f:
                f.write(value)
            os.replace(temp, os.path.join(self.directory, name))
        except OSError:
            self.errors += 1
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return False
        self.index[key] = size
        self.used_bytes += size
        return True

    def take(self, key: bytes) -> bytes | None:
        """Read a block and remove it from the tier (the caller promotes it); None on failure."""
        size = self.index.pop(key)
        self.used_bytes -= size
        path = os.path.join(self.directory, key.hex())
        try:
            with open(path, "rb") as f:
                value = f.read()
            os.unlink(path)
        except OSError:
            self.errors += 1
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        if len(value) != size:  # changed under us; the reader's checksum would catch it anyway
            self.errors += 1
            return None
        return value

    def discard(self, key: bytes) -> None:
        self.used_bytes -= self.index.pop(key)
        self._unlink(key)

    def _drop_oldest(self) -> None:
        key, size = self.index.popitem(last=False)
        self.used_bytes -= size
        self.evictions += 1
        self._unlink(key)

    def _unlink(self, key: bytes) -> None:
        try:
            os.unlink(os.path.join(self.directory, key.hex()))
        except FileNotFoundError:
            pass
        except OSError:
            self.errors += 1


class EmbeddedKVStore:
    """The in-process `KVStore`: the embedded default, served to other processes by
    `kvstore.store_server`."""

    name = "embedded"

    def __init__(
        self,
        capacity_bytes: int,
        *,
        disk_dir: Path | None = None,
        disk_capacity_bytes: int = 0,
    ) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes = capacity_bytes
        self._memory: OrderedDict[bytes, bytes] = OrderedDict()
        """Least recently used first."""
        self._used = 0
        self._disk = DiskTier(Path(disk_dir), disk_capacity_bytes) if disk_dir else None
        self._on_disk: dict[bytes, int] = self._disk.index if self._disk else {}
        self._puts = self._gets = self._hits = 0
        self._evictions = self._errors = 0

    async def exists(self, keys: Sequence[bytes]) -> list[bool]:
        memory, on_disk = self._memory, self._on_disk
        return [k in memory or k in on_disk for k in keys]

    async def prefix_blocks(self, keys: Sequence[bytes]) -> int:
        memory, on_disk = self._memory, self._on_disk
        count = 0
        for k in keys:
            if k not in memory and k not in on_disk:
                break
            count += 1
        return count

    async def put(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Store the batch, head freshest; returns how many of its keys are stored afterwards
        (a batch larger than the store pushes out its own tail)."""
        for key, _ in items:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a block key is {KEY_BYTES} bytes, not {len(key)}")
        accepted: set[bytes] = set()
        for key, value in reversed(items):  # the batch's head is inserted last: the freshest
            if len(value) > self.capacity_bytes:
                self._errors += 1  # rejected: it could never fit
                continue
            if key in self._memory:
                self._memory.move_to_end(key)  # content-addressed: the old value is as good
            else:
                if self._disk is not None and key in self._disk.index:
                    self._disk.discard(key)  # the new copy goes to memory, the freshest tier
                self._insert(key, bytes(value))
            accepted.add(key)
        memory, on_disk = self._memory, self._on_disk
        stored = sum(1 for key in accepted if key in memory or key in on_disk)
        self._puts += stored
        return stored

    async def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(keys)
        memory, disk = self._memory, self._disk
        for i in range(len(keys) - 1, -1, -1):  # tail first, so the head ends the freshest
            key = keys[i]
            value = memory.get(key)
            if value is not None:
                memory.move_to_end(key)
            elif disk is not None and key in disk.index:
                value = disk.take(key)
                if value is not None:
                    self._insert(key, value)
            out[i] = value
        self._gets += len(keys)
        self._hits += sum(v is not None for v in out)
        return out

    async def remove(self, keys: Sequence[bytes]) -> int:
        removed = 0
        for key in keys:
            value = self._memory.pop(key, None)
            if value is not None:
                self._used -= len(value)
                removed += 1
            elif self._disk is not None and key in self._disk.index:
                self._disk.discard(key)
                removed += 1
        return removed

    async def clear(self) -> int:
        removed = len(self._memory) + len(self._on_disk)
        self._memory.clear()
        self._used = 0
        if self._disk is not None:
            try:
                self._disk.wipe()
            except OSError:
                self._errors += 1  # the files stay behind; the next start removes them
                self._disk.index.clear()
                self._disk.used_bytes = 0
        return removed

    async def stats(self) -> StoreStats:
        disk = self._disk
        return StoreStats(
            backend=self.name,
            capacity_bytes=self.capacity_bytes,
            used_bytes=self._used,
            blocks=len(self._memory) + len(self._on_disk),
            disk_capacity_bytes=disk.capacity_bytes if disk else 0,
            disk_used_bytes=disk.used_bytes if disk else 0,
            puts=self._puts,
            gets=self._gets,
            hits=self._hits,
            evictions=self._evictions + (disk.evictions if disk else 0),
            errors=self._errors + (disk.errors if disk else 0),
        )

    async def close(self) -> None:
        await self.clear()

    def _insert(self, key: bytes, value: bytes) -> None:
        """Add a block as the most recent; overflow goes to disk (or away), oldest first."""
        self._memory[key] = value
        self._used += len(value)
        while self._used > self.capacity_bytes:
            old_key, old = self._memory.popitem(last=False)
            self._used -= len(old)
            if self._disk is None or not self._disk.write(old_key, old):
                self._evictions += 1
