"""`dualpath-slo` (the default): place every request to meet its TTFT and TPOT targets.

Two decode engines with KV memory are paired: the lower predicted TPOT of the one with the
fewest tokens and the one with the fewest requests, and the one with the shortest node read
queue if it keeps TPOT within target. Prefill engines are shortlisted by the earliest they could
start (the later of their compute queue and their node's read queue) and by the shortest node
read queue; each is paired with the first decode engine, the best of them with the second. For
each pair and read plan (prefill side, decode side, and the split that makes both routes finish
together) TTFT is predicted (`prediction`), corrected by each engine's observed/predicted
factor. Rank: TPOT within target first, then TTFT, then storage-NIC balance (the route whose
nodes read least of late, `NodeState.recent_reads_s`; then the earlier end of the read), then
TPOT (decode balance). A split is kept only when it lowers TTFT below both single
routes. The shortlists keep a decision O(k log n), not O(P × D).

Dispatch when the best meets the request's deadline. When nothing does, dispatch anyway if its
prefill engine would otherwise go idle (its work would start within `admit_backlog_s`): a late
request still goes first to a free engine. Otherwise hold it; held requests are ordered earliest
deadline first, so the oldest goes next and none starves.
"""

from __future__ import annotations

from itertools import takewhile
from operator import itemgetter

from gateway.scheduler.cluster_state import ClusterState, EngineState, leaders_among
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Candidate, Decision, Hold
from gateway.scheduler.policies.base import decide, has_memory, shared_paths
from gateway.scheduler.prediction import SINGLE_ROUTES, TurnCost, plans, tpot_s
from gateway.scheduler.request import SchedRequest

SPLIT_GAIN = 0.01
"""A split must beat the better single route by this fraction of its TTFT to be worth it."""
GRAIN = 0.01
"""TTFTs within this fraction of the TTFT target of the best rank as equal."""
BALANCE_SLACK = 0.1
"""… and so do TTFTs within this share of the slack the best leaves before the deadline."""
EXPLAINED = 6
"""Candidates kept with a decision, best first."""
EPSILON_S = 1e-9
FEW_WITH_ROOM = 8
"""Up to this many decode engines with KV memory for a request are compared directly."""
_DECODE_KEYS = ("tok", "seq", "read_q")

# (rank key, TPOT missed, prefill, decode, prefill share, TTFT, TPOT, end of the read)
_Rated = tuple[tuple[object, ...], bool, EngineState, EngineState, float, float, float, float]
_FIRST = itemgetter(0)


def _unique(engines: list[EngineState]) -> list[EngineState]:
    return list({e.index: e for e in engines}.values())


def _booked(now: float, pe: EngineState, de: EngineState, share: float, hit: float) -> float:
    """The larger recent reading (`NodeState.recent_reads_s`) of the nodes a read plan reads
    on, once it is booked."""
    end = pe.node.recent_reads_s(now, hit * share) if share > 0.0 else 0.0
    if share < 1.0:
        end = max(end, de.node.recent_reads_s(now, hit * (1.0 - share)))
    return end


class DualPathSLO:
    name = "dualpath-slo"
    discipline = "edf"
    sheds = True

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config

    def _decodes(
        self, req: SchedRequest, cluster: ClusterState
    ) -> list[tuple[bool, float, EngineState]] | Hold:
        """(TPOT missed, predicted TPOT, engine) for the decode engines worth pairing: the
        lower predicted TPOT of the one with the fewest tokens and the one with the fewest
        requests, then the one with the shortest read queue if it keeps TPOT within target."""

        def fits(d: EngineState) -> bool:
            return has_memory(d, req)

        # The roomiest first: when they cannot hold the request none can, found without
        # walking every decode engine (a cluster short of KV memory holds, and retries, many
        # requests). In free-memory order the engines with room come first: when few have room
        # they are all here, and are compared directly rather than by walking each ranking past
        # the full ones.
        roomiest = cluster.ranked("decode", "kv_free", FEW_WITH_ROOM + 1)
        if not roomiest:
            return Hold("no healthy decode engine")
        room = list(takewhile(fits, roomiest))
        if not room:
            need = req.prompt_tokens + req.output_tokens
            return Hold(f"no healthy decode engine has KV memory for {need} tokens")
        if len(room) > FEW_WITH_ROOM:
            leaders = cluster.leaders("decode", _DECODE_KEYS, fits)
        else:
            leaders = leaders_among(room, _DECODE_KEYS)
        light, few, freest = leaders
        rated = []
        for d in (light,) if few is light else (light, few):
            tpot = tpot_s(d, req) * d.tpot_factor
            rated.append((tpot > req.tpot_target_s and d.seq > 0, tpot, d))
        out = [min(rated, key=lambda r: (r[0], r[1], r[2].index))]
        first = out[0][2]
        # Worth a second pairing only if its storage NIC is free noticeably sooner.
        if freest.node.snic_free_at < first.node.snic_free_at - GRAIN * req.ttft_target_s:
            tpot = tpot_s(freest, req) * freest.tpot_factor
            if tpot <= req.tpot_target_s or freest.seq == 0:
                out.append((False, tpot, freest))
        return out

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        if not cluster.healthy("prefill"):
            return Hold("no healthy prefill engine")
        decodes = self._decodes(req, cluster)
        if isinstance(decodes, Hold):
            return decodes
        k = self._config.shortlist
        pes = cluster.healthy("prefill")
        if len(pes) > 2 * k:
            pes = _unique(
                cluster.ranked("prefill", "ready", k) + cluster.ranked("prefill", "read_q", k)
            )
        # Every prefill engine with the lightest decode engine, then the best prefill engine
        # with the decode engine whose storage NIC is freest, if that is another one.
        rated = self._rate(req, now, pes, decodes[:1])
        if len(decodes) > 1:
            rated += self._rate(req, now, [min(rated, key=_FIRST)[2]], decodes[1:])
        # TTFTs near the best tie, and balance decides among them: within a grain, or within a
        # share of the slack the best leaves before the deadline (spent on balance, not lost).
        best = min(rated, key=_FIRST)[0]
        slack = req.deadline - now - best[1]
        cutoff = best[1] + max(GRAIN * req.ttft_target_s, BALANCE_SLACK * slack)
        rated.sort(key=lambda r: (r[0][0], 0.0 if r[0][1] <= cutoff else r[0][1], *r[0][2:]))
        _, missed, pe, _, _, _, tpot, loaded = rated[0]
        if missed:
            return Hold(f"every decode engine would exceed the TPOT target (best {tpot:.4f}s)")
        candidates = [Candidate(r[2].id, r[3].id, r[4], r[5], r[6]) for r in rated[:EXPLAINED]]
        return self._verdict(req, candidates, pe, loaded, now)

    def _rate(
        self,
        req: SchedRequest,
        now: float,
        pes: list[EngineState],
        decodes: list[tuple[bool, float, EngineState]],
    ) -> list[_Rated]:
        """Every (prefill, decode, read plan) with its rank key: TPOT within target, TTFT, the
        nodes' recent reads, the end of the read, TPOT, then registration order."""
        c = self._config
        rated: list[_Rated] = []
        turns: dict[int, TurnCost] = {}
        for pe in pes:
            turn = turns.get(id(pe.cost))
            if turn is None:
                turn = turns[id(pe.cost)] = TurnCost.of(req, pe)
            factor = pe.ttft_factor
            for missed, tpot, de in decodes:
                single = float("inf")
                paths = shared_paths(pe, de)
                # Nothing cached: nothing to read, so no route but the plain one.
                shares = SINGLE_ROUTES if "de" in paths and req.hit_tokens > 0 else (1.0,)
                split = c.split and "split" in paths
                for share, raw, loaded in plans(
                    now, pe, de, turn, req.hit_tokens, c.layerwise, shares, split
                ):
                    ttft = raw * factor
                    if 0.0 < share < 1.0 and ttft >= single * (1.0 - SPLIT_GAIN):
                        continue  # a split must beat both single routes
                    single = min(single, ttft)
                    key = (
                        missed,
                        ttft,
                        # Storage-NIC balance: the route whose nodes read least of late, then
                        # the earlier end of the read.
                        _booked(now, pe, de, share, turn.hit_bytes),
                        loaded,
                        tpot,
                        pe.index,
                        de.index,
                        -share,  # a tie reads on the prefill side, as the paper's rule does
                    )
                    rated.append((key, missed, pe, de, share, ttft, tpot, loaded))
        return rated

    def _verdict(
        self,
        req: SchedRequest,
        candidates: list[Candidate],
        pe: EngineState,
        loaded: float,
        now: float,
    ) -> Decision | Hold:
        chosen = candidates[0]
        if now + chosen.ttft_s <= req.deadline:
            if chosen.tpot_s <= req.tpot_target_s:
                reason = "meets TTFT and TPOT targets"
            else:
                reason = "meets TTFT; decode engine idle"
            return decide(req, chosen, self.name, reason, now, candidates)
        admit = self._config.admit_backlog_s
        wait = max(pe.queue_s(now), loaded)
        if wait <= admit + EPSILON_S:  # a float hair over must not hold it for no time at all
            late = now + chosen.ttft_s - req.deadline
            reason = f"late by {late:.3f}s; prefill engine free within {wait:.3f}s"
            return decide(req, chosen, self.name, reason, now, candidates)
        return Hold(
            f"no placement meets the TTFT target (best {chosen.ttft_s:.3f}s, "
            f"{req.deadline - now:.3f}s left); prefill busy for {wait:.3f}s",
            until=now + wait - admit,
        )
