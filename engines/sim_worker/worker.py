"""One simulated SGLang worker: runs each request through its role's half of PD serving.

`SimWorker.run` yields the request's `ReqState` after every visible step (the prefill's one
token, each decoded token, the finish); the response layer turns those states into SGLang or
OpenAI shapes. Roles: prefill (cache, prefill forward, publish the room), decode (collect the
room, decode), null (both halves here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engines.sim_worker.config import SimWorkerConfig
from engines.sim_worker.errors import BadRequest, RequestAborted, SimWorkerError
from engines.sim_worker.generation import EOS_TOKEN_ID, Plan, plan_answer, request_seed
from engines.sim_worker.inputs import STAGED_READ_PATHS, GenRequest, KVDirective
from engines.sim_worker.kv_io import DecodeBlockWriter, WorkerKV, split_cut
from engines.sim_worker.metrics import LoadSnapshot, SimMetrics
from engines.sim_worker.prefix_cache import PrefixCache
from engines.sim_worker.rendezvous import FAKE_BOOTSTRAP_HOST, RoomBoard, RoomClient, RoomResult
from engines.sim_worker.runner import EngineRunner
from engines.tokenizer import Tokenizer

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from engines.sim_worker.tracing import WorkerTracing

T = TypeVar("T")


@dataclass(slots=True)
class ReqState:
    rid: str
    prompt_tokens: int
    started: float
    cached_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    tool_call_id: str | None = None
    tool_name: str | None = None
    tool_arguments: str = ""
    finish_reason: dict[str, Any] | None = None
    error: SimWorkerError | None = None
    e2e_latency: float | None = None


@dataclass(slots=True)
class _Active:
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = "aborted"
    span: Span | None = None
    """The request's trace span; None when tracing is off."""


class SimWorker:
    def __init__(
        self,
        config: SimWorkerConfig,
        tokenizer: Tokenizer,
        runner: EngineRunner,
        board: RoomBoard[RoomResult],
        rooms: RoomClient | None,
        kv: WorkerKV | None = None,
        tracing: WorkerTracing | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing
        """OpenTelemetry spans per request; None when tracing is off."""
        self.tokenizer = tokenizer
        self.runner = runner
        self.board = board
        self.rooms = rooms
        self.kv = kv
        """The KV store the node loads hits from; None: only the local prefix cache."""
        self.cache = PrefixCache(config.page_size, config.cache_pages)
        self.metrics = SimMetrics(
            config.served_model_name, _engine_type(config.role), self.load, self._kv_counters
        )
        self.aborted_rids: deque[str] = deque(maxlen=1024)
        self._active: dict[str, _Active] = {}
        self._transfer_waiting = 0
        self._prompt_total = 0
        self._cached_total = 0

    # --- control ------------------------------------------------------------------------------

    def abort(self, rid: str, reason: str = "aborted by /abort_request") -> bool:
        active = self._active.get(rid)
        if active is None:
            return False
        active.reason = reason
        active.aborted.set()
        self.runner.abort(rid)
        return True

    def abort_all(self) -> int:
        return sum(self.abort(rid) for rid in list(self._active))

    def load(self) -> LoadSnapshot:
        r = self.runner
        return LoadSnapshot(
            num_running_reqs=r.num_running,
            num_waiting_reqs=r.num_waiting + self._transfer_waiting,
            num_used_tokens=r.used_tokens,
            max_total_num_tokens=self.config.max_total_num_tokens,
            cache_hit_rate=self._cached_total / self._prompt_total if self._prompt_total else 0.0,
            gen_throughput=r.gen_throughput,
            prefill_prealloc_queue_reqs=0,
            prefill_inflight_queue_reqs=len(self.board) if self.config.role == "prefill" else 0,
            decode_prealloc_queue_reqs=0,
            decode_transfer_queue_reqs=self._transfer_waiting,
            read_q_bytes=r.links.snic.queued_bytes,
            cnic_q_bytes=r.links.cnic.queued_bytes,
        )

    def _kv_counters(self) -> dict[str, float]:
        return dataclasses.asdict(self.kv.counters) if self.kv is not None else {}

    @property
    def num_active(self) -> int:
        return len(self._active)

    # --- one request --------------------------------------------------------------------------

    async def run(self, req: GenRequest, parent: Context | None = None) -> AsyncIterator[ReqState]:
        """`parent`: the caller's trace context (`trace_parent`); None: not traced (tracing off,
        or the worker's own work such as the health probe)."""
        state = ReqState(req.rid, len(req.prompt_ids), time.monotonic())
        active = self._active[req.rid] = _Active()
        if self.tracing is not None and parent is not None:
            active.span = self.tracing.begin(req, parent)
        try:
            try:
                async for st in self._run(req, state, active):
                    yield st
            except SimWorkerError as exc:
                self._fail(state, exc)
                yield state
        finally:
            if state.finish_reason is None:  # the consumer went away: a client disconnect
                self._fail(state, RequestAborted("client disconnected"))
            self._active.pop(req.rid, None)
            self.runner.abort(req.rid)
            self._account(req, state)
            if active.span is not None and self.tracing is not None:
                self.tracing.end(active.span, state)

    def trace_parent(self, headers: Mapping[str, str]) -> Context | None:
        """The trace context a request's headers carry; None when tracing is off."""
        return self.tracing.parent(headers) if self.tracing is not None else None

    def _stage(self, active: _Active, name: str) -> AbstractContextManager[Span | None]:
        if active.span is None or self.tracing is None:
            return nullcontext()
        return self.tracing.stage(active.span, name)

    def _traced(self, active: _Active, name: str, work: Awaitable[T]) -> Awaitable[T]:
        """`work`, inside a span named `name` when the request is traced."""
        if active.span is None or self.tracing is None:
            return work
        return self.tracing.within(active.span, name, work)

    def _fail(self, state: ReqState, exc: SimWorkerError) -> None:
        state.error = exc
        state.finish_reason = {
            "type": "abort",
            "message": exc.message,
            "status_code": exc.status_code,
            "err_type": exc.err_type,
        }
        state.e2e_latency = time.monotonic() - state.started

    def _account(self, req: GenRequest, state: ReqState) -> None:
        m = self.metrics
        if isinstance(state.error, RequestAborted) or (
            state.finish_reason and state.finish_reason["type"] == "abort"
        ):
            m.aborted.inc()
            self.aborted_rids.append(req.rid)
        m.requests.inc()
        m.prompt_tokens.inc(state.prompt_tokens)
        m.cached_tokens.inc(state.cached_tokens)
        m.generation_tokens.inc(len(state.output_ids))
        self._prompt_total += state.prompt_tokens
        self._cached_total += state.cached_tokens

    async def _until_aborted(self, active: _Active, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(active.aborted.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            raise RequestAborted(active.reason)
        return task.result()

    async def _run(
        self, req: GenRequest, state: ReqState, active: _Active
    ) -> AsyncIterator[ReqState]:
        cfg = self.config
        bs = req.bootstrap
        if cfg.role != "null" and bs is None:
            raise BadRequest(f"a {cfg.role} worker needs bootstrap_host and bootstrap_room")
        plan = plan_answer(
            self.tokenizer,
            request_seed(cfg.seed, req.prompt_ids, req.seed),
            min_tokens=cfg.min_natural_tokens,
            max_tokens=cfg.max_natural_tokens,
            tool=req.tool,
        )
        state.tool_call_id = plan.tool_call.call_id if plan.tool_call else None
        state.tool_name = plan.tool_call.name if plan.tool_call else None
        keys = self.kv.keys(req.kv and req.kv.root, req.prompt_ids) if self.kv else []
        if cfg.role == "decode":
            assert bs is not None
            first, state.cached_tokens = await self._decode_side_kv(req, keys, plan, active)
        else:
            first = await self._prefill(req, state, active, plan, keys)
            if cfg.role == "prefill":
                self._emit(state, plan, 0, first)
                self.metrics.ttft.observe(time.monotonic() - state.started)
                state.finish_reason = {"type": "length", "length": 0}
                self._finish(state)
                yield state
                return
        writer = self.kv.writer(req.kv and req.kv.root, keys, req.prompt_ids) if self.kv else None
        try:
            with self._stage(active, "decode"):
                async for st in self._decode(req, state, plan, first, writer):
                    yield st
        finally:
            if writer is not None:
                writer.cancel()

    async def _prefill(
        self, req: GenRequest, state: ReqState, active: _Active, plan: Plan, keys: list[bytes]
    ) -> int:
        bs = req.bootstrap
        publish = (
            self.config.role == "prefill" and bs is not None and bs.host != FAKE_BOOTSTRAP_HOST
        )
        try:
            cached = await self._until_aborted(
                active, self._traced(active, "kv.read", self._load(req, keys))
            )
            state.cached_tokens = cached
            compute = self.runner.prefill(req.rid, len(req.prompt_ids) - cached, cached)
            await self._until_aborted(active, self._traced(active, "prefill.compute", compute))
            if self.kv is not None:  # write-through, so the next turn finds this one's blocks
                persist = self.kv.persist(keys, cached // self.config.page_size)
                await self._until_aborted(active, self._traced(active, "kv.persist", persist))
        except SimWorkerError as exc:
            if publish:  # tell the waiting decode at once rather than after its timeout
                assert bs is not None
                self.board.publish(
                    bs.room, RoomResult(bs.room, -1, len(req.prompt_ids), 0, exc.message)
                )
            raise
        if self.kv is None:
            self.cache.insert(req.prompt_ids, req.cache_namespace)
        first = plan.token_ids[0]
        if publish:
            assert bs is not None
            self.board.publish(bs.room, RoomResult(bs.room, first, len(req.prompt_ids), cached))
        return first

    async def _load(self, req: GenRequest, keys: list[bytes]) -> int:
        """Cached tokens of the prompt: read from the KV store along the request's read path, or
        matched in the local prefix cache when the worker has no store."""
        kv = self.kv
        if kv is None:
            return self.cache.match(req.prompt_ids, req.cache_namespace)
        blocks = await self._read_hits(kv, req, kv.usable(keys, len(req.prompt_ids)))
        cached = len(blocks) * self.config.page_size
        kv.note_expected(req.kv.expected_hit_tokens if req.kv else None, cached)
        return cached

    async def _read_hits(
        self, kv: WorkerKV, req: GenRequest, usable: Sequence[bytes]
    ) -> list[bytes]:
        """The prefill's half of the read path: the verified leading hit blocks, read through
        this node's storage NIC, pulled from the decode's staging, or both (`split`)."""
        bs, d = req.bootstrap, req.kv
        # Without a bootstrap (role null) no decode stages anything: this node reads it all.
        if d is None or d.read_path == "pe" or not d.stager or bs is None:
            return await kv.read(req.rid, usable)
        timeout = self.config.stage_timeout_s
        if d.read_path == "de":
            return await kv.receive(req.rid, d.stager, bs.room, usable, timeout)
        cut = _split_cut(kv, d, usable)
        return await kv.read_split(req.rid, usable, cut, d.stager, bs.room, timeout)

    async def _decode_side_kv(
        self, req: GenRequest, keys: list[bytes], plan: Plan, active: _Active
    ) -> tuple[int, int]:
        """The decode's half of the KV: on read paths `de` and `split` read and stage (its part
        of) the hit blocks while waiting for the prefill; then receive the KV it does not hold
        over the compute network."""
        bs, kv = req.bootstrap, self.kv
        assert bs is not None
        staging: asyncio.Future[int] | None = None
        if kv is not None and (staged := _staged_keys(kv, req, keys)) is not None:
            staging = asyncio.ensure_future(
                self._traced(active, "kv.stage", kv.stage(req.rid, bs.room, staged))
            )
        try:
            first, cached = await self._traced(
                active, "pd.wait", self._collect(bs.host, bs.port, bs.room, plan, active)
            )
            held = await staging if staging is not None else 0
        finally:
            if staging is not None and not staging.done():
                staging.cancel()
        if kv is not None and bs.host != FAKE_BOOTSTRAP_HOST:
            # The prefill hands over the KV this node does not hold yet.
            tokens = len(req.prompt_ids) - held * self.config.page_size
            link, size = self.runner.links.cnic, kv.shape.kv_bytes_per_token * tokens
            transfer = self.runner.transfer(link, req.rid, size)
            await self._until_aborted(active, self._traced(active, "kv.transfer", transfer))
        return first, cached

    async def _collect(
        self, host: str, port: int, room: int, plan: Plan, active: _Active
    ) -> tuple[int, int]:
        if host == FAKE_BOOTSTRAP_HOST or self.rooms is None:
            return plan.token_ids[0], 0
        self._transfer_waiting += 1
        try:
            result = await self._until_aborted(
                active, self.rooms.collect(host, port, room, self.config.waiting_timeout_s)
            )
        finally:
            self._transfer_waiting -= 1
        return result.first_token_id, result.cached_tokens

    async def _decode(
        self,
        req: GenRequest,
        state: ReqState,
        plan: Plan,
        first: int,
        writer: DecodeBlockWriter | None,
    ) -> AsyncIterator[ReqState]:
        natural = len(plan.token_ids)
        total = req.max_new_tokens if req.ignore_eos else min(req.max_new_tokens, natural)
        natural_end = not req.ignore_eos and natural <= req.max_new_tokens
        if total == 0:
            state.finish_reason = {"type": "length", "length": 0}
            self._finish(state)
            yield state
            return
        self._emit(state, plan, 0, first, writer)
        self.metrics.ttft.observe(time.monotonic() - state.started)
        if self._check_end(req, state, 1, total, natural_end):
            if writer is not None:
                await writer.flush()
            yield state
            return
        yield state
        tokens = self.runner.decode(req.rid, len(req.prompt_ids) + 1, total - 1)
        async with contextlib.aclosing(tokens):  # closing it gives the batch slot back
            async for tok in tokens:
                index = tok.index + 1
                self._emit(state, plan, index, plan.token_ids[index % natural], writer)
                ended = self._check_end(req, state, index + 1, total, natural_end)
                if ended and writer is not None:
                    # The blocks are stored before the stream ends, so the next turn finds them.
                    await writer.flush()
                yield state
                if ended:
                    return

    def _emit(
        self,
        state: ReqState,
        plan: Plan,
        index: int,
        token_id: int,
        writer: DecodeBlockWriter | None = None,
    ) -> None:
        state.output_ids.append(token_id)
        if writer is not None:
            writer.add(token_id)
        if plan.tool_call is not None:
            pieces = plan.tool_call.pieces
            state.tool_arguments += pieces[index] if index < len(pieces) else ""
        else:
            state.text = self.tokenizer.decode(state.output_ids)

    def _check_end(
        self, req: GenRequest, state: ReqState, produced: int, total: int, natural_end: bool
    ) -> bool:
        for stop in req.stop:
            pos = state.text.find(stop)
            if pos >= 0:
                state.text = state.text[:pos]
                state.finish_reason = {"type": "stop", "matched": stop}
                self._finish(state)
                return True
        if produced < total:
            return False
        if natural_end:
            state.finish_reason = {"type": "stop", "matched": EOS_TOKEN_ID}
        else:
            state.finish_reason = {"type": "length", "length": produced}
        self._finish(state)
        return True

    def _finish(self, state: ReqState) -> None:
        state.e2e_latency = time.monotonic() - state.started


def _staged_keys(kv: WorkerKV, req: GenRequest, keys: list[bytes]) -> Sequence[bytes] | None:
    """The hit blocks a decode reads and stages for its prefill; None: it stages nothing (and
    publishes nothing), as the prefill then pulls nothing (`WorkerKV.read_split`)."""
    d = req.kv
    if d is None or d.read_path not in STAGED_READ_PATHS:
        return None
    usable = kv.usable(keys, len(req.prompt_ids))
    if d.read_path == "de":
        return usable
    cut = _split_cut(kv, d, usable)
    return usable[cut:] if cut < len(usable) else None


def _split_cut(kv: WorkerKV, d: KVDirective, usable: Sequence[bytes]) -> int:
    """Where both workers cut a `split` request's hit blocks: the prefill reads `usable[:cut]`."""
    assert d.pe_share is not None  # the parser requires it on read path `split`
    return split_cut(len(usable), d.expected_hit_tokens, kv.block_tokens, d.pe_share)


def _engine_type(role: str) -> str:
    return "unified" if role == "null" else role
