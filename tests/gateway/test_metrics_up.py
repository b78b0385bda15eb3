"""`/metrics` of a real `dualpath up` (gateway and simulated workers as processes): parsed with
Prometheus' own text parser, its counters move as agent turns flow through."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import REPO, dualpath, free_port, running

pytestmark = pytest.mark.slow

AGENTS = 4
TURNS = 2
CHAT = "/v1/chat/completions"

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(base: str) -> Values:
    response = httpx.get(base + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _sum(values: Values, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, key), v in values.items() if n == name and want <= set(key))


def _by(values: Values, name: str, label: str) -> dict[str, float]:
    return {dict(key)[label]: v for (n, key), v in values.items() if n == name}


async def _agent(client: openai.AsyncOpenAI, name: str) -> None:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": f"You are agent {name}. " + "Context to keep. " * 200},
    ]
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"step {turn}: " + "go on " * 30})
        stream = await client.chat.completions.create(
            model="tiny",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=6,
            stream=True,
            extra_headers={"x-session-id": name},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        messages.append({"role": "assistant", "content": text})


def test_counters_move_as_requests_flow_through_a_real_gateway() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "2",
                   "--time-scale", "1", "--snic-gbps", "0.02")  # fmt: skip

    async def run() -> None:
        async with openai.AsyncOpenAI(
            base_url=base + "/v1", api_key="none", max_retries=0, timeout=60
        ) as client:
            await asyncio.gather(*(_agent(client, f"m{i}") for i in range(AGENTS)))
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(
                    model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=1
                )

    with running(cmd, base + "/ready", timeout=90):
        _every_worker_reporting(base)
        before = _scrape(base)
        asyncio.run(run())
        after = _reported_since(base, before)
        workers = httpx.get(base + "/ready", timeout=10).json()["workers"]

    def moved(name: str, **labels: str) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    n = AGENTS * TURNS
    assert moved("dualpath_requests_total", route=CHAT, status="200") == n
    assert moved("dualpath_requests_total", route=CHAT, status="404") == 1
    for name in ("ttft", "tpot", "e2e", "queue_wait"):
        assert moved(f"dualpath_{name}_seconds_count", model="tiny") == n, name
    for stage in ("parse", "session", "kv_lookup", "schedule", "dispatch"):
        assert moved("dualpath_stage_seconds_count", stage=stage) == n, stage
    # The gateway's own stages are fast next to the request they serve.
    overhead = moved("dualpath_stage_seconds_sum") - moved(
        "dualpath_stage_seconds_sum", stage="kv_lookup"
    )
    assert overhead < moved("dualpath_e2e_seconds_sum", model="tiny")
    paths = _by(after, "dualpath_read_path_decisions_total", "read_path")
    assert sum(paths.values()) == n and set(paths) <= {"pe", "de", "split"}
    assert moved("dualpath_session_misses_total", model="tiny") == AGENTS  # first turns
    assert moved("dualpath_session_hits_total", model="tiny") == AGENTS * (TURNS - 1)
    assert moved("dualpath_kv_hit_tokens_total") > 0  # later turns load the earlier ones' KV
    assert moved("dualpath_prompt_tokens_total") > moved("dualpath_kv_hit_tokens_total")
    assert _sum(after, "dualpath_active_sessions") == AGENTS
    assert _sum(after, "dualpath_queue_depth", model="tiny") == 0
    assert ("dualpath_sheds_total", (("model", "tiny"),)) in after
    # One load gauge per engine of the cluster; storage-NIC figures for each node.
    urls = {w["url"] for w in workers}
    assert set(_by(after, "dualpath_engine_max_tokens", "engine")) == urls
    assert set(_by(after, "dualpath_snic_queue_seconds", "node")) == urls
    assert moved("dualpath_snic_read_bytes_total") > 0
    assert max(_by(after, "dualpath_snic_utilization", "node").values()) > 0
    assert all(n.startswith("dualpath_") for n, _ in after)
    _grafana_queries_match(after)


def _every_worker_reporting(base: str, timeout: float = 60) -> None:
    """`/ready` needs one healthy worker per role; the per-engine gauges need every worker
    healthy and polled once (on a loaded machine a worker can lag its siblings)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = httpx.get(base + "/ready", timeout=10).json()["workers"]
        if all(w["healthy"] and w["load"] is not None for w in workers):
            return
        assert time.monotonic() < deadline, workers
        time.sleep(0.05)  # a poll interval, not a wait for an event we could observe


def _reported_since(base: str, before: Values, timeout: float = 30) -> Values:
    """A scrape once a load report newer than the run's reads is in: the node counters come from
    the workers' `/v1/loads`, polled every 0.25 s, and on a loaded machine the poll lags."""
    deadline = time.monotonic() + timeout
    while True:
        after = _scrape(base)
        read = _sum(after, "dualpath_snic_read_bytes_total")
        if read > _sum(before, "dualpath_snic_read_bytes_total") or time.monotonic() > deadline:
            return after  # past the deadline the assertions say what did not move
        time.sleep(0.05)  # a poll interval, not a wait for an event we could observe


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in ([v] if k == "expr" else _exprs(v))]
    return [e for v in node for e in _exprs(v)] if isinstance(node, list) else []


def _grafana_queries_match(scraped: Values) -> None:
    """Each `dualpath_*` series the provisioned Grafana dashboard queries, and each label it
    groups by, is one the gateway exports: a renamed metric or label fails here."""
    labels: dict[str, set[str]] = {}
    for name, key in scraped:
        labels.setdefault(name, set()).update(k for k, _ in key)
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/dualpath.json").read_text())
    checked = 0
    for expr in _exprs(dashboard):
        for metric in re.findall(r"dualpath_\w+", expr):
            assert metric in labels, (metric, expr)
            grouped = {g.strip() for m in re.findall(r"by \(([^)]*)\)", expr) for g in m.split(",")}
            assert grouped - {"le", ""} <= labels[metric], (metric, expr)
            checked += 1
    assert checked >= 5
