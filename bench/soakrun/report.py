"""From samples and scrapes to the soak's figures: latencies, errors, RSS growth, CPU, stages."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from soakrun.agents import Sample
from soakrun.sampler import Point

RSS_GROWTH_TARGET_MB = 50.0


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1), linearly interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(values: Sequence[float], q: float) -> float | None:
    v = pct(values, q)
    return None if v is None else round(v * 1e3, 3)


def latency(samples: Sequence[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None and s.e2e is not None]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    e2e = [s.e2e for s in ok if s.e2e is not None]
    own = [s.gateway_ms / 1e3 for s in samples if s.gateway_ms is not None]
    queue = [s.queue_ms / 1e3 for s in samples if s.queue_ms is not None]
    return {
        "completed": len(ok),
        "ttft_p50_ms": _ms(ttft, 0.5),
        "ttft_p99_ms": _ms(ttft, 0.99),
        "e2e_p50_ms": _ms(e2e, 0.5),
        "e2e_p99_ms": _ms(e2e, 0.99),
        "added_p50_ms": _ms(own, 0.5),
        "added_p99_ms": _ms(own, 0.99),
        "added_p999_ms": _ms(own, 0.999),
        "added_max_ms": _ms(own, 1.0),
        "queue_wait_p50_ms": _ms(queue, 0.5),
        "queue_wait_p99_ms": _ms(queue, 0.99),
        "cached_token_share": _share(ok),
    }


def _share(ok: Sequence[Sample]) -> float | None:
    prompt = sum(s.prompt_tokens for s in ok)
    return round(sum(s.cached_tokens for s in ok) / prompt, 4) if prompt else None


def errors(samples: Sequence[Sample]) -> dict[str, Any]:
    kinds = Counter(s.error for s in samples if s.error is not None)
    examples: dict[str, str] = {}
    for s in samples:
        if s.error is not None and s.error not in examples:
            examples[s.error] = s.detail
    return {"total": sum(kinds.values()), "by_kind": dict(kinds), "examples": examples}


def rss(points: Sequence[Point], name: str, warmup_s: float) -> dict[str, Any]:
    """RSS of process `name` over time: at the end of warm-up, at the end, peak, and growth."""
    series = [(p.t, p.rss_mb[name]) for p in points if name in p.rss_mb]
    after = [(t, mb) for t, mb in series if t >= warmup_s]
    if not after:
        return {"samples": len(series)}
    base, last = after[0][1], after[-1][1]
    return {
        "samples": len(series),
        "start_mb": series[0][1],
        "after_warmup_mb": base,
        "end_mb": last,
        "peak_mb": max(mb for _, mb in series),
        "growth_after_warmup_mb": round(last - base, 2),
        "max_growth_after_warmup_mb": round(max(mb for _, mb in after) - base, 2),
        "slope_mb_per_min": _slope(after),
        "target_growth_mb": RSS_GROWTH_TARGET_MB,
        "passed": last - base <= RSS_GROWTH_TARGET_MB,
    }


def _slope(series: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares MB per minute."""
    if len(series) < 2:
        return None
    n = len(series)
    mt = sum(t for t, _ in series) / n
    mm = sum(m for _, m in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    if var == 0:
        return None
    cov = sum((t - mt) * (m - mm) for t, m in series)
    return round(cov / var * 60, 3)


def cpu_cores(points: Sequence[Point], warmup_s: float) -> dict[str, float]:
    """Each process's CPU cores in use between the end of warm-up and the last sample (a
    restarted process's counter restarts: its figure then covers less)."""
    after = [p for p in points if p.t >= warmup_s]
    if len(after) < 2:
        return {}
    first, last = after[0], after[-1]
    span = last.t - first.t
    out = {}
    for name, end in last.cpu_s.items():
        start = first.cpu_s.get(name, 0.0)
        out[name] = round(max(end - start, 0.0) / span, 3) if span > 0 else 0.0
    return out


def stage_quantiles(before: str, after: str) -> dict[str, dict[str, Any]]:
    """Each `dualpath_stage_seconds` stage between two scrapes: its count, and the histogram
    bucket holding its p50 and p99, as [lower, upper] ms (buckets are coarse: 50-250 ms is one,
    so no value inside one is claimed)."""
    b, a = _buckets(before), _buckets(after)
    out: dict[str, dict[str, Any]] = {}
    for stage, cumulative in a.items():
        old = b.get(stage, {})
        delta = sorted((le, n - old.get(le, 0.0)) for le, n in cumulative.items())
        out[stage] = {
            "count": delta[-1][1] if delta else 0.0,
            "p50_bucket_ms": _bucket_of(delta, 0.5),
            "p99_bucket_ms": _bucket_of(delta, 0.99),
        }
    return out


def _buckets(text: str) -> dict[str, dict[float, float]]:
    found: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "dualpath_stage_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                found.setdefault(s.labels["stage"], {})[float(s.labels["le"])] = s.value
    return found


def _bucket_of(cumulative: list[tuple[float, float]], q: float) -> list[float | None] | None:
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return None
    lower = 0.0
    for le, n in cumulative:
        if n >= q * total:
            upper = None if math.isinf(le) else round(le * 1e3, 4)  # None: past the last bound
            return [round(lower * 1e3, 4), upper]
        lower = le
    return None


def machine_busy(points: Sequence[Point], warmup_s: float) -> float | None:
    """Share of the machine's CPU time in use (by anyone) between warm-up's end and the end."""
    after = [p for p in points if p.t >= warmup_s and p.machine_busy[1] > 0]
    if len(after) < 2:
        return None
    busy = after[-1].machine_busy[0] - after[0].machine_busy[0]
    total = after[-1].machine_busy[1] - after[0].machine_busy[1]
    return round(busy / total, 3) if total > 0 else None


def sheds(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "dualpath_sheds":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def kill_check(
    samples: Sequence[Sample], killed_id: str, kill_at: float, back_at: float
) -> dict[str, Any]:
    """Did only the streams on the killed decode worker fail?"""
    failed = [s for s in samples if s.error is not None]
    on_killed = [s for s in failed if s.decode == killed_id]
    elsewhere = [s for s in failed if s.decode is not None and s.decode != killed_id]
    unknown = [s for s in failed if s.decode is None]
    caught = [s for s in samples if s.decode == killed_id and s.started <= kill_at <= s.ended]
    return {
        "killed_decode_id": killed_id,
        "streams_on_it_at_kill": len(caught),
        "of_those_failed": sum(1 for s in caught if s.error is not None),
        "failed_total": len(failed),
        "failed_on_killed_worker": len(on_killed),
        "failed_on_other_workers": len(elsewhere),
        "failed_without_worker_header": len(unknown),
        "failed_without_worker_examples": sorted({f"{s.error}: {s.detail}" for s in unknown})[:5],
        "failed_elsewhere_examples": sorted({f"{s.error}: {s.detail}" for s in elsewhere})[:5],
        "failures_by_kind": dict(Counter(s.error for s in failed)),
        "failures_started_before_kill": sum(1 for s in failed if s.started <= kill_at),
        "failures_started_after_restart": sum(1 for s in failed if s.started >= back_at),
        "only_killed_worker_streams_failed": not elsewhere and not unknown,
    }
