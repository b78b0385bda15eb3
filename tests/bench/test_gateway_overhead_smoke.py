"""The overhead benchmark runs end to end in its quickest mode and writes a well-formed report.

No figure is judged here: timings on a shared two-core machine are not test material. Only the
report's shape and that requests went through are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.procs import REPO, free_port, running

pytestmark = pytest.mark.slow

SCRIPT = REPO / "bench" / "gateway_overhead.py"
FAKE = REPO / "bench" / "fake_worker.py"

RESULT_FIELDS = {
    "client",
    "concurrency",
    "system",
    "repeats",
    "completed",
    "rps",
    "rps_min",
    "rps_max",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "sut_cpu_cores",
    "sut_cpu_ms_per_req",
    "workers_cpu_ms_per_req",
    "client_cpu_cores",
    "sut_peak_rss_mb",
    "errors",
}
TARGET_FIELDS = {
    "name",
    "client",
    "concurrency",
    "threshold",
    "unit",
    "comparison",
    "gateway_value",
    "router_value",
    "passed",
    "note",
}


def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--concurrency",
        "1",
        "--targets",
        "direct,router",
        "--no-table",
        "--out",
        str(out),
        "--logdir",
        str(tmp_path / "logs"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = json.loads(out.read_text())
    assert "gateway_overhead.py" in report["command"]
    assert {"cpu_model", "cpu_count", "python", "packages"} <= report["machine"].keys()
    assert report["machine"]["packages"]["sglang-router"]
    assert set(report["systems"]) == {"direct", "router"}
    assert all(s["skipped"] is None for s in report["systems"].values())

    results = report["results"]
    assert {(r["system"], r["client"]) for r in results} == {
        (s, c) for s in ("direct", "router") for c in ("plain", "quickack")
    }
    for r in results:
        assert r.keys() >= RESULT_FIELDS
        assert r["concurrency"] == 1
        assert r["completed"] > 0
    assert {(c["system"], c["baseline"]) for c in report["comparisons"]} == {("router", "direct")}

    targets = report["targets"]
    assert len(targets) == 4
    for t in targets:
        assert t.keys() >= TARGET_FIELDS
        # No gateway in this run, so no target can be judged, and the report says why.
        assert t["passed"] is None
        assert t["note"]


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_fake_worker_answers_what_routers_probe(role: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        str(FAKE),
        "--role",
        role,
        "--port",
        str(port),
        "--tokens",
        "3",
        "--bootstrap-port",
        "8123",
    ]
    with running(cmd, base + "/health"), httpx.Client(base_url=base) as http:
        info = http.get("/server_info").json()
        assert info["disaggregation_mode"] == role
        assert info["disaggregation_bootstrap_port"] == 8123
        assert http.get("/v1/models").json()["data"][0]["id"] == info["served_model_name"]
        for path in (
            "/health_generate",
            "/get_server_info",
            "/model_info",
            "/get_load",
            "/v1/loads",
        ):
            assert http.get(path).status_code == 200, path
        assert http.post("/abort_request", json={"rid": "x"}).status_code == 200

        body = {
            "model": "m",
            "messages": [],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]
        finish = chunks[-2]["choices"][0]["finish_reason"]
        assert finish == ("length" if role == "prefill" else "stop")
        content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        assert len(content) == (1 if role == "prefill" else 3)

        plain = http.post("/v1/chat/completions", json={"messages": []}).json()
        assert plain["object"] == "chat.completion"
