"""Predicted TTFT and TPOT of one (prefill, decode, read plan), from the cluster state and the
engines' cost models. Pure arithmetic; the policies rank candidates with it.

The hit KV reaches the prefill engine by two routes in parallel: its `share` through the prefill
node's storage NIC, the rest through the decode node's storage NIC and then over the prefill
node's compute NIC (read and transfer pipelined, so the slower of the two counts). Each link
first drains what is queued on it. Compute starts when the engine's queue is free and the KV is
in its DRAM buffers; without layer-wise prefill the forward first copies it into HBM (over the
compute NIC, the paper's CNIC-centric copy), with it the copy hides behind the compute. The
first token follows the handoff, over the decode node's compute NIC, of the KV the decode engine
does not hold.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.scheduler.cluster_state import EngineState
from gateway.scheduler.request import SchedRequest

MIN_SPLIT_TOKENS = 64
"""A share smaller than one block on either side is not worth a second route."""


class TurnCost(NamedTuple):
    """What a request costs on one prefill engine, computed once per decision."""

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


SINGLE_ROUTES = (1.0, 0.0)


def plans(
    now: float,
    pe: EngineState,
    de: EngineState,
    turn: TurnCost,
    hit_tokens: int,
    layerwise: bool,
    shares: tuple[float, ...] = SINGLE_ROUTES,
    split: bool = False,
) -> list[tuple[float, float, float]]:
    """(prefill share, raw TTFT, end of the read) for each of `shares`, and with `split` also
    for the share that makes both routes finish together, when that is strictly inside (0, 1).

    Seconds from `now`; the correction factor is not applied. Written flat, with locals and no
    helper objects: the scheduler evaluates a handful of pairs per request in microseconds.
    """
    pn, dn = pe.node, de.node
    hit = turn.hit_bytes
    queue = max(pe.compute_free_at - now, 0.0)
    pe_q = max(pn.snic_free_at - now, 0.0)  # queued ahead on each link
    pe_x = max(pn.cnic_free_at - now, 0.0)
    de_q = max(dn.snic_free_at - now, 0.0)
    de_x = max(dn.cnic_free_at - now, 0.0)
    pe_all = hit / pn.snic_bytes_per_s  # all the hit KV over each link alone
    x_all = hit / pn.cnic_bytes_per_s
    de_all = hit / dn.snic_bytes_per_s
    if split and pe_all > 0.0:  # (all-instant links, as in time-scale-0 tests: nothing to split)
        # The prefill route rises with the share, the decode route (the slower of its read and
        # its transfer) falls: they cross at the larger of the two crossings.
        share = max(
            (de_q + de_all - pe_q) / (pe_all + de_all),
            (pe_x + x_all - pe_q) / (pe_all + x_all),
        )
        if (
            share * hit_tokens >= MIN_SPLIT_TOKENS
            and (1.0 - share) * hit_tokens >= MIN_SPLIT_TOKENS
        ):
            shares = (*shares, share)
    compute = turn.compute_s
    if not layerwise:  # the forward first copies the loaded KV into HBM, over the compute NIC
        compute += x_all
    handoff_s_per_byte = 1.0 / dn.cnic_bytes_per_s
    out = []
    for share in shares:
        loaded = pe_q + share * pe_all if share > 0.0 else 0.0
        if share < 1.0:
            rest = 1.0 - share
            loaded = max(loaded, de_q + rest * de_all, pe_x + rest * x_all)
        done = max(queue, loaded) + compute
        ttft = max(done, de_x) + (share * hit + turn.append_bytes) * handoff_s_per_byte
        out.append((share, ttft, loaded))
    return out


def tpot_s(de: EngineState, req: SchedRequest) -> float:
    """Raw predicted time per output token once `req` joins the decode engine's batch."""
    return de.cost.decode_step_s(de.seq + 1, de.tok + req.prompt_tokens)
