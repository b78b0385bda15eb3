"""The kvstore's exceptions.

    KVStoreError
    ├── CorruptBlock        a value failed its check (wrong key, truncated, checksum mismatch)
    └── StoreUnavailable    the backend cannot be set up (missing package, master unreachable)

Reads and writes on a running store do not raise for a down backend: they answer misses and count
the error, so a worker recomputes instead of failing the request.
"""

from __future__ import annotations


class KVStoreError(Exception):
    pass


class CorruptBlock(KVStoreError):
    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(f"block {key.hex()}: {reason}")
        self.key = key
        self.reason = reason


class StoreUnavailable(KVStoreError):
    pass
