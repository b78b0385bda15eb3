"""The engines of a simulated cluster: the pure state machines of `engines.engine_core` and
`engines.node_links`, stepped by the event loop instead of asyncio sleeps (the simulated SGLang
worker steps the very same objects in real time)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from engines.engine_core import (
    DecodeBatch,
    DecodeRun,
    DecodeSeq,
    PrefillJob,
    PrefillQueue,
    PrefillStep,
)
from engines.engine_model import EngineModel
from engines.node_links import LinkQueue, NodeLinks, Transfer, TransferStep
from loadtest.sim.event_loop import EventLoop

Done = Callable[[], None]
S = TypeVar("S", bound="_Step")


class _Queue(Protocol[S]):
    def next_step(self) -> S | None: ...

    def finish_step(self, step: S) -> object: ...


class _Step(Protocol):
    @property
    def duration_s(self) -> float: ...


class _OneAtATime(Generic[S]):
    """Drives a pure queue that runs one step at a time (`next_step` / `finish_step`): each
    step's end is an event, and the work it finished is told by its ids."""

    def __init__(
        self, loop: EventLoop, queue: _Queue[S], ids_of: Callable[[S], Iterable[str]]
    ) -> None:
        self.loop = loop
        self._queue = queue
        self._ids_of = ids_of
        self._done: dict[str, Done] = {}
        self._busy = False

    def _start(self, work_id: str, done: Done) -> None:
        self._done[work_id] = done
        self._kick()

    def _kick(self) -> None:
        if self._busy:
            return
        step = self._queue.next_step()
        if step is None:
            return
        self._busy = True
        self.loop.after(step.duration_s, self._finish, step)

    def _finish(self, step: S) -> None:
        self._queue.finish_step(step)
        self._busy = False
        for work_id in self._ids_of(step):
            self._done.pop(work_id)()
        self._kick()


class SimLink(_OneAtATime[TransferStep]):
    """One NIC: FIFO transfers at full bandwidth, `done` called when each one's last byte lands."""

    def __init__(self, loop: EventLoop, queue: LinkQueue, instant: bool = False) -> None:
        super().__init__(loop, queue, lambda step: (step.transfer.tid,))
        self.queue = queue
        self.instant = instant
        """Oracle: I/O costs nothing."""

    def send(self, tid: str, nbytes: float, done: Done) -> None:
        if self.instant or nbytes <= 0:
            done()
            return
        self.queue.add(Transfer(tid, nbytes))
        self._start(tid, done)


class SimNode:
    def __init__(self, loop: EventLoop, model: EngineModel, instant: bool = False) -> None:
        links = NodeLinks.of(model.node)
        self.links = links
        self.snic = SimLink(loop, links.snic, instant)
        self.cnic = SimLink(loop, links.cnic, instant)


class SimPrefill(_OneAtATime[PrefillStep]):
    """A prefill engine: one batched forward at a time, FIFO (`PrefillQueue`). A request joins
    once its cached KV is in a DRAM buffer (the paper's PE or DE buffer); with layer-wise prefill
    the copy into HBM hides behind the compute, without it the forward waits for it."""

    def __init__(
        self, loop: EventLoop, model: EngineModel, node: SimNode, layerwise: bool = False
    ) -> None:
        self.queue = PrefillQueue(model, max_waiting=1 << 30, layerwise=layerwise)
        super().__init__(loop, self.queue, lambda step: step.rids)
        self.node = node

    def submit(self, rid: str, append: int, cached: int, done: Done) -> None:
        self.queue.add(PrefillJob(rid, append, cached))
        self._start(rid, done)


class SimDecode:
    """A decode engine: continuous batching, stepped a run at a time (`DecodeBatch.next_run`):
    the steps until the first sequence finishes, at once. A sequence that joins meanwhile cuts
    the run at the end of the step in progress, as a real engine admits between steps. Tokens
    are not one event each: a run of 100 steps over 200 sequences is one event, not 20,000."""

    def __init__(self, loop: EventLoop, model: EngineModel, node: SimNode, max_tokens: int) -> None:
        self.loop = loop
        self.batch = DecodeBatch(
            model, max_running=1 << 20, max_total_tokens=max_tokens, max_waiting=1 << 30
        )
        self.node = node
        self._callbacks: dict[str, tuple[Callable[[float], None], Done]] = {}
        self._run: DecodeRun | None = None
        self._run_start = 0.0
        self._cut_at: float | None = None
        self._epoch = 0
        """Bumped to cancel a scheduled end of run."""

    def join(
        self, rid: str, context: int, tokens: int, on_second: Callable[[float], None], done: Done
    ) -> None:
        """Generate `tokens` more tokens; `on_second(t)` when the first of them is out (the
        request's second token, at virtual time t), `done()` when the last is."""
        self.batch.add(DecodeSeq(rid, context, tokens))
        self._callbacks[rid] = (on_second, done)
        if self._run is None:
            self._start_run()
        else:
            self._cut()

    def _start_run(self) -> None:
        run = self._run = self.batch.next_run()
        self._cut_at = None
        if run is None:
            return
        self._run_start = self.loop.now
        self._epoch += 1
        self.loop.after(run.duration_s, self._end_run, self._epoch, run.steps)

    def _cut(self) -> None:
        run = self._run
        assert run is not None
        steps = min(int((self.loop.now - self._run_start) / run.step_s) + 1, run.steps)
        at = self._run_start + steps * run.step_s
        if steps >= run.steps or (self._cut_at is not None and self._cut_at <= at):
            return  # the run ends (or is already cut) by then: the newcomer joins there
        self._cut_at = at
        self._epoch += 1
        self.loop.at(at, self._end_run, self._epoch, steps)

    def _end_run(self, epoch: int, steps: int) -> None:
        if epoch != self._epoch:
            return
        run = self._run
        assert run is not None
        started, finished = self.batch.advance(run, steps)
        first_step_at = self._run_start + run.step_s
        for rid in started:
            self._callbacks[rid][0](first_step_at)
        for rid in finished:
            self._callbacks.pop(rid)[1]()
        self._start_run()
