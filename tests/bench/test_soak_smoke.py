"""The soak runs end to end in a tiny mode and writes a well-formed report.

No figure is judged here (timings on a shared two-core machine are not test material): only the
report's shape, that turns went through, and, in the kill mode, that the killed decode worker
was named and every failed turn was attributed to a worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "bench" / "soak.py"
TOP_FIELDS = {
    "command",
    "machine",
    "config",
    "targets",
    "requests",
    "errors",
    "latency_measured",
    "gateway_stages_measured",
    "gateway_rss",
    "cpu_cores_after_warmup",
    "client",
    "samples",
    "hit_probe",
}


def _soak(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SCRIPT), "--agents", "6", "--duration", "8", "--warmup", "2",
           "--think", "0", "--sample-interval", "0.5", "--out", str(out), *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    assert report.keys() >= TOP_FIELDS
    assert "soak.py" in report["command"] and report["machine"]["cpu_count"]
    assert report["requests"]["measured"] > 0
    assert report["latency_measured"]["completed"] > 0
    assert report["latency_measured"]["added_p99_ms"] is not None
    assert report["gateway_rss"]["after_warmup_mb"] > 0
    assert {"gateway", "prefill-0", "decode-0", "client"} <= report["cpu_cores_after_warmup"].keys()
    return report


def test_a_tiny_soak_through_dualpath_up(tmp_path: Path) -> None:
    report = _soak(tmp_path)
    assert report["system_under_test"]["launcher"] == "UpCluster"
    assert {t["name"] for t in report["targets"]} == {
        "gateway_rss_growth_after_warmup_mb",
        "errors",
    }


def test_a_tiny_soak_that_kills_a_decode_worker(tmp_path: Path) -> None:
    report = _soak(tmp_path, "--kill-decode-at", "0.4", "--restart-after", "1")
    kill = report["kill"]
    assert len(kill["killed_decode_id"]) == 10  # the id `/workers` gives it
    assert kill["back_at_s"] > kill["kill_at_s"]
    # Every failure is booked to a worker or counted as unattributed; none is lost.
    assert kill["failed_total"] == (
        kill["failed_on_killed_worker"]
        + kill["failed_on_other_workers"]
        + kill["failed_without_worker_header"]
    )
