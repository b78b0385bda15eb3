"""Table tests for each policy on hand-built cluster states (`builders.LinearCost` numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies import POLICIES, make_policy
from gateway.scheduler.request import SchedRequest
from tests.gateway.scheduler.builders import COST, LinearCost, cluster, request


def _place(name: str, state, req: SchedRequest, now: float = 0.0, **config) -> Decision | Hold:  # type: ignore[no-untyped-def]
    return make_policy(SchedulerConfig(policy=name, **config)).place(req, state, now)


def _decided(verdict: Decision | Hold) -> Decision:
    assert isinstance(verdict, Decision), verdict
    return verdict


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="dualpath-slo"):
        make_policy(SchedulerConfig(policy="fastest"))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_skips_a_decode_engine_without_memory(name: str) -> None:
    state = cluster(2, 2, kv_capacity_tokens=100_000)
    state.engines["d0"].kv_reported_used = 99_000  # 1,000 free, the request needs 1,150
    for _ in range(4):
        assert _decided(_place(name, state, request())).decode == "d1"


def test_slo_finds_the_one_decode_engine_with_memory_among_many() -> None:
    state = cluster(2, 12, kv_capacity_tokens=100_000)  # past SCAN_MAX: the ranked path
    for i in range(12):
        engine = state.engines[f"d{i}"]
        engine.kv_reported_used = 99_000 if i != 7 else 0
        state.touch(engine)
    assert _decided(_place("dualpath-slo", state, request())).decode == "d7"
    state.engines["d7"].kv_reported_used = 99_500
    state.touch(state.engines["d7"])
    verdict = _place("dualpath-slo", state, request())
    assert isinstance(verdict, Hold) and "KV memory" in verdict.reason


@settings(max_examples=60, deadline=None)
@given(
    used=st.lists(st.integers(0, 100_000), min_size=9, max_size=30),
    tok=st.lists(st.integers(0, 3), min_size=30, max_size=30),
    seq=st.lists(st.integers(0, 3), min_size=30, max_size=30),
    read=st.lists(st.integers(0, 3), min_size=30, max_size=30),
)
def test_slo_compares_few_decode_engines_with_room_as_the_rankings_would(
    used: list[int], tok: list[int], seq: list[int], read: list[int]
) -> None:
    """Few engines with room are compared directly; many, by walking the rankings past the
    full ones: the same engines either way, ties included (small values make many)."""
    from gateway.scheduler.policies import dualpath_slo

    def verdicts(few: int) -> list[Decision | Hold]:
        state = cluster(2, len(used), kv_capacity_tokens=100_000)  # past SCAN_MAX: rankings
        for i, u in enumerate(used):
            d = state.engines[f"d{i}"]
            d.kv_reported_used, d.tok, d.seq = u, 1000 * tok[i], seq[i]
            d.node.snic_free_at = float(read[i])
            state.touch(d)
        policy = make_policy(SchedulerConfig(policy="dualpath-slo"))
        old, dualpath_slo.FEW_WITH_ROOM = dualpath_slo.FEW_WITH_ROOM, few
        try:
            return [policy.place(request(rid="r"), state, 0.0) for _ in range(2)]
        finally:
            dualpath_slo.FEW_WITH_ROOM = old

    direct, walked = verdicts(len(used)), verdicts(0)
    for a, b in zip(direct, walked, strict=True):
        assert type(a) is type(b)
        if isinstance(a, Decision) and isinstance(b, Decision):
            assert (a.prefill, a.decode, a.pe_share) == (b.prefill, b.decode, b.pe_share)
        else:
            assert a == b


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_holds_without_a_healthy_engine(name: str) -> None:
    state = cluster(1, 1)
    state.set_healthy("p0", False)
    verdict = _place(name, state, request())
    assert isinstance(verdict, Hold) and "prefill" in verdict.reason
    state.set_healthy("p0", True)
    state.set_healthy("d0", False)
    assert isinstance(_place(name, state, request()), Hold)


@pytest.mark.parametrize("name", ["round_robin", "cache_aware", "basic"])
def test_peer_policies_read_on_the_prefill_side(name: str) -> None:
    state = cluster(1, 1)
    state.engines["p0"].node.snic_free_at = 100.0  # even when that side is swamped
    assert _decided(_place(name, state, request())).read_path == "pe"


def test_round_robin_takes_engines_in_turn() -> None:
    state = cluster(2, 3)
    policy = make_policy(SchedulerConfig(policy="round_robin"))
    picks = [_decided(policy.place(request(), state, 0.0)) for _ in range(6)]
    assert [d.prefill for d in picks] == ["p0", "p1"] * 3
    assert [d.decode for d in picks] == ["d0", "d1", "d2"] * 2


def test_cache_aware_keeps_a_session_on_its_engine_until_load_is_imbalanced() -> None:
    state = cluster(2, 1)
    policy = make_policy(SchedulerConfig(policy="cache_aware"))
    first = _decided(policy.place(request(session="s"), state, 0.0))
    assert first.prefill == "p0"
    state.engines["p0"].seq = 5  # busier, but not imbalanced by SGLang's thresholds
    assert _decided(policy.place(request(session="s"), state, 0.0)).prefill == "p0"
    assert _decided(policy.place(request(session="new"), state, 0.0)).prefill == "p1"
    state.engines["p0"].seq = 60
    assert _decided(policy.place(request(session="s"), state, 0.0)).prefill == "p1"


def test_basic_takes_the_engines_with_fewest_tokens() -> None:
    state = cluster(2, 2)
    state.engines["p0"].tok = 5000
    state.engines["d1"].tok = 5000
    d = _decided(_place("basic", state, request()))
    assert (d.prefill, d.decode, d.read_path) == ("p1", "d0", "pe")


def test_dualpath_reads_from_the_side_with_the_shorter_queue() -> None:
    state = cluster(1, 1)
    assert _decided(_place("dualpath", state, request())).read_path == "pe"  # a tie: prefill
    state.engines["p0"].node.snic_free_at = 2.0
    d = _decided(_place("dualpath", state, request()))
    assert d.read_path == "de" and d.pe_share == 0.0 and d.de_share == 1.0


def test_dualpath_prefers_a_short_read_queue_over_fewer_tokens() -> None:
    state = cluster(2, 1)
    state.engines["p0"].node.snic_free_at = 10.0  # over α = 3 s: class C3
    state.engines["p1"].tok = 50_000  # more tokens, but a short read queue: C2
    d = _decided(_place("dualpath", state, request()))
    assert d.prefill == "p1" and d.reason.startswith("C2")
    state.engines["p1"].node.snic_free_at = 10.0  # both C3: fewest tokens wins
    assert _decided(_place("dualpath", state, request())).prefill == "p0"


def test_dualpath_holds_when_every_prefill_engine_is_over_beta() -> None:
    state = cluster(2, 1)
    for p in ("p0", "p1"):
        state.engines[p].compute_free_at = 6.0  # 6 s of queued compute > β = 5 s
    assert isinstance(_place("dualpath", state, request()), Hold)
    assert isinstance(_place("dualpath", state, request(), now=1.5), Decision)


def test_dualpath_decode_avoids_engines_over_z_then_balances_requests() -> None:
    state = cluster(1, 0)
    for i in range(3):
        state.add_engine(f"d{i}", "decode", COST, node="dnode")  # one group of three
    state.engines["d0"].tok, state.engines["d0"].seq = 20_000, 1  # over Z
    state.engines["d1"].tok, state.engines["d1"].seq = 1_000, 4
    state.engines["d2"].tok, state.engines["d2"].seq = 2_000, 2
    assert _decided(_place("dualpath", state, request())).decode == "d2"  # under Z, fewest seq


def test_slo_splits_the_read_when_both_sides_are_idle() -> None:
    state = cluster(1, 1)
    d = _decided(_place("dualpath-slo", state, request(hit=1000)))
    assert d.read_path == "split" and d.pe_share == pytest.approx(0.5)
    assert d.pe_share + d.de_share == 1.0
    # 0.5 s to read each half, 0.1 s to copy it into HBM (not layer-wise), 0.1 s compute,
    # 0.06 s handoff; a single route needs 1.21 s+
    assert d.predicted_ttft_s == pytest.approx(0.76)
    singles = [c for c in d.candidates if c.read_path != "split"]
    assert min(c.ttft_s for c in singles) == pytest.approx(1.21)


def test_slo_without_split_reads_where_the_queue_is_short() -> None:
    state = cluster(1, 1)
    state.engines["p0"].node.snic_free_at = 3.0
    d = _decided(_place("dualpath-slo", state, request(), split=False))
    assert d.read_path == "de"
    state.engines["p0"].node.snic_free_at = 0.0
    state.engines["d0"].node.snic_free_at = 3.0
    assert _decided(_place("dualpath-slo", state, request(), split=False)).read_path == "pe"


def test_slo_split_leans_to_the_idle_side() -> None:
    state = cluster(1, 1)
    state.engines["p0"].node.snic_free_at = 0.6
    d = _decided(_place("dualpath-slo", state, request(hit=1000)))
    assert d.read_path == "split" and d.pe_share == pytest.approx(0.2)


def test_slo_reads_where_the_nodes_read_least_of_late_when_ttft_ties() -> None:
    """A 0.2 s read: every route's TTFT is within the slack's tenth of the best, so balance
    decides. Idle nodes: the split (0.1 s on each). A prefill node that read 5 s of KV and has
    drained its queue: the decode side, until those reads have decayed."""
    state = cluster(1, 1)
    d = _decided(_place("dualpath-slo", state, request(hit=200)))
    assert d.read_path == "split"
    state.engines["p0"].node.queue_read(0.0, 5e6)
    d = _decided(_place("dualpath-slo", state, request(hit=200, at=6.0), now=6.0))
    assert d.read_path == "de"
    assert state.engines["p0"].node.read_q_s(6.0) == 0.0  # not the queue: the recent reads
    d = _decided(_place("dualpath-slo", state, request(hit=200, at=100.0), now=100.0))
    assert d.read_path == "split"


def test_slo_takes_the_prefill_engine_with_the_shorter_queue() -> None:
    state = cluster(2, 1)
    state.engines["p0"].compute_free_at = 2.0
    assert _decided(_place("dualpath-slo", state, request())).prefill == "p1"


def test_slo_holds_a_request_no_engine_can_serve_in_time_then_admits_it_late() -> None:
    state = cluster(1, 1)
    state.engines["p0"].compute_free_at = 10.0
    verdict = _place("dualpath-slo", state, request(ttft=4.0))
    assert isinstance(verdict, Hold) and verdict.until == pytest.approx(9.5)
    late = _decided(_place("dualpath-slo", state, request(ttft=4.0), now=9.6))
    assert late.reason.startswith("late")


def test_slo_meets_a_target_even_behind_a_queue_when_it_can() -> None:
    state = cluster(1, 1)
    state.engines["p0"].compute_free_at = 2.0
    d = _decided(_place("dualpath-slo", state, request(ttft=4.0)))
    assert d.reason.startswith("meets") and d.predicted_ttft_s < 4.0


def test_slo_holds_while_every_busy_decode_engine_would_miss_tpot() -> None:
    state = cluster(1, 2)
    for d in ("d0", "d1"):
        state.engines[d].seq = 50  # 10 ms + 51 ms per step > 50 ms
    verdict = _place("dualpath-slo", state, request(tpot=0.05))
    assert isinstance(verdict, Hold) and "TPOT" in verdict.reason
    state.engines["d1"].seq = 0
    assert _decided(_place("dualpath-slo", state, request(tpot=0.05))).decode == "d1"


def test_slo_prefers_the_decode_engine_with_lower_tpot() -> None:
    state = cluster(1, 2)
    state.engines["d0"].seq = 10
    assert _decided(_place("dualpath-slo", state, request(hit=0))).decode == "d1"


def test_correction_factor_scales_predictions() -> None:
    state = cluster(1, 1)
    base = _decided(_place("dualpath-slo", state, request())).predicted_ttft_s
    state.engines["p0"].ttft_factor = 2.0
    assert _decided(_place("dualpath-slo", state, request())).predicted_ttft_s == pytest.approx(
        2 * base
    )


def test_slo_shortlist_finds_the_idle_engine_in_a_large_cluster() -> None:
    state = cluster(64, 64)
    for i in range(64):
        state.engines[f"p{i}"].compute_free_at = 1.0 + i / 100
        state.engines[f"d{i}"].tok, state.engines[f"d{i}"].seq = 1000 + i, 1
    state.engines["p37"].compute_free_at = 0.0
    state.engines["d41"].tok, state.engines["d41"].seq = 0, 0
    for e in state.engines.values():
        state.touch(e)  # fields changed behind the index's back
    d = _decided(_place("dualpath-slo", state, request(hit=0)))
    assert (d.prefill, d.decode) == ("p37", "d41")


@pytest.mark.parametrize("name", ["dualpath", "dualpath-slo"])
def test_a_worker_that_only_reads_on_its_own_side_gets_the_prefill_path(name: str) -> None:
    state = cluster(1, 0)
    state.add_engine("d0", "decode", COST, read_paths=frozenset({"pe"}))  # a stock SGLang
    state.engines["p0"].node.snic_free_at = 1.0  # the decode side would be faster
    assert _decided(_place(name, state, request())).read_path == "pe"


def test_instant_links_are_no_reason_to_divide_by_zero() -> None:
    """Time-scale-0 workers model every link as infinitely fast."""
    fast = LinearCost(snic_bytes_per_s=float("inf"), cnic_bytes_per_s=float("inf"))
    state = cluster(1, 1, cost=fast)
    d = _decided(_place("dualpath-slo", state, request(hit=4096)))
    assert d.read_path in ("pe", "de")


def test_slo_reads_nothing_through_the_decode_side_when_nothing_is_cached() -> None:
    d = _decided(_place("dualpath-slo", cluster(1, 1), request(hit=0)))
    assert d.read_path == "pe" and [c.read_path for c in d.candidates] == ["pe"]


def test_slo_breaks_a_tie_towards_the_prefill_side() -> None:
    fast = LinearCost(snic_bytes_per_s=float("inf"), cnic_bytes_per_s=float("inf"))
    d = _decided(_place("dualpath-slo", cluster(1, 1, cost=fast), request(hit=4096)))
    assert d.read_path == "pe"


def test_basic_dual_keeps_basic_placement_and_alternates_the_read_side() -> None:
    state = cluster(2, 2)
    state.engines["p0"].tok = 5000
    state.engines["p1"].node.snic_free_at = 2.0  # a long read queue it does not look at
    policy = make_policy(SchedulerConfig(policy="basic-dual"))
    sides = [_decided(policy.place(request(), state, 0.0)) for _ in range(4)]
    assert {(d.prefill, d.decode) for d in sides} == {("p1", "d0")}
    assert [d.read_path for d in sides] == ["pe", "de", "pe", "de"]
