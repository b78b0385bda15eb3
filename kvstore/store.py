"""The `KVStore` interface every backend implements, and the stats it reports.

Keys are 16-byte block keys (`kvstore.block_key`); values are opaque bytes (in practice encoded
blocks, `kvstore.block`, verified by whoever reads them). The contract, which one test suite checks
against every backend:

- `exists` and `prefix_blocks` do not change recency; `get` of a present key does.
- Within one `put` batch, earlier keys count as more recently used than later ones: a prompt's
  blocks are put head first, and eviction should take a chain's tail before its head (a tail
  without its head is never a hit).
- A `put` over an existing key keeps a value (old or new: blocks are content-addressed).
- A down or failing backend never raises from these calls: `get` answers None, `exists` False,
  `put` counts what it stored, and `stats().errors` counts the failures. Callers degrade
  (recompute) instead of failing a request.
- Every call is bounded in time by the backend's own timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoreStats:
    backend: str
    capacity_bytes: int
    """What the store may hold (memory tier; 0 when unknown)."""
    used_bytes: int
    blocks: int
    """Blocks held (memory tier plus disk tier, where there is one)."""
    disk_capacity_bytes: int = 0
    disk_used_bytes: int = 0
    puts: int = 0
    """Blocks stored."""
    gets: int = 0
    """Blocks asked for by `get`."""
    hits: int = 0
    """Blocks `get` returned."""
    evictions: int = 0
    errors: int = 0
    """Backend failures (timeouts, transport errors, a down master)."""
    available: bool = True
    """False while the backend is known to be down."""


def longest_prefix(present: Sequence[bool]) -> int:
    """How many leading entries are True."""
    for i, ok in enumerate(present):
        if not ok:
            return i
    return len(present)


class KVStore(Protocol):
    name: str

    async def exists(self, keys: Sequence[bytes]) -> list[bool]: ...

    async def prefix_blocks(self, keys: Sequence[bytes]) -> int:
        """How many leading blocks of a chain are stored."""
        ...

    async def put(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Store (key, value) pairs; returns how many are now stored."""
        ...

    async def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Each key's value, or None if it is missing or could not be read."""
        ...

    async def remove(self, keys: Sequence[bytes]) -> int:
        """Remove keys; returns how many were removed."""
        ...

    async def clear(self) -> int:
        """Remove every block; returns how many were removed."""
        ...

    async def stats(self) -> StoreStats: ...

    async def close(self) -> None: ...
