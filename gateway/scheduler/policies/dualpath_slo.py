"""`dualpath-slo` (the default): place every request to meet its TTFT and TPOT targets.

For a shortlist of prefill engines (shortest compute queue, shortest node read queue) and of
decode engines with KV memory (fewest tokens, shortest node read queue), and for each read plan
(prefill side, decode side, and the split that makes both routes finish together), predict TTFT
and TPOT (`prediction`), corrected by each engine's observed/predicted factor. Rank: TPOT within
target first, then TTFT, then the earlier end of the read (storage-NIC balance), then TPOT
(decode balance). A split is kept only when it lowers TTFT below both single routes.

Dispatch when the best meets the request's deadline. When nothing does, dispatch anyway if its
prefill engine would otherwise go idle (its work would start within `admit_backlog_s`): a late
request still goes first to a free engine. Otherwise hold it; held requests are ordered earliest
deadline first, so the oldest goes next and none starves.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from gateway.scheduler.cluster_state import ClusterState, EngineState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Candidate, Decision, Hold
from gateway.scheduler.policies.base import decide, engines_for
from gateway.scheduler.prediction import TurnCost, balanced_share, load_s, tpot_s, ttft_s
from gateway.scheduler.request import SchedRequest

SPLIT_GAIN = 0.01
"""A split must beat the better single route by this fraction of its TTFT to be worth it."""
GRAIN = 0.01
"""TTFTs and read ends closer than this fraction of the TTFT target rank as equal."""

_PREFILL_KEYS: tuple[Callable[[EngineState], Any], ...] = (
    attrgetter("compute_free_at"),
    attrgetter("node.snic_free_at"),
)
_DECODE_KEYS: tuple[Callable[[EngineState], Any], ...] = (
    attrgetter("tok"),
    attrgetter("node.snic_free_at"),
)


class DualPathSLO:
    name = "dualpath-slo"
    discipline = "edf"
    sheds = True

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config

    def _shortlist(
        self, engines: list[EngineState], keys: Sequence[Callable[[EngineState], Any]]
    ) -> list[EngineState]:
        k = self._config.shortlist
        if len(engines) <= k * len(keys):
            return engines
        chosen: dict[str, EngineState] = {}
        for key in keys:
            for e in heapq.nsmallest(k, engines, key=key):
                chosen[e.id] = e
        return list(chosen.values())

    def _plans(
        self, now: float, pe: EngineState, de: EngineState, req: SchedRequest
    ) -> list[float]:
        if req.hit_tokens == 0:
            return [1.0]
        plans = [1.0, 0.0]
        if self._config.split:
            share = balanced_share(now, pe, de, req)
            if 0.0 < share < 1.0:
                plans.append(share)
        return plans

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        found = engines_for(req, cluster)
        if isinstance(found, Hold):
            return found
        c = self._config
        pes = self._shortlist(found[0], _PREFILL_KEYS)
        des = self._shortlist(found[1], _DECODE_KEYS)
        grain = GRAIN * req.ttft_target_s
        turns: dict[int, TurnCost] = {}
        candidates: list[Candidate] = []
        best: tuple[tuple[Any, ...], Candidate, EngineState, EngineState, float] | None = None
        for de in des:
            tpot = tpot_s(de, req) * de.tpot_factor
            tpot_missed = tpot > req.tpot_target_s and de.seq > 0
            for pe in pes:
                turn = turns.get(id(pe.cost))
                if turn is None:
                    turn = turns[id(pe.cost)] = TurnCost.of(req, pe)
                single = float("inf")
                for share in self._plans(now, pe, de, req):
                    ttft = ttft_s(now, pe, de, turn, share, c.layerwise) * pe.ttft_factor
                    if 0.0 < share < 1.0:
                        if ttft >= single * (1.0 - SPLIT_GAIN):
                            continue
                    else:
                        single = min(single, ttft)
                    loaded = load_s(now, pe, de, turn.hit_bytes, share)
                    cand = Candidate(pe.id, de.id, share, ttft, tpot)
                    candidates.append(cand)
                    key = (
                        tpot_missed,
                        round(ttft / grain) if grain else ttft,
                        round(loaded / grain) if grain else loaded,
                        tpot,
                        pe.index,
                        de.index,
                        share,
                    )
                    if best is None or key < best[0]:
                        best = (key, cand, pe, de, loaded)
        assert best is not None  # engines_for found at least one of each
        key, chosen, pe, _, loaded = best
        if key[0]:
            return Hold(
                f"every decode engine would exceed the TPOT target (best {chosen.tpot_s:.4f}s)"
            )
        return self._verdict(req, chosen, pe, loaded, now, candidates)

    def _verdict(
        self,
        req: SchedRequest,
        chosen: Candidate,
        pe: EngineState,
        loaded: float,
        now: float,
        candidates: list[Candidate],
    ) -> Decision | Hold:
        if now + chosen.ttft_s <= req.deadline:
            if chosen.tpot_s <= req.tpot_target_s:
                reason = "meets TTFT and TPOT targets"
            else:
                reason = "meets TTFT; decode engine idle"
            return decide(req, chosen, self.name, reason, now, candidates)
        admit = self._config.admit_backlog_s
        wait = max(pe.queue_s(now), loaded)
        if wait <= admit:
            late = now + chosen.ttft_s - req.deadline
            reason = f"late by {late:.3f}s; prefill engine free within {wait:.3f}s"
            return decide(req, chosen, self.name, reason, now, candidates)
        return Hold(
            f"no placement meets the TTFT target (best {chosen.ttft_s:.3f}s, "
            f"{req.deadline - now:.3f}s left); prefill busy for {wait:.3f}s",
            until=now + wait - admit,
        )
