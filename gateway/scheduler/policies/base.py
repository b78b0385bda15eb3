"""The policy interface and the helpers every policy shares.

A policy places one request given the cluster state and `now`, or says why it cannot yet. It
never mutates the cluster (the `Scheduler` books a decision); it may keep its own bounded memory
(a round-robin turn, session affinity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from gateway.scheduler.cluster_state import ClusterState, EngineState
from gateway.scheduler.decision import Candidate, Decision, Hold
from gateway.scheduler.prediction import TurnCost, plans, tpot_s
from gateway.scheduler.request import SchedRequest

Discipline = Literal["fifo", "edf"]


class Policy(Protocol):
    name: str
    discipline: Discipline
    """Order of the held requests: first come first served, or earliest deadline first."""
    sheds: bool
    """Whether a request predicted to wait too long is rejected (429) rather than held."""

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold: ...


def has_memory(de: EngineState, req: SchedRequest) -> bool:
    """The decode engine can hold the request's whole context (prompt and output)."""
    return de.kv_free_tokens >= req.prompt_tokens + req.output_tokens


def shared_paths(pe: EngineState, de: EngineState) -> frozenset[str]:
    """The read paths both workers of a pair take part in."""
    return pe.read_paths & de.read_paths


def engines_for(
    req: SchedRequest, cluster: ClusterState
) -> tuple[list[EngineState], list[EngineState]] | Hold:
    """Healthy prefill engines and the healthy decode engines with memory for `req`."""
    pes = cluster.healthy("prefill")
    if not pes:
        return Hold("no healthy prefill engine")
    des = [d for d in cluster.healthy("decode") if has_memory(d, req)]
    if not des:
        need = req.prompt_tokens + req.output_tokens
        return Hold(f"no healthy decode engine has KV memory for {need} tokens")
    return pes, des


def candidate(
    now: float,
    pe: EngineState,
    de: EngineState,
    req: SchedRequest,
    share: float,
    layerwise: bool,
    turn: TurnCost | None = None,
    note: str = "",
) -> Candidate:
    """A candidate with its corrected predictions."""
    turn = turn or TurnCost.of(req, pe)
    ((_, raw, _),) = plans(now, pe, de, turn, req.hit_tokens, layerwise, (share,))
    ttft = raw * pe.ttft_factor
    return Candidate(pe.id, de.id, share, ttft, tpot_s(de, req) * de.tpot_factor, note)


def decide(
    req: SchedRequest,
    chosen: Candidate,
    policy: str,
    reason: str,
    now: float,
    candidates: Sequence[Candidate] = (),
) -> Decision:
    return Decision(
        rid=req.rid,
        prefill=chosen.prefill,
        decode=chosen.decode,
        pe_share=chosen.pe_share,
        predicted_ttft_s=chosen.ttft_s,
        predicted_tpot_s=chosen.tpot_s,
        policy=policy,
        reason=reason,
        at=now,
        waited_s=max(now - req.arrival, 0.0),
        candidates=tuple(candidates) or (chosen,),
    )
