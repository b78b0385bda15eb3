"""The simulator is checked against the real system: the same small trace replayed through
`dualpath up` (real processes, real time, real KV store) and through `dualpath simulate` with
the same cluster (1P1D, tiny model, time scale 4, 20 MB/s storage NICs) gives TTFT and JCT
within 15%.

Measured when written: JCT real/sim 1.06, TTFT p50 1.03 (the real side adds HTTP, session
hashing and the hit probe per turn, and loads whole 64-token blocks only).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import REPO, dualpath, free_port, running

pytestmark = pytest.mark.slow

TOLERANCE = 0.15
CLUSTER = ("--time-scale", "4", "--snic-gbps", "0.02")
TRACE = """\
{"format": "dualpath-trace", "version": 1, "meta": {"note": "simulator vs real system"}}
{"agent": "a0", "turns": [{"append": 1500, "output": 24}, {"append": 300, "output": 24}, {"append": 300, "output": 24}, {"append": 300, "output": 24}]}
{"agent": "a1", "turns": [{"append": 1400, "output": 24}, {"append": 320, "output": 24}, {"append": 280, "output": 24}, {"append": 310, "output": 24}]}
{"agent": "a2", "turns": [{"append": 1600, "output": 24}, {"append": 290, "output": 24}, {"append": 330, "output": 24}, {"append": 300, "output": 24}]}
"""  # noqa: E501


def test_simulated_ttft_and_jct_agree_with_the_real_system(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(TRACE)
    sim_json = tmp_path / "sim.json"
    subprocess.run(
        dualpath("simulate", "--trace", str(trace), "--model", "tiny", "--cluster", "1P1D",
                 *CLUSTER, "--json", str(sim_json)),
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    sim = json.loads(sim_json.read_text())["policies"]["dualpath-slo"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1", *CLUSTER)
    with running(up, base + "/ready", timeout=90):
        subprocess.run(
            dualpath("replay", "--url", base, "--trace", str(trace), "--mode", "offline",
                     "--out", str(tmp_path / "replay"), "--no-progress"),
            cwd=REPO, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    real = json.loads((tmp_path / "replay" / "results.json").read_text())["summary"]
    assert real["completed"] == real["requests"] == sim["requests"] == 12
    jct = real["jct_s"] / sim["jct_s"]
    ttft = real["ttft_s"]["p50"] / sim["ttft_p50_s"]
    assert abs(jct - 1) <= TOLERANCE, f"JCT real {real['jct_s']:.3f} s, sim {sim['jct_s']:.3f} s"
    assert abs(ttft - 1) <= TOLERANCE, (
        f"TTFT p50 real {real['ttft_s']['p50']:.3f} s, sim {sim['ttft_p50_s']:.3f} s"
    )
