"""The scheduler cost benchmark runs end to end on small clusters and writes a complete report.

Timings are not judged here (a shared two-core machine); the report's shape is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.scheduler.policies import POLICIES
from tests.support.procs import REPO


def test_tiny_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "scheduler_cost.json"
    cmd = [sys.executable, str(REPO / "bench" / "scheduler_cost.py"), "--engines", "4,64",
           "--iterations", "50", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    report = json.loads(out.read_text())
    assert report["bench"] == "scheduler_cost" and report["machine"]["cpu_count"]
    assert set(report["results"]) == set(POLICIES)
    for sizes in report["results"].values():
        assert set(sizes) == {"4", "64"}
        for r in sizes.values():
            assert r["iterations"] == 50
            assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]
            assert r["place_only_p50_us"] > 0
    assert report["results"]["dualpath-slo"]["64"]["target_p99_us"] == 50.0
