"""The simulated worker's KV I/O: real blocks in the store, moved along the chosen read path.

- Read path `pe`: the prefill reads the longest stored prefix of its prompt's blocks through its
  own storage NIC.
- Read path `de`: the decode reads them through *its* storage NIC into its own staging segment
  (a `RoomBoard` keyed by bootstrap room), and the prefill pulls them from there over the compute
  network. The decode keeps them: it needs the hit KV for decoding anyway, so only the prefill's
  new KV crosses back.
- Read path `split`: both at once. The prefill reads the first `split_cut` hit blocks through its
  storage NIC while the decode reads and stages the rest, which the prefill pulls as for `de`;
  two storage NICs load one request's hits in parallel.
- Whoever receives blocks verifies every checksum before it "computes"; the tokens it could not
  verify are recomputed instead (fewer cached tokens, never a failed request).
- The prefill persists the prompt's new full blocks; the decode persists each block it completes
  while generating (`DecodeBlockWriter`), so the next turn of the session finds them.

Link time is modelled (`EngineRunner.transfer`, sized by the engine model's KV bytes); the bytes
that really move are the scaled blocks of `kvstore.block`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from engines.sim_worker.rendezvous import RoomBoard
from engines.sim_worker.runner import EngineRunner
from kvstore.block import BlockShape, encode_block, verify_block
from kvstore.block_key import chain_blocks
from kvstore.errors import CorruptBlock
from kvstore.store import KVStore
from kvstore.wire import MalformedBody, decode_values

log = logging.getLogger(__name__)

StagedBlocks = tuple[bytes, ...]


def split_cut(
    usable_blocks: int, expected_hit_tokens: int | None, block_tokens: int, pe_share: float
) -> int:
    """Read path `split`: how many leading hit blocks the prefill reads (the decode stages the
    rest). Pure, and both workers call it on the same request, so they cut alike without talking.

    The share is of the hits the gateway expects (those it scheduled the reads for), capped by
    the blocks a prefill may load at all.
    """
    n = usable_blocks
    if expected_hit_tokens is not None:
        n = min(n, max(expected_hit_tokens, 0) // block_tokens)
    return min(max(round(pe_share * n), 0), n)


@dataclass(slots=True)
class KVCounters:
    """What this worker's KV I/O did (stored bytes unless named `modelled`)."""

    storage_read_blocks: int = 0
    storage_read_bytes: int = 0
    storage_read_modelled_bytes: float = 0.0
    staged_blocks: int = 0
    """Blocks this decode read and staged for a prefill."""
    received_blocks: int = 0
    """Blocks this prefill pulled from a decode's staging segment."""
    received_bytes: int = 0
    stage_failures: int = 0
    """Read paths `de` and `split`: the staged blocks never arrived (the prefill recomputed)."""
    written_blocks: int = 0
    written_bytes: int = 0
    lost_blocks: int = 0
    """Blocks the look-up found that could not be read back or failed their check."""
    corrupt_blocks: int = 0
    recomputed_tokens: int = 0
    """Tokens the gateway expected to be cached that had to be computed."""


class WorkerKV:
    def __init__(
        self,
        store: KVStore,
        shape: BlockShape,
        runner: EngineRunner,
        default_root: bytes,
        staging: RoomBoard[StagedBlocks],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.store = store
        self.shape = shape
        self.runner = runner
        self.default_root = default_root
        self.staging = staging
        self.client = client
        self.counters = KVCounters()
        # Background writes and clean-ups; each removes itself, so the set is bounded by load.
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def block_tokens(self) -> int:
        return self.shape.block_tokens

    def keys(self, root: bytes | None, prompt_ids: Sequence[int]) -> list[bytes]:
        return chain_blocks(root or self.default_root, prompt_ids, self.block_tokens)

    def usable(self, keys: Sequence[bytes], prompt_len: int) -> Sequence[bytes]:
        """The blocks a prefill may load: SGLang always computes at least the last token."""
        return keys[: max(prompt_len - 1, 0) // self.block_tokens]

    def modelled_bytes(self, blocks: int) -> float:
        return blocks * self.shape.modelled_bytes

    # --- reads ---------------------------------------------------------------------------------

    async def read(self, rid: str, keys: Sequence[bytes]) -> list[bytes]:
        """The verified leading blocks of `keys`, read through this node's storage NIC."""
        found = await self.store.prefix_blocks(keys) if keys else 0
        if found == 0:
            return []
        link = self.runner.links.snic
        values, _ = await asyncio.gather(
            self.store.get(keys[:found]),
            self.runner.transfer(link, rid, self.modelled_bytes(found)),
        )
        c = self.counters
        c.storage_read_modelled_bytes += self.modelled_bytes(found)
        good = self._verified(keys[:found], values)
        c.storage_read_blocks += len(good)
        c.storage_read_bytes += sum(len(v) for v in good)
        return good

    def _verified(self, keys: Sequence[bytes], values: Sequence[bytes | None]) -> list[bytes]:
        good: list[bytes] = []
        for key, value in zip(keys, values, strict=True):
            if value is None:
                break
            try:
                verify_block(key, value)
            except CorruptBlock as exc:
                log.warning("dropping %s", exc)
                self.counters.corrupt_blocks += 1
                self._background(self.store.remove([key]))  # so a later write can replace it
                break
            good.append(value)
        self.counters.lost_blocks += len(keys) - len(good)
        return good

    async def stage(self, rid: str, room: int, keys: Sequence[bytes]) -> int:
        """Decode side of read paths `de` and `split`: read the hit blocks (`split`: the decode's
        part of them) and stage them for the prefill."""
        try:
            blocks = await self.read(rid, keys)
        except Exception:
            self.staging.publish(room, ())  # the prefill recomputes rather than waits
            raise
        self.staging.publish(room, tuple(blocks))
        self.counters.staged_blocks += len(blocks)
        return len(blocks)

    async def receive(
        self, rid: str, stager: str, room: int, keys: Sequence[bytes], timeout_s: float
    ) -> list[bytes]:
        """Prefill side of read path `de`: pull the staged blocks over the compute network."""
        raw = await self._pull(stager, room, timeout_s)
        if raw is None:
            self.counters.stage_failures += 1
            return []
        try:
            values = [v for v in decode_values(raw) if v is not None][: len(keys)]
        except MalformedBody:
            self.counters.stage_failures += 1
            return []
        await self.runner.transfer(self.runner.links.cnic, rid, self.modelled_bytes(len(values)))
        good = self._verified(keys[: len(values)], values)
        self.counters.received_blocks += len(good)
        self.counters.received_bytes += sum(len(v) for v in good)
        return good

    async def read_split(
        self, rid: str, keys: Sequence[bytes], cut: int, stager: str, room: int, timeout_s: float
    ) -> list[bytes]:
        """Prefill side of read path `split`: read `keys[:cut]` through this node's storage NIC
        while pulling the decode's staged `keys[cut:]` over the compute network.

        A prefix must be contiguous, so the staged blocks count only behind a whole own part;
        with nothing to stage (cut at the end) the decode publishes nothing and nothing is pulled.
        """
        pulled = (
            self.receive(rid, stager, room, keys[cut:], timeout_s)
            if cut < len(keys)
            else _no_blocks()
        )
        own, staged = await asyncio.gather(self.read(rid, keys[:cut]), pulled)
        return own + staged if len(own) == cut else own

    async def _pull(self, stager: str, room: int, timeout_s: float) -> bytes | None:
        if self.client is None:
            return None
        url = f"{stager.rstrip('/')}/dualpath/stage/{room}"
        try:
            r = await self.client.get(
                url, params={"timeout": f"{timeout_s:.3f}"}, timeout=timeout_s + 5.0
            )
        except httpx.HTTPError as exc:
            log.warning("staged KV of room %d not pulled from %s: %s", room, stager, exc)
            return None
        return r.content if r.status_code == 200 else None

    # --- writes --------------------------------------------------------------------------------

    async def persist(self, keys: Sequence[bytes], start: int) -> None:
        """Write blocks `start..` of a chain (the ones this engine just computed)."""
        if start >= len(keys):
            return
        size = self.shape.payload_bytes
        items = [(k, encode_block(k, self.block_tokens, size)) for k in keys[start:]]
        stored = await self.store.put(items)
        self.counters.written_blocks += stored
        self.counters.written_bytes += stored * (self.shape.stored_bytes)

    def writer(
        self, root: bytes | None, keys: Sequence[bytes], prompt_ids: Sequence[int]
    ) -> DecodeBlockWriter:
        return DecodeBlockWriter(self, keys[-1] if keys else root or self.default_root, prompt_ids)

    def note_expected(self, expected: int | None, cached: int) -> None:
        if expected is not None and expected > cached:
            self.counters.recomputed_tokens += expected - cached

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _no_blocks() -> list[bytes]:
    return []


class DecodeBlockWriter:
    """Persists every block a decode completes, chained on from the prompt's last full block.

    Writes run in the background as tokens come; `flush` waits for them, so a finished stream's
    blocks are in the store before its last chunk goes out and the next turn finds them.
    """

    def __init__(self, kv: WorkerKV, parent: bytes, prompt_ids: Sequence[int]) -> None:
        self._kv = kv
        self._parent = parent
        """Key of the prompt's last full block (the chain root if it has none)."""
        self._pending = list(prompt_ids[len(prompt_ids) // kv.block_tokens * kv.block_tokens :])
        self._writes: list[asyncio.Task[None]] = []

    def add(self, token_id: int) -> None:
        self._pending.append(token_id)
        if len(self._pending) < self._kv.block_tokens:
            return
        (key,) = chain_blocks(self._parent, self._pending, self._kv.block_tokens)
        self._parent, self._pending = key, []
        self._writes.append(asyncio.ensure_future(self._kv.persist([key], 0)))

    async def flush(self) -> None:
        writes, self._writes = self._writes, []
        for result in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("a decode block write failed: %r", result)

    def cancel(self) -> None:
        for task in self._writes:
            task.cancel()
        self._writes = []
