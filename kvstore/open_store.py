"""One place that turns a store URL into a backend.

memory                  an in-process embedded store (one process only: tests, `null` workers)
http://HOST:PORT        the embedded store served by `python -m kvstore.store_server`, shared
                        by every process of one `dualpath up`
mooncake://HOST:PORT    a Mooncake master (this process joins the store with its own segment)
"""

from __future__ import annotations

import importlib.util
from urllib.parse import SplitResult, parse_qs, urlsplit

from kvstore.errors import StoreUnavailable
from kvstore.reconnecting_store import ReconnectingStore
from kvstore.store import KVStore

DEFAULT_MEMORY_BYTES = 256 << 20


async def open_store(
    url: str,
    *,
    segment_bytes: int = 64 << 20,
    capacity_bytes: int = DEFAULT_MEMORY_BYTES,
) -> KVStore:
    """The backend `url` names; raises `StoreUnavailable` when it cannot be set up."""
    if url == "memory":
        from kvstore.embedded_store import EmbeddedKVStore

        return EmbeddedKVStore(capacity_bytes=capacity_bytes)
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        from kvstore.http_store import HTTPKVStore

        return HTTPKVStore(url)
    if parts.scheme == "mooncake":
        if not parts.hostname or not parts.port:
            raise StoreUnavailable(f"a Mooncake store URL is mooncake://HOST:PORT, not {url!r}")
        return await _mooncake(parts, segment_bytes)
    raise StoreUnavailable(
        f"unknown KV store {url!r}: use memory, http://HOST:PORT or mooncake://HOST:PORT"
    )


async def _mooncake(parts: SplitResult, segment_bytes: int) -> KVStore:
    """The Mooncake client; while its master is unreachable, a store that keeps trying.

    A missing wheel or libibverbs is a setup error and raises at once."""
    from kvstore.mooncake_master import INSTALL_HINT, require_libibverbs
    from kvstore.mooncake_store import MooncakeKVStore

    require_libibverbs()
    if importlib.util.find_spec("mooncake") is None:
        raise StoreUnavailable(f"no mooncake package: {INSTALL_HINT}")
    metrics = parse_qs(parts.query).get("metrics", [None])[0]
    master = f"{parts.hostname}:{parts.port}"

    async def connect() -> KVStore:
        return await MooncakeKVStore.connect(master, segment_bytes=segment_bytes, metrics=metrics)

    try:
        return await connect()
    except StoreUnavailable:
        return ReconnectingStore("mooncake", connect)
