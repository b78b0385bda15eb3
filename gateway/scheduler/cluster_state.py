"""The scheduler's view of the cluster: per engine `seq_e`, `tok_e`, queued compute and KV memory;
per node the storage and compute NIC queues.

The view is optimistic, as the paper's `tok_e += …`: a dispatch adds its predicted work at once,
the request's first token and end take it back, and the workers' load reports (`reconcile`)
replace what only the workers know: their node's read queue and their KV memory. Queues are kept
as *free-at* times on the caller's clock, so they drain with `now` without any event.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.cost_model import CostModel
from gateway.scheduler.decision import READ_PATHS, Decision, EngineId
from gateway.scheduler.engine_index import Key, Ranking
from gateway.scheduler.feedback import corrected
from gateway.scheduler.request import RequestId, SchedRequest

Role = Literal["prefill", "decode"]
ALL_READ_PATHS = frozenset(READ_PATHS)

RANKINGS: dict[str, Key] = {
    "queue": attrgetter("compute_free_at"),
    "tok": attrgetter("tok"),
    "seq": attrgetter("seq"),
    "read_q": attrgetter("node.snic_free_at"),
    "ready": lambda e: max(e.compute_free_at, e.node.snic_free_at),
    "kv_free": lambda e: -e.kv_free_tokens,  # the most free KV memory first
}
"""What `ClusterState.ranked` can order engines by (absolute values: time keeps the order)."""


def leaders_among(pool: Sequence[EngineState], keys: tuple[str, ...]) -> list[EngineState]:
    """For each of `keys`, the engine of a non-empty `pool` with the smallest key (`RANKINGS`),
    ties to the earlier registered, in whatever order `pool` comes."""
    return [min(pool, key=lambda e, k=RANKINGS[key]: (k(e), e.index)) for key in keys]


SCAN_MAX = 8
"""Up to this many engines of a role, `ranked` scans them all (exact, and no index to keep)."""
BALANCE_WINDOW_S = 10.0
"""Time constant of a node's recent reads (`NodeState.recent_reads_s`)."""


@dataclass(slots=True, eq=False)
class NodeState:
    """One node's links. Engines on the same node share them (the paper's `read_q[n(e)]`)."""

    name: str
    snic_bytes_per_s: float
    cnic_bytes_per_s: float
    snic_free_at: float = 0.0
    cnic_free_at: float = 0.0
    snic_since_report: float = 0.0
    cnic_since_report: float = 0.0
    """Bytes queued since the node's last load report (the report does not know them yet)."""
    snic_recent_s: float = 0.0
    snic_recent_at: float = 0.0
    """Seconds of storage-NIC reading booked on the node, decayed with `BALANCE_WINDOW_S` from
    `snic_recent_at`: its recent read share, which ranks read routes that tie on TTFT (a queue
    says nothing once it is empty, whatever the NIC read just before)."""
    engines: list[EngineState] = field(default_factory=list)

    def read_q_s(self, now: float) -> float:
        """Seconds until the storage NIC has read everything queued on it."""
        return max(self.snic_free_at - now, 0.0)

    def read_q_bytes(self, now: float) -> float:
        return self.read_q_s(now) * self.snic_bytes_per_s

    def recent_reads_s(self, now: float, nbytes: float = 0.0) -> float:
        """The node's decayed seconds of reading at `now`, with `nbytes` more booked."""
        decay = math.exp(min(self.snic_recent_at - now, 0.0) / BALANCE_WINDOW_S)
        return self.snic_recent_s * decay + nbytes / self.snic_bytes_per_s

    def queue_read(self, now: float, nbytes: float) -> None:
        if nbytes > 0:
            self.snic_free_at = max(self.snic_free_at, now) + nbytes / self.snic_bytes_per_s
            self.snic_recent_s = self.recent_reads_s(now, nbytes)
            self.snic_recent_at = max(self.snic_recent_at, now)
            self.snic_since_report += nbytes

    def queue_cnic(self, now: float, nbytes: float) -> None:
        if nbytes > 0:
            self.cnic_free_at = max(self.cnic_free_at, now) + nbytes / self.cnic_bytes_per_s
            self.cnic_since_report += nbytes


@dataclass(slots=True, eq=False)
class EngineState:
    id: EngineId
    role: Role
    cost: CostModel
    node: NodeState
    index: int
    """Order of registration: the deterministic tie-break."""
    read_paths: frozenset[str] = ALL_READ_PATHS
    """Read paths the worker takes part in (`pe` is every worker's: a stock SGLang's only)."""
    healthy: bool = True
    seq: int = 0
    """Unfinished requests (the paper's `seq_e`)."""
    tok: int = 0
    """Their tokens: prompt on a prefill engine, prompt + expected output on a decode engine."""
    compute_free_at: float = 0.0
    """Prefill: when its queued prefill compute is done."""
    pending_compute_s: float = 0.0
    """Prefill: predicted compute of the requests whose first token has not come yet."""
    kv_capacity_tokens: int | None = None
    """Decode: its KV pool (`max_total_num_tokens`); None until a report says."""
    kv_reported_used: int = 0
    kv_since_report: int = 0
    ttft_factor: float = 1.0
    tpot_factor: float = 1.0
    """Observed / predicted, exponentially weighted (`feedback.corrected`)."""

    def queue_s(self, now: float) -> float:
        return max(self.compute_free_at - now, 0.0)

    @property
    def kv_free_tokens(self) -> float:
        if self.kv_capacity_tokens is None:
            return float("inf")
        return self.kv_capacity_tokens - self.kv_reported_used - self.kv_since_report


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A worker's `/v1/loads`, as the scheduler needs it."""

    at: float
    running: int
    waiting: int
    used_tokens: int
    max_tokens: int
    read_q_bytes: float | None = None
    cnic_q_bytes: float | None = None


@dataclass(slots=True, eq=False)
class _Inflight:
    req: SchedRequest
    decision: Decision
    pe: EngineState
    de: EngineState
    compute_s: float
    raw_ttft_s: float
    """Predicted before correction: what the observed TTFT is compared with."""
    raw_tpot_s: float
    first_token_at: float | None = None


class ClusterState:
    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.engines: dict[EngineId, EngineState] = {}
        self.nodes: dict[str, NodeState] = {}
        self._healthy: dict[Role, list[EngineState]] | None = None
        self._inflight: OrderedDict[RequestId, _Inflight] = OrderedDict()
        self._next_index = 0
        self._rankings: dict[Role, dict[str, Ranking]] = {}
        """Kept only for a role with more than `SCAN_MAX` healthy engines."""

    # --- membership ----------------------------------------------------------------------------

    def add_engine(
        self,
        engine_id: str,
        role: Role,
        cost: CostModel,
        *,
        node: str | None = None,
        kv_capacity_tokens: int | None = None,
        healthy: bool = True,
        read_paths: frozenset[str] = ALL_READ_PATHS,
    ) -> EngineState:
        """Register an engine (its node defaults to one of its own)."""
        if engine_id in self.engines:
            raise ValueError(f"engine {engine_id!r} is already registered")
        name = node or engine_id
        links = self.nodes.get(name)
        if links is None:
            links = NodeState(name, cost.snic_bytes_per_s, cost.cnic_bytes_per_s)
            self.nodes[name] = links
        engine = EngineState(
            EngineId(engine_id),
            role,
            cost,
            links,
            self._next_index,
            read_paths=read_paths | {"pe"},
            healthy=healthy,
        )
        engine.kv_capacity_tokens = kv_capacity_tokens
        self._next_index += 1
        self.engines[engine.id] = engine
        links.engines.append(engine)
        self._healthy = None
        self.touch(engine)
        return engine

    def set_healthy(self, engine_id: str, healthy: bool) -> None:
        engine = self.engines[EngineId(engine_id)]
        if engine.healthy != healthy:
            engine.healthy = healthy
            self._healthy = None
            self.touch(engine)

    def healthy(self, role: Role) -> list[EngineState]:
        """Healthy engines of a role, in registration order (cached until membership changes)."""
        if self._healthy is None:
            ordered = sorted(self.engines.values(), key=lambda e: e.index)
            self._healthy = {
                "prefill": [e for e in ordered if e.healthy and e.role == "prefill"],
                "decode": [e for e in ordered if e.healthy and e.role == "decode"],
            }
            for each, engines in self._healthy.items():
                if len(engines) <= SCAN_MAX:
                    self._rankings.pop(each, None)
                elif each not in self._rankings:
                    rankings = {name: Ranking(key) for name, key in RANKINGS.items()}
                    for e in engines:
                        for ranking in rankings.values():
                            ranking.touch(e)
                    self._rankings[each] = rankings
        return self._healthy[role]

    def touch(self, engine: EngineState) -> None:
        """Re-rank an engine; whoever changes its fields outside this class must call it."""
        if self._healthy is None:
            self.healthy(engine.role)  # rebuilds the rankings a role newly needs
        for ranking in self._rankings.get(engine.role, {}).values():
            if engine.healthy:
                ranking.touch(engine)
            else:
                ranking.remove(engine)

    def _touch_node(self, node: NodeState) -> None:
        for engine in node.engines:
            self.touch(engine)

    def ranked(
        self,
        role: Role,
        by: str,
        k: int,
        accept: Callable[[EngineState], bool] | None = None,
    ) -> list[EngineState]:
        """The `k` healthy engines of `role` that `accept` takes with the smallest `by` key
        (`RANKINGS`), ties to the earlier registered; O(k log n) past `SCAN_MAX` engines."""
        engines = self.healthy(role)
        if len(engines) > SCAN_MAX:
            return self._rankings[role][by].smallest(k, accept)
        key = RANKINGS[by]
        pool = engines if accept is None else [e for e in engines if accept(e)]
        if k == 1:  # registration order breaks ties: `min` keeps the first of equals
            return [min(pool, key=key)] if pool else []
        return heapq.nsmallest(k, pool, key=lambda e: (key(e), e.index))

    # --- what the workers say ------------------------------------------------------------------

    def leaders(
        self,
        role: Role,
        keys: tuple[str, ...],
        accept: Callable[[EngineState], bool] | None = None,
    ) -> list[EngineState]:
        """For each of `keys`, the accepted healthy engine with the smallest key (ties to the
        earlier registered); empty when none is accepted. One filtering pass for all keys."""
        engines = self.healthy(role)
        if len(engines) > SCAN_MAX:
            found = [self._rankings[role][key].smallest(1, accept) for key in keys]
            return [f[0] for f in found] if all(found) else []
        pool = engines if accept is None else [e for e in engines if accept(e)]
        return leaders_among(pool, keys) if pool else []

    def reconcile(self, engine_id: str, report: LoadReport) -> None:
        engine = self.engines.get(EngineId(engine_id))
        if engine is None:
            return
        node = engine.node
        if report.read_q_bytes is not None:
            queued = report.read_q_bytes + node.snic_since_report
            node.snic_free_at = report.at + queued / node.snic_bytes_per_s
            node.snic_since_report = 0.0
        if report.cnic_q_bytes is not None:
            queued = report.cnic_q_bytes + node.cnic_since_report
            node.cnic_free_at = report.at + queued / node.cnic_bytes_per_s
            node.cnic_since_report = 0.0
        if engine.role == "decode" and report.max_tokens > 0:
            engine.kv_capacity_tokens = report.max_tokens
            engine.kv_reported_used = report.used_tokens
            engine.kv_since_report = 0
        self._touch_node(node)

    # --- what the gateway did and saw ----------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def dispatch(self, req: SchedRequest, decision: Decision) -> None:
        """Book a decision's work on its engines and links, before the workers see it."""
        now = decision.at
        pe, de = self.engines[decision.prefill], self.engines[decision.decode]
        cost, append, hit = pe.cost, req.append_tokens, req.hit_tokens
        # Behind a busy engine the request joins a batched forward whose fixed cost is paid.
        busy = pe.compute_free_at > now
        compute_s = (cost.prefill_marginal_s if busy else cost.prefill_compute_s)(append, hit)
        hit_bytes = pe.cost.kv_bytes(req.hit_tokens)
        pe_bytes = hit_bytes * decision.pe_share
        pe.node.queue_read(now, pe_bytes)
        de.node.queue_read(now, hit_bytes - pe_bytes)
        pe.node.queue_cnic(now, hit_bytes - pe_bytes)  # decode-side reads cross to the prefill
        de.node.queue_cnic(now, pe_bytes + pe.cost.kv_bytes(req.append_tokens))  # the handoff
        pe.seq += 1
        pe.tok += req.prompt_tokens
        pe.compute_free_at = max(pe.compute_free_at, now) + compute_s
        pe.pending_compute_s += compute_s
        de.seq += 1
        de.tok += req.prompt_tokens + req.output_tokens
        de.kv_since_report += req.prompt_tokens + req.output_tokens
        self._touch_node(pe.node)
        if de.node is not pe.node:
            self._touch_node(de.node)
        raw_ttft = decision.predicted_ttft_s / pe.ttft_factor
        raw_tpot = decision.predicted_tpot_s / de.tpot_factor
        self._inflight[req.rid] = _Inflight(req, decision, pe, de, compute_s, raw_ttft, raw_tpot)
        while len(self._inflight) > self.config.max_inflight:  # a lost completion must not leak
            self._release(self._inflight.popitem(last=False)[1], None)

    def first_token(self, rid: str, now: float) -> None:
        """The request's prefill is done: its reads, compute and handoff are off the queues."""
        flight = self._inflight.get(RequestId(rid))
        if flight is None or flight.first_token_at is not None:
            return
        flight.first_token_at = now
        self._prefill_done(flight, now)
        c = self.config
        observed = now - flight.decision.at
        pe = flight.pe
        pe.ttft_factor = corrected(pe.ttft_factor, observed, flight.raw_ttft_s, c)

    def finished(self, rid: str, now: float, output_tokens: int | None = None) -> None:
        """The request ended (done, failed or abandoned); `output_tokens` when it streamed."""
        flight = self._inflight.pop(RequestId(rid), None)
        if flight is None:
            return
        first = flight.first_token_at
        if first is not None and output_tokens is not None and output_tokens > 1:
            observed = (now - first) / (output_tokens - 1)
            de = flight.de
            de.tpot_factor = corrected(de.tpot_factor, observed, flight.raw_tpot_s, self.config)
        self._release(flight, now)

    def _prefill_done(self, flight: _Inflight, now: float | None) -> None:
        pe = flight.pe
        pe.seq -= 1
        pe.tok -= flight.req.prompt_tokens
        pe.pending_compute_s = max(pe.pending_compute_s - flight.compute_s, 0.0)
        if now is not None:
            # In FIFO order nothing queued can outlast the work still outstanding.
            pe.compute_free_at = min(pe.compute_free_at, now + pe.pending_compute_s)
        self.touch(pe)

    def _release(self, flight: _Inflight, now: float | None) -> None:
        if flight.first_token_at is None:
            self._prefill_done(flight, now)
        de, req = flight.de, flight.req
        de.seq -= 1
        de.tok -= req.prompt_tokens + req.output_tokens
        de.kv_since_report = max(de.kv_since_report - req.prompt_tokens - req.output_tokens, 0)
        self.touch(de)
