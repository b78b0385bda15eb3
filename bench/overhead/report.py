"""From raw point records to medians, side-by-side ratios and the pass/fail targets.

Everything here is pure: it takes the records the runner produced and returns JSON-ready dicts.
Figures are only ever compared inside one run, because the machine is shared and noisy; the
ratios and differences are the result, the absolute numbers are context.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

Record = dict[str, object]
Key = tuple[str, int, str]  # client, concurrency, system

_MEDIAN_FIELDS = (
    "rps",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "e2e_mean_ms",
    "sut_cpu_cores",
    "sut_cpu_ms_per_req",
    "workers_cpu_ms_per_req",
    "client_cpu_cores",
    "sut_peak_rss_mb",
)


def _median(values: Iterable[object]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    return statistics.median(nums) if nums else None


def aggregate(runs: list[Record]) -> dict[Key, Record]:
    """Median of every figure over the repeats of each (client, concurrency, system)."""
    groups: dict[Key, list[Record]] = {}
    for r in runs:
        if "error" in r:
            continue
        key = (str(r["client"]), int(r["concurrency"]), str(r["system"]))  # type: ignore[call-overload]
        groups.setdefault(key, []).append(r)
    out: dict[Key, Record] = {}
    for (client, conc, system), rs in groups.items():
        agg: Record = {
            "client": client,
            "concurrency": conc,
            "system": system,
            "repeats": len(rs),
            "completed": sum(int(r["completed"]) for r in rs),
        }  # type: ignore[call-overload]
        for f in _MEDIAN_FIELDS:
            agg[f] = _median(r.get(f) for r in rs)
        rps = [float(r["rps"]) for r in rs]  # type: ignore[arg-type]
        agg["rps_min"], agg["rps_max"] = min(rps), max(rps)
        agg["errors"] = sum(sum(r["errors"].values()) for r in rs)  # type: ignore[attr-defined]
        out[(client, conc, system)] = agg
    return out


def _diff(a: object, b: object) -> float | None:
    ok = isinstance(a, int | float) and isinstance(b, int | float)
    return float(a) - float(b) if ok else None  # type: ignore[arg-type]


def _ratio(a: object, b: object) -> float | None:
    ok = isinstance(a, int | float) and isinstance(b, int | float) and b
    return float(a) / float(b) if ok else None  # type: ignore[arg-type]


def compare(agg: dict[Key, Record]) -> list[Record]:
    """Each proxy against direct (added latency) and the gateway against the router (ratios)."""
    rows: list[Record] = []
    for (client, conc, system), r in sorted(agg.items()):
        for base_name in ("direct", "router"):
            base = agg.get((client, conc, base_name))
            # direct is the floor, so it is compared with nothing; nothing is compared with itself
            if base is None or system in (base_name, "direct"):
                continue
            rows.append(
                {
                    "client": client,
                    "concurrency": conc,
                    "system": system,
                    "baseline": base_name,
                    **{
                        f"added_{m}": _diff(r[m], base[m])
                        for m in ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms")
                    },
                    "rps_ratio": _ratio(r["rps"], base["rps"]),
                    "sut_cpu_ms_per_req_ratio": _ratio(
                        r["sut_cpu_ms_per_req"], base["sut_cpu_ms_per_req"]
                    ),
                }
            )
    return rows


@dataclass(frozen=True, slots=True)
class Goal:
    """One target from the spec: ``value(system) <= / >= threshold`` at one point."""

    name: str
    description: str
    client: str
    concurrency: int
    threshold: float
    unit: str
    higher_is_better: bool


GOALS = (
    Goal(
        "added_e2e_p50_at_1_stream",
        "added E2E p50 vs direct at 1 stream (quick-ACK client)",
        "quickack",
        1,
        0.4,
        "ms",
        higher_is_better=False,
    ),
    Goal(
        "cpu_per_streamed_pd_request",
        "SUT CPU per streamed PD request at 64 streams",
        "quickack",
        64,
        0.5,
        "ms",
        higher_is_better=False,
    ),
    Goal(
        "rps_vs_router_at_512_streams",
        "requests/s as a fraction of sglang-router's, 512 streams",
        "quickack",
        512,
        0.5,
        "x router",
        higher_is_better=True,
    ),
    Goal(
        "first_token_plain_client_vs_direct",
        "added TTFT p50 vs direct, ordinary keep-alive client, 1 stream",
        "plain",
        1,
        1.0,
        "ms",
        higher_is_better=False,
    ),
)


def goal_value(goal: Goal, agg: dict[Key, Record], system: str) -> float | None:
    def get(sys_name: str, field: str) -> object:
        return (agg.get((goal.client, goal.concurrency, sys_name)) or {}).get(field)

    if goal.name == "added_e2e_p50_at_1_stream":
        return _diff(get(system, "e2e_p50_ms"), get("direct", "e2e_p50_ms"))
    if goal.name == "cpu_per_streamed_pd_request":
        v = get(system, "sut_cpu_ms_per_req")
        return float(v) if isinstance(v, int | float) else None
    if goal.name == "rps_vs_router_at_512_streams":
        return _ratio(get(system, "rps"), get("router", "rps"))
    if goal.name == "first_token_plain_client_vs_direct":
        return _diff(get(system, "ttft_p50_ms"), get("direct", "ttft_p50_ms"))
    raise ValueError(goal.name)


def evaluate(agg: dict[Key, Record], skipped: dict[str, str]) -> list[Record]:
    """Each goal for the gateway (pass/fail) with the router's value beside it for reference."""
    out: list[Record] = []
    for g in GOALS:
        value = goal_value(g, agg, "gateway")
        passed = (
            None
            if value is None
            else (value >= g.threshold if g.higher_is_better else value <= g.threshold)
        )
        note = None
        if value is None:
            note = (
                "gateway skipped: " + skipped["gateway"][:200]
                if "gateway" in skipped
                else f"not measured ({g.client} client, {g.concurrency} streams, "
                "gateway/direct/router needed)"
            )
        out.append(
            {
                "name": g.name,
                "description": g.description,
                "client": g.client,
                "concurrency": g.concurrency,
                "threshold": g.threshold,
                "unit": g.unit,
                "comparison": ">=" if g.higher_is_better else "<=",
                "gateway_value": value,
                "router_value": goal_value(g, agg, "router"),
                "passed": passed,
                "note": note,
            }
        )
    return out
