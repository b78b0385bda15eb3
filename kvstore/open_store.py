"""One place that turns a store URL into a backend.

memory                  an in-process embedded store (one process only: tests, `null` workers)
http://HOST:PORT        the embedded store served by `python -m kvstore.store_server`, shared
                        by every process of one `dualpath up`
mooncake://HOST:PORT    a Mooncake master (this process joins the store with its own segment)
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from kvstore.errors import StoreUnavailable
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
        from kvstore.mooncake_store import MooncakeKVStore

        metrics = parse_qs(parts.query).get("metrics", [None])[0]
        return await MooncakeKVStore.connect(
            master=f"{parts.hostname}:{parts.port}", segment_bytes=segment_bytes, metrics=metrics
        )
    raise StoreUnavailable(
        f"unknown KV store {url!r}: use memory, http://HOST:PORT or mooncake://HOST:PORT"
    )
