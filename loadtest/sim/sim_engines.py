"""The engines of a simulated cluster: the pure state machines of `engines.engine_core` and
`engines.node_links`, stepped by the event loop instead of asyncio sleeps (the simulated SGLang
worker steps the very same objects in real time)."""

from __future__ import annotations

from collections.abc import Callable

from engines.engine_core import DecodeBatch, DecodeSeq, PrefillJob, PrefillQueue
from engines.engine_model import EngineModel
from engines.node_links import LinkQueue, NodeLinks, Transfer
from loadtest.sim.event_loop import EventLoop

Done = Callable[[], None]


class SimLink:
    """One NIC: FIFO transfers at full bandwidth, `done` called when each one's last byte lands."""

    def __init__(self, loop: EventLoop, queue: LinkQueue, instant: bool = False) -> None:
        self.loop = loop
        self.queue = queue
        self.instant = instant
        """Oracle: I/O costs nothing."""
        self._done: dict[str, Done] = {}
        self._busy = False

    def send(self, tid: str, nbytes: float, done: Done) -> None:
        if self.instant or nbytes <= 0:
            done()
            return
        self.queue.add(Transfer(tid, nbytes))
        self._done[tid] = done
        self._kick()

    def _kick(self) -> None:
        if self._busy:
            return
        step = self.queue.next_step()
        if step is None:
            return
        self._busy = True
        self.loop.after(step.duration_s, self._finish, step)

    def _finish(self, step: object) -> None:
        self.queue.finish_step(step)  # type: ignore[arg-type]
        self._busy = False
        done = self._done.pop(step.transfer.tid)  # type: ignore[attr-defined]
        done()
        self._kick()


class SimNode:
    def __init__(self, loop: EventLoop, model: EngineModel, instant: bool = False) -> None:
        links = NodeLinks.of(model.node)
        self.links = links
        self.snic = SimLink(loop, links.snic, instant)
        self.cnic = SimLink(loop, links.cnic, instant)


class SimPrefill:
    """A prefill engine: one forward at a time, FIFO."""

    def __init__(self, loop: EventLoop, model: EngineModel, node: SimNode) -> None:
        self.loop = loop
        self.queue = PrefillQueue(model, max_waiting=1 << 30)
        self.node = node
        self._done: dict[str, Done] = {}
        self._busy = False
        self.busy_s = 0.0

    def submit(self, rid: str, append: int, cached: int, done: Done) -> None:
        self.queue.add(PrefillJob(rid, append, cached))
        self._done[rid] = done
        self._kick()

    def _kick(self) -> None:
        if self._busy:
            return
        step = self.queue.next_step()
        if step is None:
            return
        self._busy = True
        self.busy_s += step.duration_s
        self.loop.after(step.duration_s, self._finish, step)

    def _finish(self, step: object) -> None:
        self.queue.finish_step(step)  # type: ignore[arg-type]
        self._busy = False
        self._done.pop(step.job.rid)()  # type: ignore[attr-defined]
        self._kick()


class SimDecode:
    """A decode engine: continuous batching, one step for every running sequence at once."""

    def __init__(self, loop: EventLoop, model: EngineModel, node: SimNode, max_tokens: int) -> None:
        self.loop = loop
        self.batch = DecodeBatch(
            model, max_running=1 << 20, max_total_tokens=max_tokens, max_waiting=1 << 30
        )
        self.node = node
        self._on_token: dict[str, Callable[[int, bool], None]] = {}
        self._busy = False

    def join(
        self, rid: str, context: int, output: int, on_token: Callable[[int, bool], None]
    ) -> None:
        self.batch.add(DecodeSeq(rid, context, max(output, 1)))
        self._on_token[rid] = on_token
        self._kick()

    def _kick(self) -> None:
        if self._busy:
            return
        step = self.batch.next_step()
        if step is None:
            return
        self._busy = True
        self.loop.after(step.duration_s, self._finish, step)

    def _finish(self, step: object) -> None:
        self._busy = False
        for emitted in self.batch.finish_step(step):  # type: ignore[arg-type]
            callback = self._on_token[emitted.rid]
            if emitted.finished:
                del self._on_token[emitted.rid]
            callback(emitted.index, emitted.finished)
        self._kick()
