"""The KV store contract's vocabulary: how a backend is opened, and chains of blocks to store.

A backend is an async context manager factory over a `Sizing`. Adding one (Mooncake) is one entry
in `BACKENDS` of `tests/kvstore/conftest.py`; every test of `test_store_contract.py` then runs
against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from kvstore.block import encode_block
from kvstore.block_key import KEY_BYTES, chain_blocks, chain_root
from kvstore.store import KVStore

BLOCK_TOKENS = 64
PAYLOAD_BYTES = 1024
BLOCK_BYTES = len(encode_block(bytes(KEY_BYTES), BLOCK_TOKENS, PAYLOAD_BYTES))
"""What one block of `blocks` weighs."""
DEFAULT_CAPACITY = 64 << 20
REQUEST_KEYS = 256
"""Keys per request of the backends that cut batches (the http client's default is 1024: a
smaller cut crosses request boundaries with fewer keys, so fewer disk writes)."""


@dataclass(frozen=True, slots=True)
class Sizing:
    scratch: Path
    """A fresh directory the backend may use (a disk tier)."""
    capacity_bytes: int = DEFAULT_CAPACITY
    """What the store holds, all tiers together, before it evicts for good."""
    largest_value: int = BLOCK_BYTES
    """The largest value a test stores (a backend with a small memory tier must still take it)."""


Opener = Callable[[Sizing], AbstractAsyncContextManager[KVStore]]


@dataclass(frozen=True, slots=True)
class Backend:
    open: Opener
    exact_lru: bool = False
    """An LRU bounded by the bytes of its values, accounted exactly (the embedded store, local or
    served): the eviction, recency and byte-count tests apply."""


def chain(count: int) -> list[bytes]:
    """The keys of a fresh `count`-block chain (its root is random, so no two chains meet)."""
    root = chain_root(os.urandom(8), "tenant", "model")
    return chain_blocks(root, range(count * BLOCK_TOKENS), BLOCK_TOKENS)


def blocks(keys: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """Encoded blocks of `BLOCK_BYTES` each, verifiable with `kvstore.block.verify_block`."""
    return [(key, encode_block(key, BLOCK_TOKENS, PAYLOAD_BYTES)) for key in keys]
