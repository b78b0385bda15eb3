"""The tracing benchmark runs end to end in its quickest mode and writes a well-formed report.

No figure is judged (timings on a shared two-core machine are not test material): only the
report's shape, that requests went through both gateways, and that the traced one's spans
reached the benchmark's OTLP receiver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "bench" / "tracing_overhead.py"


def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "tracing.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--duration", "0.5", "--warmup", "0.2",
           "--sampling", "1,0.5", "--no-table", "--out", str(out),
           "--logdir", str(tmp_path / "logs")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = json.loads(out.read_text())
    assert "tracing_overhead.py" in report["command"]
    assert {"cpu_model", "cpu_count", "python", "packages"} <= report["machine"].keys()
    assert set(report["systems"]) == {"gateway", "gateway-traced", "gateway-traced-0.5"}
    assert {r["system"] for r in report["results"]} == set(report["systems"])
    assert all(r["completed"] > 0 and r["errors"] == 0 for r in report["results"])
    rows = {c["system"]: c for c in report["comparisons"]}
    assert set(rows) == {"gateway-traced", "gateway-traced-0.5"}
    for row in rows.values():
        assert row["added_e2e_p50_fraction"] is not None and row["passed"] in (True, False)
    traced = report["receiver"]
    # Every traced request sends 4 spans or more (5 with a session; none when unsampled).
    assert traced["posts"] > 0 and traced["spans"] >= 4 * traced["traced_requests_measured"] // 2
