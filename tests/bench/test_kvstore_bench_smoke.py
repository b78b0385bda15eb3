"""The KV store benchmark runs end to end with tiny sizes and writes a well-formed report.

No figure is judged: timings on a shared two-core machine are not test material. Only the report's
shape, and that every backend that could run did, are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kvstore.test_mooncake_store import mooncake_expected
from tests.support.procs import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "bench" / "kvstore.py"
MOONCAKE = ("mooncake", "mooncake_raw", "mooncake_raw_thread")
RATE_FIELDS = {"mb_per_s", "blocks_per_s", "rounds_mb_per_s"}
LATENCY_FIELDS = {"p50_us", "p99_us", "samples"}


def test_tiny_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "kvstore.json"
    cmd = [sys.executable, str(SCRIPT), "--blocks", "64", "--value-bytes", "1024",
           "--rounds", "2", "--prefix-blocks", "64", "--prefix-samples", "10",
           "--segment-mib", "64", "--buffer-mib", "16", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["benchmark"] == "kvstore" and "kvstore.py" in report["command"]
    assert {"cpu_model", "cpu_count", "python", "packages", "mooncake_wheel"} <= report[
        "machine"
    ].keys()
    assert report["config"]["blocks_per_round"] == 64 and report["config"]["value_bytes"] == 1024

    backends = report["backends"]
    assert set(backends) == {*MOONCAKE, "embedded"}
    expected_to_run = ["embedded", *(MOONCAKE if mooncake_expected() else ())]
    for name, result in backends.items():
        if name not in expected_to_run:
            assert result["skipped"], name
            continue
        assert result["skipped"] is None, (name, result)
        for op in ("put", "get"):
            assert result[op].keys() >= RATE_FIELDS and result[op]["mb_per_s"] > 0
            assert len(result[op]["rounds_mb_per_s"]) == 2
        assert result["prefix_lookup"].keys() >= LATENCY_FIELDS
        assert result["prefix_lookup"]["samples"] == 10
    if mooncake_expected():
        assert backends["mooncake"]["errors"] == 0
        for baseline in ("mooncake_raw", "mooncake_raw_thread"):
            assert set(report["ratio_ours_over_raw"][baseline]) == {"put", "get"}

    targets = {t["name"]: t for t in report["targets"]}
    assert set(targets) == {
        "mooncake_put_ours_over_raw",
        "mooncake_get_ours_over_raw",
        "embedded_prefix_p50_us",
    }
    assert all({"threshold", "value", "passed"} <= t.keys() for t in targets.values())
