"""`HTTPKVStore`: the `KVStore` of a store server (`kvstore.store_server`) in another process.

Per the store contract it never raises for a down or failing server: reads answer misses, writes
count nothing, and the failure is counted in `errors`. A batch is cut into requests of at most
`max_keys_per_request` keys (and, for puts, about `max_body_bytes`); after a failed request the
rest of the batch is answered as misses without asking, so a hung server costs one timeout per
call, not one per chunk. httpx's errors are caught here and nowhere else.

A caller's cancellation (the gateway's hit-probe deadline, a worker's aborted request) never
reaches an HTTP request: httpcore 1.0.9 leaks a pool slot for good when a request is cancelled
at the wrong moment (encode/httpcore#1093, seen here: after ~2,000 cancelled probes all 16 slots
were gone and every later call failed with `PoolTimeout`). Each request runs in a task of its
own, shielded; a cancelled caller leaves it to finish on its own, bounded by `timeout_s`.

`stats()` is the server's, with this client's own errors added; while the server cannot be
reached it is the last copy seen (or zeros) with `available=False`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

import httpx
import orjson

from kvstore.block_key import KEY_BYTES
from kvstore.store import StoreStats
from kvstore.wire import MalformedBody, decode_values, encode_items

log = logging.getLogger(__name__)

_OCTETS = {"content-type": "application/octet-stream"}
_STATS_FIELDS = frozenset(f.name for f in dataclasses.fields(StoreStats))
_UNKNOWN = StoreStats(backend="http", capacity_bytes=0, used_bytes=0, blocks=0, available=False)


class HTTPKVStore:
    name = "http"

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        connect_timeout_s: float = 0.5,
        max_connections: int = 16,
        max_keys_per_request: int = 1024,
        max_body_bytes: int = 16 << 20,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`timeout_s` bounds each request (a call may make several for a large batch);
        `transport` is for tests (httpx.MockTransport)."""
        if max_keys_per_request <= 0 or max_body_bytes <= 0:
            raise ValueError("max_keys_per_request and max_body_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self._max_keys = max_keys_per_request
        self._max_body = max_body_bytes
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            trust_env=False,
            timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self._errors = 0
        self._available = True
        self._last: StoreStats | None = None
        self._requests: set[asyncio.Task[httpx.Response]] = set()
        """Requests in flight, each bounded by `timeout_s` (a reference keeps them alive)."""

    async def exists(self, keys: Sequence[bytes]) -> list[bool]:
        out: list[bool] = []
        for chunk in self._key_chunks(keys):
            body = await self._post("/v1/blocks/exists", b"".join(chunk))
            if body is None:
                break
            if len(body) != len(chunk):
                self._fail(f"exists answered {len(body)} bytes for {len(chunk)} keys")
                break
            out += (b == 1 for b in body)
        return out + [False] * (len(keys) - len(out))

    async def prefix_blocks(self, keys: Sequence[bytes]) -> int:
        count = 0
        for chunk in self._key_chunks(keys):
            found = await self._count("/v1/blocks/exists?prefix=1", b"".join(chunk), "blocks")
            if found is None:
                break
            count += min(found, len(chunk))
            if found < len(chunk):
                break
        return count

    async def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        _check_keys(keys)
        out: list[bytes | None] = [None] * len(keys)
        for start in reversed(range(0, len(keys), self._max_keys)):  # tail first: see `put`
            chunk = keys[start : start + self._max_keys]
            body = await self._post("/v1/blocks/get", b"".join(chunk))
            if body is None:
                break
            try:
                out[start : start + len(chunk)] = decode_values(body, len(chunk))
            except MalformedBody as exc:
                self._fail(f"get answered a malformed body: {exc}")
                break
        return out

    async def put(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Requests go tail first, so the batch's head is the freshest, as in one call. The
        count is the sum of the requests' counts: a batch larger than the store overcounts."""
        _check_keys([key for key, _ in items])
        stored = 0
        for chunk in reversed(list(self._item_chunks(items))):
            done = await self._count("/v1/blocks/put", encode_items(chunk), "stored")
            if done is None:
                break
            stored += done
        return stored

    async def remove(self, keys: Sequence[bytes]) -> int:
        removed = 0
        for chunk in self._key_chunks(keys):
            done = await self._count("/v1/blocks/remove", b"".join(chunk), "removed")
            if done is None:
                break
            removed += done
        return removed

    async def clear(self) -> int:
        return await self._count("/v1/blocks/clear", b"", "removed") or 0

    async def stats(self) -> StoreStats:
        try:
            response = await self._send(self._client.get("/v1/stats"))
            response.raise_for_status()
            fields = orjson.loads(response.content)
            remote = StoreStats(**{k: v for k, v in fields.items() if k in _STATS_FIELDS})
        except (httpx.HTTPError, orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            self._fail(f"stats failed: {exc!r}", down=isinstance(exc, httpx.TransportError))
            last = self._last or _UNKNOWN
            return dataclasses.replace(last, errors=last.errors + self._errors, available=False)
        self._available = True
        self._last = dataclasses.replace(remote, backend=f"http:{remote.backend}")
        return dataclasses.replace(self._last, errors=remote.errors + self._errors)

    async def close(self) -> None:
        await self._client.aclose()

    async def _send(self, request: Coroutine[Any, Any, httpx.Response]) -> httpx.Response:
        """`await request`, which the caller's cancellation does not cancel (module docstring)."""
        task = asyncio.ensure_future(request)
        self._requests.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[httpx.Response]) -> None:
        self._requests.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned request's failure is not an error

    async def _post(self, path: str, body: bytes) -> bytes | None:
        """The answer's body, or None (counted) if the server could not give one."""
        try:
            response = await self._send(self._client.post(path, content=body, headers=_OCTETS))
        except httpx.HTTPError as exc:
            self._fail(f"{path} failed: {exc!r}", down=isinstance(exc, httpx.TransportError))
            return None
        if response.status_code != 200:
            self._fail(f"{path} answered {response.status_code}: {response.text[:200]}")
            return None
        self._available = True
        return response.content

    async def _count(self, path: str, body: bytes, field: str) -> int | None:
        """A count the server answers as JSON, or None (counted) on failure."""
        answer = await self._post(path, body)
        if answer is None:
            return None
        try:
            value = orjson.loads(answer)[field]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            value = None
        if not isinstance(value, int) or value < 0:
            self._fail(f"{path} answered {answer[:200]!r}")
            return None
        return value

    def _fail(self, reason: str, *, down: bool = False) -> None:
        self._errors += 1
        if down and self._available:
            log.warning("KV store server %s is unreachable: %s", self.base_url, reason)
        else:
            log.debug("KV store server %s: %s", self.base_url, reason)
        if down:
            self._available = False

    def _key_chunks(self, keys: Sequence[bytes]) -> Iterator[Sequence[bytes]]:
        _check_keys(keys)
        for start in range(0, len(keys), self._max_keys):
            yield keys[start : start + self._max_keys]

    def _item_chunks(
        self, items: Sequence[tuple[bytes, bytes]]
    ) -> Iterator[Sequence[tuple[bytes, bytes]]]:
        start, size = 0, 0
        for i, (_, value) in enumerate(items):
            item_bytes = KEY_BYTES + 4 + len(value)
            if i > start and (i - start >= self._max_keys or size + item_bytes > self._max_body):
                yield items[start:i]
                start, size = i, 0
            size += item_bytes
        if start < len(items):
            yield items[start:]


def _check_keys(keys: Sequence[bytes]) -> None:
    """A key of another length would shift every key after it in the body: a caller's bug."""
    for key in keys:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a block key is {KEY_BYTES} bytes, not {len(key)}")
