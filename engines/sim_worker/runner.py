"""Drives the pure engine state machines in real time with asyncio.

One loop per half: ask the state machine for its next step, sleep the modelled duration
(× time_scale) and report the step finished. Handlers await a prefill or iterate the tokens of a
decode; both give their place back when cancelled, so an aborted request stops costing "GPU".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from engines.engine_core import (
    DecodeBatch,
    DecodeSeq,
    PrefillJob,
    PrefillQueue,
    TokenEmitted,
)
from engines.engine_model import EngineModel
from engines.node_links import LinkQueue, NodeLinks, Transfer
from engines.sim_worker.errors import QueueFull, RequestAborted


class EngineRunner:
    def __init__(
        self,
        model: EngineModel,
        *,
        time_scale: float,
        max_running: int,
        max_total_tokens: int,
        links: NodeLinks | None = None,
    ) -> None:
        self.time_scale = time_scale
        self.links = links or NodeLinks.of(model.node)
        self.prefill_queue = PrefillQueue(model)
        self.decode_batch = DecodeBatch(
            model, max_running=max_running, max_total_tokens=max_total_tokens
        )
        self._prefill_done: dict[str, asyncio.Future[None]] = {}
        self._decode_out: dict[str, asyncio.Queue[TokenEmitted | None]] = {}
        self._moved: dict[str, asyncio.Future[None]] = {}
        self._link_wake = {link.name: asyncio.Event() for link in self._link_queues}
        self._prefill_wake = asyncio.Event()
        self._decode_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.gen_throughput = 0.0
        """Tokens per second of the last decode step."""

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._prefill_loop(), name="sim-prefill"),
            asyncio.create_task(self._decode_loop(), name="sim-decode"),
            *(
                asyncio.create_task(self._link_loop(link), name=f"sim-{link.name}")
                for link in self._link_queues
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def prefill(self, rid: str, append_tokens: int, cached_tokens: int) -> None:
        """Queue one prefill forward and return when it has run."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.prefill_queue.add(PrefillJob(rid, append_tokens, cached_tokens)):
            raise QueueFull("prefill queue is full")
        self._prefill_done[rid] = fut
        self._prefill_wake.set()
        try:
            await fut
        finally:
            self._prefill_done.pop(rid, None)
            self.prefill_queue.abort(rid)  # no-op unless we were cancelled while waiting

    @property
    def _link_queues(self) -> tuple[LinkQueue, LinkQueue]:
        return (self.links.snic, self.links.cnic)

    async def transfer(self, link: LinkQueue, tid: str, nbytes: float) -> None:
        """Queue `nbytes` (modelled) on one of this node's links and return once they moved."""
        if nbytes <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not link.add(Transfer(tid, nbytes)):
            raise QueueFull(f"{link.name} queue is full")
        key = f"{link.name}/{tid}"
        self._moved[key] = fut
        self._link_wake[link.name].set()
        try:
            await fut
        finally:
            self._moved.pop(key, None)
            link.abort(tid)  # no-op unless we were cancelled while waiting

    async def decode(
        self, rid: str, context_tokens: int, max_new_tokens: int
    ) -> AsyncIterator[TokenEmitted]:
        """The tokens of one sequence as the continuous batch produces them."""
        if max_new_tokens <= 0:
            return
        out: asyncio.Queue[TokenEmitted | None] = asyncio.Queue()
        if not self.decode_batch.add(DecodeSeq(rid, context_tokens, max_new_tokens)):
            raise QueueFull("decode queue is full")
        self._decode_out[rid] = out
        self._decode_wake.set()
        try:
            while True:
                item = await out.get()
                if item is None:
                    raise RequestAborted(f"request {rid} aborted")
                yield item
                if item.finished:
                    return
        finally:
            self._decode_out.pop(rid, None)
            self.decode_batch.abort(rid)

    def abort(self, rid: str) -> None:
        """Drop `rid` from both halves and wake whoever waits on it."""
        self.prefill_queue.abort(rid)
        self.decode_batch.abort(rid)
        fut = self._prefill_done.get(rid)
        if fut is not None and not fut.done():
            fut.set_exception(RequestAborted(f"request {rid} aborted"))
        out = self._decode_out.get(rid)
        if out is not None:
            out.put_nowait(None)

    async def _sleep(self, duration_s: float) -> None:
        # time_scale 0 still yields once so the loops cannot starve the handlers.
        await asyncio.sleep(duration_s * self.time_scale)

    async def _prefill_loop(self) -> None:
        queue = self.prefill_queue
        while True:
            step = queue.next_step()
            if step is None:
                self._prefill_wake.clear()
                await self._prefill_wake.wait()
                continue
            await self._sleep(step.duration_s)
            queue.finish_step(step)
            for rid in step.rids:
                fut = self._prefill_done.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def _link_loop(self, link: LinkQueue) -> None:
        wake = self._link_wake[link.name]
        while True:
            step = link.next_step()
            if step is None:
                wake.clear()
                await wake.wait()
                continue
            await self._sleep(step.duration_s)
            link.finish_step(step)
            fut = self._moved.get(f"{link.name}/{step.transfer.tid}")
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _decode_loop(self) -> None:
        batch = self.decode_batch
        while True:
            step = batch.next_step()
            if step is None:
                self.gen_throughput = 0.0
                self._decode_wake.clear()
                await self._decode_wake.wait()
                continue
            started = time.monotonic()
            await self._sleep(step.duration_s)
            emitted = batch.finish_step(step)
            elapsed = max(time.monotonic() - started, step.duration_s * self.time_scale, 1e-9)
            self.gen_throughput = len(emitted) / elapsed
            for token in emitted:
                out = self._decode_out.get(token.rid)
                if out is not None:
                    out.put_nowait(token)

    # --- load surface -------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return self.prefill_queue.num_running + len(self.decode_batch.running)

    @property
    def num_waiting(self) -> int:
        return self.prefill_queue.num_waiting + len(self.decode_batch.waiting)

    @property
    def used_tokens(self) -> int:
        return self.decode_batch.used_tokens + self.prefill_queue.pending_tokens

    @property
    def idle(self) -> bool:
        return self.num_running == 0 and self.num_waiting == 0
