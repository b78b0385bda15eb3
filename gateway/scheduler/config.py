"""The scheduler's settings: one frozen dataclass, a docstring on every field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    policy: str = "dualpath-slo"
    """`round_robin`, `cache_aware`, `basic`, `dualpath` or `dualpath-slo` (`policies.POLICIES`)."""
    ttft_s: float = 4.0
    """Default TTFT target (the paper's online SLO); a request may bring its own."""
    tpot_s: float = 0.05
    """Default TPOT target."""
    max_held: int = 10_000
    """Requests the gateway may hold; past it new ones are shed."""
    max_wait_s: float = 30.0
    """`dualpath-slo`: shed a new request whose predicted wait in the gateway exceeds this."""
    admit_backlog_s: float = 0.5
    """`dualpath-slo`: a request that cannot meet its target still goes to a prefill engine whose
    queue is shorter than this (work-conserving: no engine idles while requests are held)."""
    priority_step_s: float = 2.0
    """Earliest-deadline-first: one priority class moves a request's deadline this much earlier.
    Bounded, so a low class ages past any stream of higher ones (no starvation)."""
    alpha_read_s: float = 3.0
    """`dualpath`: a node's read queue is short when it drains within this (the paper's α)."""
    beta_compute_s: float = 5.0
    """`dualpath`: an engine with more queued prefill compute than this gets no new work (β)."""
    z_factor: float = 1.05
    """`dualpath`: decode engines above this × the projected average tokens are avoided (Z)."""
    layerwise: bool = False
    """Engines copy layer l+1's loaded KV into HBM while computing layer l (the paper's
    layer-wise prefill). Our simulated workers copy first, then compute, so the default is off."""
    split: bool = True
    """`dualpath-slo` may split one request's read between both sides."""
    shortlist: int = 1
    """`dualpath-slo`: prefill engines taken from each ranking (soonest start, shortest read
    queue) to be paired; keeps a decision O(shortlist · log engines), not O(prefill × decode)."""
    feedback_weight: float = 0.2
    """Weight of the newest observed/predicted ratio in an engine's correction factor."""
    feedback_min: float = 0.25
    feedback_max: float = 4.0
    """Bounds of the correction factor, so one outlier cannot wreck the predictions."""
    max_inflight: int = 200_000
    """Dispatched requests tracked until they finish; the oldest are forgotten past it."""
    decision_log: int = 256
    """Recent decisions kept for `GET /debug/decisions`."""
    affinity_sessions: int = 100_000
    """`cache_aware`: sessions whose last prefill engine is remembered (LRU)."""
    imbalance_abs: int = 32
    imbalance_rel: float = 1.5
    """`cache_aware`: as SGLang's router, affinity yields to the least-loaded engine when the
    busiest has more than `abs` more requests and more than `rel` × the idlest's."""

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ValueError("SLO targets must be positive")
        if self.max_held < 1 or self.shortlist < 1 or self.decision_log < 0:
            raise ValueError("max_held and shortlist must be at least 1")
        if not 0 < self.feedback_weight <= 1 or not 0 < self.feedback_min <= 1 <= self.feedback_max:
            raise ValueError("need 0 < feedback_weight <= 1 and feedback_min <= 1 <= feedback_max")
