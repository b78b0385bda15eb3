"""A store whose backend could not be reached yet: misses now, the real store once it opens.

A worker started while its Mooncake master is down (or restarting) still serves: every call
answers as the contract says a down backend does (misses, False, 0, errors counted), and the first
call after each `retry_s` tries to open the backend in the background. Once open, every call goes
straight to it, and its own failover takes over from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from kvstore.errors import StoreUnavailable
from kvstore.store import KVStore, StoreStats

log = logging.getLogger(__name__)


class ReconnectingStore:
    def __init__(
        self,
        name: str,
        opener: Callable[[], Awaitable[KVStore]],
        *,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._opener = opener
        self._retry_s = retry_s
        self._clock = clock
        self._store: KVStore | None = None
        self._opening: asyncio.Task[None] | None = None
        self._next_try = clock()
        self._errors = 0

    def _backend(self) -> KVStore | None:
        """The open store, or None (and maybe one open attempt started in the background)."""
        if self._store is not None:
            return self._store
        self._errors += 1
        if self._opening is None and self._clock() >= self._next_try:
            self._opening = asyncio.get_running_loop().create_task(self._open())
        return None

    async def _open(self) -> None:
        try:
            self._store = await self._opener()
            log.warning("KV store %s is reachable again", self.name)
        except StoreUnavailable as exc:
            log.debug("KV store %s still unavailable: %s", self.name, exc)
            self._next_try = self._clock() + self._retry_s
        finally:
            self._opening = None

    async def exists(self, keys: Sequence[bytes]) -> list[bool]:
        store = self._backend()
        return await store.exists(keys) if store else [False] * len(keys)

    async def prefix_blocks(self, keys: Sequence[bytes]) -> int:
        store = self._backend()
        return await store.prefix_blocks(keys) if store else 0

    async def put(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        store = self._backend()
        return await store.put(items) if store else 0

    async def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        store = self._backend()
        return await store.get(keys) if store else [None] * len(keys)

    async def remove(self, keys: Sequence[bytes]) -> int:
        store = self._backend()
        return await store.remove(keys) if store else 0

    async def clear(self) -> int:
        store = self._backend()
        return await store.clear() if store else 0

    async def stats(self) -> StoreStats:
        if self._store is not None:
            return await self._store.stats()
        return StoreStats(self.name, 0, 0, 0, errors=self._errors, available=False)

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        if self._store is not None:
            await self._store.close()
