"""The Mooncake distributed store as a `KVStore`: production's KV tier, and in tests a real
`mooncake_master` over TCP on loopback.

Each robustness measure answers a hazard seen running the real wheel (`reference/mooncake-notes.md`
§ numbers; "seen here" = found while writing this; the API quirks are in `mooncake_calls`):

- C++ calls block: ~4.4 s each while the master is down, 60 s on a jammed TCP transport (§4-5).
  → every call runs on the client's one worker thread (`blocking_worker`); each store call is
  bounded by `timeout_s`; calls in flight are bounded, and past the bound a call answers a miss
  and counts an error at once.
- One huge batch jams the TCP transport (§5); a batch, put or get, must fit the staging buffer
  (§4, and seen here for gets). → chunks of ≤ `batch_objects` objects and ≤ half the buffer.
- Master down: -900 RPC_FAIL, or calls that hang (§4). → `available=False`; for `backoff_s` every
  call answers at once without touching the client; then one probe in the background (a TCP
  connect to the master, then one `batch_is_exist`). A dead master costs the request path
  nothing, and service resumes by itself after a restart (about 2.5 s; the first puts may answer
  -200 while segments re-mount). `health_check()` kept answering 0 with the master dead (seen
  here), so it is not the probe.
- Repeated -800 TRANSFER_FAIL: a jammed transport failed every call for ~90 s (§5). → after
  `transfer_failures_before_reset` in a row, a fresh client on a fresh worker thread; the old
  one is closed on its own thread, and abandoned if that hangs.
- `setup()` retries for ~90 s when no master listens (seen here). → `open` first checks that the
  master accepts connections, and bounds `setup` by `timeout_s`. Setup runs on a thread of its
  own: calls made on the thread that ran `setup()` were 5-12% slower (seen here).
- Thread hand-offs cost 0.1-0.4 ms each on a busy 2-core machine and, one per chunk, slowed the
  transfers themselves (seen here). → a whole store call is ONE job on the worker
  (`mooncake_calls.Cut`).
- `close()` takes up to ~2.6 s (§7). → it runs on the worker, awaited at most `close_timeout_s`.
- A put over an existing key keeps the old value (§4): fine, blocks are content-addressed. A
  reader that finds a corrupt value removes it, which a reader's lease would refuse for 10 s
  (-706): `remove` forces. A 0-byte value, or one larger than the staging buffer, fails its whole
  batch (-600, §4): such values are not sent (not stored, counted as errors).

Eviction is Mooncake's own (the master evicts by lease order past a high watermark), not the
exact byte-bounded LRU of the embedded store; `put` sends a chain tail first so that its head is
the most recent, which is all it can do for "take the tail before the head".

`stats()` reads the master's `/metrics` when `metrics` is set: capacity, bytes used, keys and
evictions of the whole pool (one loopback HTTP request). Without it, capacity is this client's
segment and used bytes, blocks and evictions are 0 (unknown). `puts`, `gets`, `hits` and `errors`
are this client's own counts; `errors` counts failed or timed-out client calls, unreadable
chunks, and calls answered without trying while the master is down or the worker is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from kvstore import mooncake_calls as calls
from kvstore.blocking_worker import BlockingWorker, WorkerBusy
from kvstore.errors import StoreUnavailable
from kvstore.mooncake_calls import FOUND, READ, UNREADABLE, MooncakeConfig
from kvstore.mooncake_master import INSTALL_HINT, read_master_metrics, require_libibverbs
from kvstore.store import StoreStats

__all__ = ["MooncakeConfig", "MooncakeKVStore"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_DEFAULT = MooncakeConfig()
_RESET_MIN_INTERVAL_S = 10.0
"""Rebuilding a client more often only churns: a jam outlives one rebuild, and a dead peer stays
dead until the master drops it (`client_ttl`)."""
_CONNECT_S = 0.5
"""TCP connect to the master when checking it is there (loopback: refused or accepted at once)."""
_METRICS_S = 0.5


def _client_class() -> Any:
    require_libibverbs()
    try:
        module = importlib.import_module("mooncake.store")
    except ImportError as exc:
        raise StoreUnavailable(f"cannot import mooncake.store ({exc}): {INSTALL_HINT}") from exc
    return module.MooncakeDistributedStore


async def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(_CONNECT_S):
            _, writer = await asyncio.open_connection(host, int(port))
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _new_client(client_class: Any, config: MooncakeConfig) -> tuple[Any, BlockingWorker]:
    """A set-up client and the worker thread that will make its calls, or `StoreUnavailable`.

    The client is built and set up on a short-lived thread of its own, not on the worker: seen
    here, a client's calls made on the very thread that ran its `setup()` moved 5-12% fewer bytes
    per second than the same calls on any other thread (consistently over runs; most likely the
    client's own threads share that thread's malloc arena)."""
    if not await _accepts(config.master):
        raise StoreUnavailable(f"no Mooncake master accepts connections at {config.master}")
    builder = BlockingWorker(f"mooncake-{config.namespace}-setup", 2)
    deadline = asyncio.get_running_loop().time() + config.timeout_s
    try:
        client = await builder.call(deadline, client_class)
        rc = await builder.call(deadline, calls.setup, client, config)
    except Exception as exc:
        raise StoreUnavailable(
            f"Mooncake client setup against {config.master} failed or took over "
            f"{config.timeout_s}s: {exc!r}"
        ) from exc
    finally:
        builder.shutdown()  # the thread ends once setup returns, however long that takes
    if rc != 0:
        raise StoreUnavailable(f"Mooncake client setup against {config.master} returned {rc}")
    return client, BlockingWorker(f"mooncake-{config.namespace}", config.max_in_flight)


class MooncakeKVStore:
    """A `KVStore` on one `MooncakeDistributedStore` client. Make one with `connect` or `open`,
    and use it from one event loop."""

    name = "mooncake"

    def __init__(
        self, config: MooncakeConfig, client_class: Any, client: Any, worker: BlockingWorker
    ) -> None:
        self.config = config
        self._client_class = client_class
        self._client = client
        self._worker = worker
        self._prefix = f"{config.namespace}/"
        self._byte_budget = max(1, config.buffer_bytes // 2)
        self._value_bytes = 0
        """The largest value seen: sizes get chunks to the staging buffer."""
        self._available = True
        self._closed = False
        self._down_until = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._transfer_failures = 0
        self._reset_wanted = False
        self._last_reset = float("-inf")
        self.resets = 0
        """Clients rebuilt after repeated transfer failures."""
        self._puts = self._gets = self._hits = self._errors = 0

    @classmethod
    async def connect(
        cls,
        master: str = _DEFAULT.master,
        *,
        segment_bytes: int = _DEFAULT.segment_bytes,
        buffer_bytes: int = _DEFAULT.buffer_bytes,
        timeout_s: float = _DEFAULT.timeout_s,
        metrics: str | None = None,
        namespace: str = _DEFAULT.namespace,
    ) -> MooncakeKVStore:
        """The common knobs; `open(MooncakeConfig(...))` takes them all."""
        config = MooncakeConfig(
            master=master,
            metrics=metrics,
            segment_bytes=segment_bytes,
            buffer_bytes=buffer_bytes,
            timeout_s=timeout_s,
            namespace=namespace,
        )
        return await cls.open(config)

    @classmethod
    async def open(cls, config: MooncakeConfig) -> MooncakeKVStore:
        """Raises `StoreUnavailable` when the wheel, libibverbs or the master is missing."""
        client_class = _client_class()
        client, worker = await _new_client(client_class, config)
        return cls(config, client_class, client, worker)

    @property
    def available(self) -> bool:
        return self._available

    # -- the KVStore calls --------------------------------------------------------------------

    async def exists(self, keys: Sequence[bytes]) -> list[bool]:
        return [code == FOUND for code in await self._exist_codes(keys, stop_at_gap=False)]

    async def prefix_blocks(self, keys: Sequence[bytes]) -> int:
        codes = await self._exist_codes(keys, stop_at_gap=True)
        for i, code in enumerate(codes):
            if code != FOUND:
                return i
        return len(codes)

    async def put(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        # Tail first: a chain's head is put last, so the master's lease-ordered eviction should
        # take the tail before the head (best effort: Mooncake decides).
        prefix, limit = self._prefix, self.config.buffer_bytes
        todo = [
            (prefix + key.hex(), bytes(value))
            for key, value in reversed(items)
            if 0 < len(value) <= limit
        ]
        if len(todo) < len(items):
            self._refuse(len(items) - len(todo))
        if not todo or not self._admit():
            return 0
        names = [name for name, _ in todo]
        values = [value for _, value in todo]
        self._value_bytes = max(self._value_bytes, *map(len, values))
        answer = await self._call(calls.put_all, names, values)
        if answer is None:
            return 0
        stored, code = answer
        self._note(code, transferred=code == 0)
        self._puts += stored
        return stored

    async def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(keys)
        self._gets += len(keys)
        if not keys or not self._admit():
            return out
        names = self._names(keys)
        answer = await self._call(calls.get_all, names, self._value_bytes)
        if answer is None:
            return out
        values, states = answer
        hits = 0
        for i, (value, state) in enumerate(zip(values, states, strict=True)):
            if state == READ:
                out[i] = value
                hits += 1
                self._value_bytes = max(self._value_bytes, len(value))
        self._hits += hits
        unreadable = UNREADABLE in states
        self._note(min(states), transferred=hits > 0 and not unreadable)
        if unreadable:
            self._note(calls.TRANSFER_FAIL)
        return out

    async def remove(self, keys: Sequence[bytes]) -> int:
        if not keys or not self._admit():
            return 0
        codes = await self._call(calls.remove_all, self._names(keys))
        if codes is None:
            return 0
        self._note(min((c for c in codes if c != calls.NOT_FOUND), default=0))
        return codes.count(0)

    async def clear(self) -> int:
        if not self._admit():
            return 0
        answer = await self._call(calls.remove_namespace, self.config.namespace)
        if answer is None:
            return 0
        self._note(min(answer, 0))
        return max(answer, 0)

    async def stats(self) -> StoreStats:
        pool: dict[str, float] = {}
        if self.config.metrics is not None:
            pool = await read_master_metrics(self.config.metrics, _METRICS_S) or {}
        return StoreStats(
            backend=self.name,
            capacity_bytes=int(pool.get("master_total_capacity_bytes", self.config.segment_bytes)),
            used_bytes=int(pool.get("master_allocated_bytes", 0)),
            blocks=int(pool.get("master_key_count", 0)),
            puts=self._puts,
            gets=self._gets,
            hits=self._hits,
            evictions=int(pool.get("master_evicted_key_count", 0)),
            errors=self._errors,
            available=self._available and not self._closed,
        )

    async def close(self) -> None:
        """Close the client on its worker, waiting at most `close_timeout_s` (then it finishes,
        or hangs, on its own daemon thread)."""
        if self._closed:
            return
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        done = self._worker.shutdown(then=self._client.close)
        await asyncio.wait([asyncio.wrap_future(done)], timeout=self.config.close_timeout_s)

    # -- health ------------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Whether to call the client now. While it is known down: no, answer at once and count
        an error; once the back-off has passed, start one probe in the background."""
        if self._available and not self._closed:
            return True
        self._errors += 1
        loop = asyncio.get_running_loop()
        if not self._closed and self._probe is None and loop.time() >= self._down_until:
            self._probe = loop.create_task(self._recover())
        return False

    def _mark_down(self, why: str) -> None:
        if self._available:
            log.warning("Mooncake store unavailable (%s): answering misses, probing", why)
        self._available = False
        self._down_until = asyncio.get_running_loop().time() + self.config.backoff_s

    def _note(self, code: int, *, transferred: bool = False) -> None:
        """Book one client answer: `code` < 0 is a failure; -900 means the master is gone;
        TRANSFER_FAIL in a row asks for a fresh client."""
        if transferred:
            self._transfer_failures = 0
        if code >= 0:
            return
        self._errors += 1
        if code == calls.RPC_FAIL:
            self._mark_down("the master does not answer (RPC_FAIL)")
        elif code == calls.TRANSFER_FAIL:
            self._transfer_failures += 1
            recent = asyncio.get_running_loop().time() - self._last_reset < _RESET_MIN_INTERVAL_S
            if self._transfer_failures >= self.config.transfer_failures_before_reset and not recent:
                self._reset_wanted = True
                self._mark_down(f"{self._transfer_failures} transfer failures in a row")

    async def _recover(self) -> None:
        """The probe: the master accepts connections, no call is stuck on the worker, (a fresh
        client if one is wanted) and one `batch_is_exist` answers."""
        loop = asyncio.get_running_loop()
        try:
            if self._worker.in_flight or not await _accepts(self.config.master):
                return
            if self._reset_wanted:
                await self._reset_client()
            codes = await self._worker.call(
                loop.time() + self.config.timeout_s,
                calls.exist_codes,
                self._client,
                [f"{self.config.namespace}/probe"],
            )
            if codes[0] >= 0:
                self._available = True
                self._transfer_failures = 0
                log.warning("Mooncake store available again")
        except Exception as exc:
            log.debug("Mooncake probe failed: %r", exc)
        finally:
            self._down_until = loop.time() + self.config.backoff_s
            self._probe = None

    async def _reset_client(self) -> None:
        """A fresh client (fresh transfer engine, fresh worker thread): the cure for a jammed
        transport (§5). The old client closes on its own thread; if that hangs, it is abandoned."""
        old_client, old_worker = self._client, self._worker
        self._client, self._worker = await _new_client(self._client_class, self.config)
        old_worker.shutdown(then=old_client.close)
        self._last_reset = asyncio.get_running_loop().time()
        self._reset_wanted = False
        self._transfer_failures = 0
        self.resets += 1
        log.warning("Mooncake client rebuilt after repeated transfer failures")

    # -- plumbing ----------------------------------------------------------------------------

    def _refuse(self, count: int) -> None:
        """Values Mooncake cannot store: empty ones (-600, and they sink their whole batch) and
        ones larger than the staging buffer (-600 for the whole batch, §4). Not stored; errors."""
        self._errors += count
        log.warning(
            "%d values not stored: empty or over the %d-byte buffer",
            count,
            self.config.buffer_bytes,
        )

    def _names(self, keys: Sequence[bytes]) -> list[str]:
        prefix = self._prefix
        return [prefix + key.hex() for key in keys]

    async def _call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """`fn(client, *args, cut)` as one job on the worker, bounded by `timeout_s`; None (and
        an error counted) if it fails, times out or finds the worker full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_s
        cut = calls.Cut(
            self.config.batch_objects, self._byte_budget, time.monotonic() + self.config.timeout_s
        )
        try:
            return await self._worker.call(deadline, fn, self._client, *args, cut)
        except WorkerBusy:
            self._errors += 1
        except TimeoutError:
            self._errors += 1
            self._mark_down(f"a call took over {self.config.timeout_s}s")
        except Exception:
            self._errors += 1
            log.warning("Mooncake call %r failed", fn, exc_info=True)
        return None

    async def _exist_codes(self, keys: Sequence[bytes], *, stop_at_gap: bool) -> list[int]:
        """`batch_is_exist` per key (0 where not asked: after a gap, or when the store is down)."""
        if not keys or not self._admit():
            return [0] * len(keys)
        names = self._names(keys)
        codes = await self._call(partial(calls.exist_all, stop_at_gap=stop_at_gap), names)
        if codes is None:
            return [0] * len(keys)
        self._note(min(codes))
        return codes
