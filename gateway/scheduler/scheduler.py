"""The scheduler: a policy, the cluster state and the requests held in between.

`submit` a request (or get a `Shed`), `schedule(now)` for the decisions that can be made, and
report what happened (`first_token`, `finished`, `cancel`; load reports go to the cluster). A
held head blocks the requests behind it: that is what keeps the order (FIFO or EDF) fair.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from gateway.scheduler.cluster_state import ClusterState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold, Shed
from gateway.scheduler.hold_queue import HoldQueue
from gateway.scheduler.policies import make_policy
from gateway.scheduler.policies.base import Policy
from gateway.scheduler.request import RequestId, SchedRequest


@dataclass(slots=True)
class SchedulerCounters:
    submitted: int = 0
    decided: int = 0
    shed: int = 0
    cancelled: int = 0
    holds: int = 0
    """`schedule` calls that ended on a held head."""


class Scheduler:
    def __init__(self, cluster: ClusterState, policy: Policy | None = None) -> None:
        self.cluster = cluster
        self.config: SchedulerConfig = cluster.config
        self.policy = policy or make_policy(self.config)
        self._queue = HoldQueue(self.policy.discipline, self.config.priority_step_s)
        self._work: dict[RequestId, float] = {}
        self._held_work_s = 0.0
        self.decisions: deque[Decision] = deque(maxlen=self.config.decision_log)
        self.last_hold: Hold | None = None
        self.counters = SchedulerCounters()

    @property
    def held(self) -> int:
        return len(self._queue)

    def wake_at(self) -> float | None:
        """When a held head may become placeable without any event (None: wait for one)."""
        return self.last_hold.until if self._queue and self.last_hold else None

    def _work_s(self, req: SchedRequest) -> float:
        """A request's share of the bottleneck, for the wait prediction: compute or read."""
        pes = self.cluster.healthy("prefill")
        if not pes:
            return 0.0
        cost = pes[0].cost
        read = cost.kv_bytes(req.hit_tokens) / (2 * cost.snic_bytes_per_s)
        return max(cost.prefill_compute_s(req.append_tokens, req.hit_tokens), read)

    def predicted_wait_s(self, now: float) -> float:
        """How long a request arriving now would be held: the held work shared by the prefill
        engines, after the soonest of them is free enough to take work."""
        cluster = self.cluster
        pes = cluster.healthy("prefill")
        if not pes:
            return 0.0
        # A lower bound of the soonest max(queue, read queue), from two O(log n) look-ups.
        queue = cluster.ranked("prefill", "queue", 1)[0].compute_free_at
        read = cluster.ranked("prefill", "read_q", 1)[0].node.snic_free_at
        soonest = max(queue, read) - now
        return max(soonest - self.config.admit_backlog_s, 0.0) + self._held_work_s / len(pes)

    def submit(self, req: SchedRequest, now: float) -> Shed | None:
        """Hold `req` until `schedule` places it, or shed it now."""
        self.counters.submitted += 1
        shed: Shed | None = None
        if len(self._queue) >= self.config.max_held:
            wait = max(self.predicted_wait_s(now), 1.0)
            shed = Shed(req.rid, wait, f"the gateway already holds {len(self._queue)} requests")
        elif self.policy.sheds:
            wait = self.predicted_wait_s(now)
            if wait > self.config.max_wait_s:
                shed = Shed(req.rid, wait, f"predicted wait {wait:.1f}s is over the bound")
        if shed is not None:
            self.counters.shed += 1
            return Shed(shed.rid, float(math.ceil(shed.retry_after_s)), shed.reason)
        self._queue.push(req)
        work = self._work[req.rid] = self._work_s(req)
        self._held_work_s += work
        return None

    def _unhold(self, rid: RequestId) -> None:
        self._held_work_s = max(self._held_work_s - self._work.pop(rid, 0.0), 0.0)

    def schedule(self, now: float) -> list[Decision]:
        """Place held requests in order until the head cannot be placed."""
        out: list[Decision] = []
        queue = self._queue
        while (req := queue.peek()) is not None:
            verdict = self.policy.place(req, self.cluster, now)
            if isinstance(verdict, Hold):
                self.last_hold = verdict
                self.counters.holds += 1
                break
            queue.pop()
            self._unhold(req.rid)
            self.cluster.dispatch(req, verdict)
            self.decisions.append(verdict)
            out.append(verdict)
        self.counters.decided += len(out)
        if not queue:
            self.last_hold = None
        return out

    def drop_head(self) -> SchedRequest | None:
        """Remove the request at the head (the caller's way out when placing it failed)."""
        req = self._queue.pop()
        if req is not None:
            self._unhold(req.rid)
            self.counters.cancelled += 1
        return req

    def cancel(self, rid: str) -> bool:
        """A held request gone (client away, gateway timeout): forget it."""
        req = self._queue.remove(rid)
        if req is None:
            return False
        self._unhold(req.rid)
        self.counters.cancelled += 1
        return True

    def first_token(self, rid: str, now: float) -> None:
        self.cluster.first_token(rid, now)

    def finished(self, rid: str, now: float, output_tokens: int | None = None) -> None:
        self.cluster.finished(rid, now, output_tokens)
