"""Predicted TTFT and TPOT of one (prefill, decode, read plan), from the cluster state and the
engines' cost models. Pure arithmetic; the policies rank candidates with it.

The hit KV reaches the prefill engine by two routes in parallel: its `pe_share` through the
prefill node's storage NIC, the rest through the decode node's storage NIC and then over the
prefill node's compute NIC (read and transfer pipelined, so the slower of the two counts). Each
link first drains what is queued on it. Compute starts when the engine's queue is free and the KV
is in (or, with layer-wise prefill, as soon as the first layer is), and the first token follows
the handoff of the KV the decode engine does not hold over its compute NIC.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.scheduler.cluster_state import EngineState
from gateway.scheduler.request import SchedRequest

MIN_SPLIT_TOKENS = 64
"""A share smaller than one block on either side is not worth a second route."""


@dataclass(frozen=True, slots=True)
class TurnCost:
    """What a request costs on one engine kind, computed once per decision."""

    compute_s: float
    hit_bytes: float
    append_bytes: float

    @classmethod
    def of(cls, req: SchedRequest, pe: EngineState) -> TurnCost:
        cost = pe.cost
        return cls(
            cost.prefill_compute_s(req.append_tokens, req.hit_tokens),
            cost.kv_bytes(req.hit_tokens),
            cost.kv_bytes(req.append_tokens),
        )


def load_s(now: float, pe: EngineState, de: EngineState, hit_bytes: float, share: float) -> float:
    """Seconds until all the hit KV is in the prefill engine, `share` of it read on its side."""
    pn, dn = pe.node, de.node
    via_pe = pn.read_q_s(now) + share * hit_bytes / pn.snic_bytes_per_s if share > 0 else 0.0
    if share >= 1.0:
        return via_pe
    rest = (1.0 - share) * hit_bytes
    via_de = max(
        dn.read_q_s(now) + rest / dn.snic_bytes_per_s,
        pn.cnic_q_s(now) + rest / pn.cnic_bytes_per_s,
    )
    return max(via_pe, via_de)


def ttft_s(
    now: float,
    pe: EngineState,
    de: EngineState,
    turn: TurnCost,
    share: float,
    layerwise: bool,
) -> float:
    """Raw predicted time to first token from `now` (the correction factor not applied)."""
    queue = pe.queue_s(now)
    loaded = load_s(now, pe, de, turn.hit_bytes, share)
    compute = turn.compute_s
    if layerwise:
        done = max(queue + compute, loaded + compute / max(pe.cost.layers, 1))
    else:
        done = max(queue, loaded) + compute
    handoff = share * turn.hit_bytes + turn.append_bytes
    dn = de.node
    return max(done, dn.cnic_q_s(now)) + handoff / dn.cnic_bytes_per_s


def balanced_share(now: float, pe: EngineState, de: EngineState, req: SchedRequest) -> float:
    """The prefill's share that makes both routes finish together (the split's optimum).

    The prefill route's time rises linearly with the share, the decode route's (the slower of
    its read and its transfer) falls; they cross at the larger of the two crossing points.
    """
    hit_bytes = pe.cost.kv_bytes(req.hit_tokens)
    if hit_bytes <= 0:
        return 1.0
    pn, dn = pe.node, de.node
    a_p, b_p = pn.read_q_s(now), hit_bytes / pn.snic_bytes_per_s
    a_d, b_d = dn.read_q_s(now), hit_bytes / dn.snic_bytes_per_s
    a_x, b_x = pn.cnic_q_s(now), hit_bytes / pn.cnic_bytes_per_s
    share = max((a_d + b_d - a_p) / (b_p + b_d), (a_x + b_x - a_p) / (b_p + b_x))
    share = min(max(share, 0.0), 1.0)
    if share * req.hit_tokens < MIN_SPLIT_TOKENS:
        return 0.0
    if (1.0 - share) * req.hit_tokens < MIN_SPLIT_TOKENS:
        return 1.0
    return share


def tpot_s(de: EngineState, req: SchedRequest) -> float:
    """Raw predicted time per output token once `req` joins the decode engine's batch."""
    return de.cost.decode_step_s(de.seq + 1, de.tok + req.prompt_tokens)
