"""The engine state machines: a FIFO prefill queue and a continuously batched decode loop.

Pure: no I/O, no clock. A driver asks for the next step (what runs and for how long), lets that
much time pass in its own clock (asyncio.sleep in the simulated worker, an event in the
virtual-clock simulator) and then reports the step finished. The same objects therefore run in real
and in virtual time.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from engines.engine_model import EngineModel


@dataclass(slots=True)
class PrefillJob:
    rid: str
    append_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class PrefillStep:
    """One prefill forward over a batch of requests; all of them finish together."""

    jobs: tuple[PrefillJob, ...]
    duration_s: float

    @property
    def rids(self) -> tuple[str, ...]:
        return tuple(job.rid for job in self.jobs)


@dataclass(slots=True)
class PrefillQueue:
    """Requests wait in FIFO order; one prefill forward runs at a time, over as many waiting
    requests as fit in `max_batch_tokens` new tokens (SGLang's `--chunked-prefill-size`; a
    request larger than that runs alone, unchunked).

    Without `layerwise` prefill a forward first copies its requests' whole loaded KV from the
    DRAM buffer into HBM; layer-wise, each layer's copy hides behind the previous layer's compute.
    """

    model: EngineModel
    max_waiting: int = 4096
    max_batch_tokens: int = 16384
    layerwise: bool = False
    waiting: deque[PrefillJob] = field(default_factory=deque)
    running: tuple[PrefillJob, ...] = ()

    def add(self, job: PrefillJob) -> bool:
        """Queue a job; False when the queue is full (the caller rejects the request)."""
        if len(self.waiting) >= self.max_waiting:
            return False
        self.waiting.append(job)
        return True

    def abort(self, rid: str) -> bool:
        for job in self.waiting:
            if job.rid == rid:
                self.waiting.remove(job)
                return True
        return False

    def next_step(self) -> PrefillStep | None:
        waiting = self.waiting
        if self.running or not waiting:
            return None
        first = waiting.popleft()
        jobs = [first]
        room = self.max_batch_tokens - max(first.append_tokens, 1)
        while waiting and max(waiting[0].append_tokens, 1) <= room:
            job = waiting.popleft()
            room -= max(job.append_tokens, 1)
            jobs.append(job)
        self.running = tuple(jobs)
        m = self.model
        duration = m.node.step_overhead_s
        for job in jobs:
            duration += m.prefill_marginal_s(job.append_tokens, job.cached_tokens)
            if not self.layerwise:
                duration += m.h2d_s(job.cached_tokens)
        return PrefillStep(self.running, duration)

    def finish_step(self, step: PrefillStep) -> None:
        if self.running is step.jobs:
            self.running = ()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def pending_tokens(self) -> int:
        return sum(j.append_tokens + j.cached_tokens for j in (*self.waiting, *self.running))


@dataclass(slots=True)
class DecodeSeq:
    """A sequence to decode. Running in a `DecodeBatch`, its `generated` and `context_tokens`
    are as of the batch's step `synced` (`DecodeBatch.generated` gives the current count)."""

    rid: str
    context_tokens: int
    max_new_tokens: int
    generated: int = 0
    synced: int = 0


@dataclass(frozen=True, slots=True)
class DecodeStep:
    rids: tuple[str, ...]
    duration_s: float


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """Several decode steps of an unchanging batch, for a driver that needs no token one by one
    (the virtual-clock simulator): until the first running sequence finishes."""

    rids: tuple[str, ...]
    steps: int
    step_s: float
    """Duration of one step, at the run's mean context."""

    @property
    def duration_s(self) -> float:
        return self.steps * self.step_s


@dataclass(frozen=True, slots=True)
class TokenEmitted:
    rid: str
    index: int
    """0-based index of this output token for the sequence."""
    finished: bool


@dataclass(slots=True)
class DecodeBatch:
    """Continuous batching: sequences join between steps and leave as soon as they finish.

    A sequence is admitted while the batch has room (`max_running`) and its context fits into the
    KV pool (`max_total_tokens`); otherwise it waits in FIFO order.

    Every running sequence takes every step, so the batch counts steps once (`_clock`) instead
    of advancing each sequence: a run of steps costs O(log n) plus the sequences that start or
    finish, not O(batch) (a simulated decode engine holds hundreds of sequences and ends a run
    whenever one of them finishes or joins).
    """

    model: EngineModel
    max_running: int = 256
    max_total_tokens: int = 1 << 22
    max_waiting: int = 4096
    waiting: deque[DecodeSeq] = field(default_factory=deque)
    running: dict[str, DecodeSeq] = field(default_factory=dict)
    _clock: int = 0
    """Steps the batch has taken."""
    _ends: list[tuple[int, int, DecodeSeq]] = field(default_factory=list)
    """(the step at which a running sequence finishes, admission order, it): a heap; entries of
    sequences that left are dropped when they surface."""
    _admitted: int = 0
    _fresh: list[DecodeSeq] = field(default_factory=list)
    """Admitted with no token yet, in admission order."""
    _context_base: int = 0
    """Σ (context − synced) over running sequences: their context is this + count × clock."""
    _used_base: int = 0
    """Σ (context + max new − synced) over running sequences (`used_tokens`, likewise)."""

    def add(self, seq: DecodeSeq) -> bool:
        if len(self.waiting) >= self.max_waiting:
            return False
        self.waiting.append(seq)
        return True

    def abort(self, rid: str) -> bool:
        seq = self.running.pop(rid, None)
        if seq is not None:
            self._forget(seq)
            return True
        for seq in self.waiting:
            if seq.rid == rid:
                self.waiting.remove(seq)
                return True
        return False

    def generated(self, rid: str) -> int:
        """Tokens a running sequence has generated so far."""
        seq = self.running[rid]
        return seq.generated + self._clock - seq.synced

    @property
    def used_tokens(self) -> int:
        """Σ (context + max new tokens) over the running sequences."""
        return self._used_base + len(self.running) * self._clock

    def _context(self) -> int:
        return self._context_base + len(self.running) * self._clock

    def _admit(self) -> None:
        used = self.used_tokens
        clock = self._clock
        while self.waiting and len(self.running) < self.max_running:
            seq = self.waiting[0]
            need = seq.context_tokens + seq.max_new_tokens
            # An empty batch always admits one sequence so an oversized one cannot wedge the queue.
            if self.running and used + need > self.max_total_tokens:
                break
            self.waiting.popleft()
            seq.synced = clock
            self.running[seq.rid] = seq
            self._context_base += seq.context_tokens - clock
            self._used_base += need - clock
            self._admitted += 1
            end = clock + max(seq.max_new_tokens - seq.generated, 0)
            heapq.heappush(self._ends, (end, self._admitted, seq))
            if seq.generated == 0:
                self._fresh.append(seq)
            used += need

    def _forget(self, seq: DecodeSeq) -> None:
        """Take a sequence that left `running` out of the sums."""
        self._context_base -= seq.context_tokens - seq.synced
        self._used_base -= seq.context_tokens + seq.max_new_tokens - seq.synced

    def _tick(self, steps: int) -> tuple[list[str], list[str]]:
        """`steps` steps of every running sequence: which produced their first token, and
        which finished (and left), each in admission order."""
        started: list[str] = []
        if steps > 0:
            running = self.running
            started = [s.rid for s in self._fresh if running.get(s.rid) is s]
            self._fresh.clear()
        self._clock = clock = self._clock + steps
        finished: list[str] = []
        ends = self._ends
        while ends and ends[0][0] <= clock:
            seq = heapq.heappop(ends)[2]
            if self.running.get(seq.rid) is not seq:
                continue  # aborted earlier
            del self.running[seq.rid]
            self._forget(seq)
            taken = clock - seq.synced
            seq.generated += taken
            seq.context_tokens += taken
            seq.synced = clock
            finished.append(seq.rid)
        return started, finished

    def _first_end(self) -> int:
        ends, running = self._ends, self.running
        while running.get(ends[0][2].rid) is not ends[0][2]:
            heapq.heappop(ends)  # aborted: dropped for good
        return ends[0][0]

    def next_step(self) -> DecodeStep | None:
        self._admit()
        if not self.running:
            return None
        duration = self.model.decode_step_s(len(self.running), self._context())
        return DecodeStep(tuple(self.running), duration)

    def next_run(self) -> DecodeRun | None:
        """The steps until the first running sequence finishes, if nobody joins meanwhile."""
        self._admit()
        if not self.running:
            return None
        steps = self._first_end() - self._clock
        batch = len(self.running)
        # Contexts grow by one token per sequence per step: time the run at its mean context.
        step_s = self.model.decode_step_s(batch, self._context() + batch * (steps - 1) // 2)
        return DecodeRun(tuple(self.running), steps, step_s)

    def advance(self, run: DecodeRun, steps: int) -> tuple[list[str], list[str]]:
        """Apply `steps` steps of `run` (at most `run.steps`; the batch's latest run, as nothing
        joins between `next_run` and this): which sequences produced their first token, and
        which finished (and left the batch)."""
        return self._tick(min(steps, run.steps))

    def finish_step(self, step: DecodeStep) -> list[TokenEmitted]:
        running, clock = self.running, self._clock
        emitted = []
        for rid in step.rids:
            seq = running.get(rid)
            if seq is not None:  # not aborted while the step ran
                index = seq.generated + clock - seq.synced
                emitted.append(TokenEmitted(rid, index, index + 1 >= seq.max_new_tokens))
        self._tick(1)
        return emitted
