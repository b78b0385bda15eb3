"""The simulator is checked against the real system: the same small trace replayed through
`dualpath up` (real processes, real time, real KV store) and through `dualpath simulate` with
the same cluster (1P1D, tiny model, time scale 4, 20 MB/s storage NICs) gives TTFT and JCT
within 15%.

Measured when written: JCT real/sim 1.06, TTFT p50 1.03 (the real side adds HTTP, session
hashing and the hit probe per turn, and loads whole 64-token blocks only).

The real side runs in wall-clock time on a shared host, and a stall of the host only ever adds
time: CI once saw JCT 1.60 with no error, where the same head gave 1.02-1.13 here, even with
three busy loops on one core. And whether the three first turns meet in one prefill batch
depends on their arrival by a millisecond (it moves JCT by ~10%). So the real side gets up to
`ATTEMPTS` fresh runs and the test passes on the first that agrees; a simulator that is wrong
fails them all, and the failure quotes every attempt, turn by turn, with the host's steal time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import REPO, dualpath, free_port, running

pytestmark = pytest.mark.slow

TOLERANCE = 0.15
ATTEMPTS = 3
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
    assert sim["requests"] == 12
    attempts: list[str] = []
    for attempt in range(ATTEMPTS):
        steal_before = _steal_ticks()
        out = tmp_path / f"replay{attempt}"
        real = _replay_on_a_fresh_system(trace, out)
        assert real["completed"] == real["requests"] == 12
        jct = real["jct_s"] / sim["jct_s"]
        ttft = real["ttft_s"]["p50"] / sim["ttft_p50_s"]
        if abs(jct - 1) <= TOLERANCE and abs(ttft - 1) <= TOLERANCE:
            return
        attempts.append(
            f"attempt {attempt}: JCT real {real['jct_s']:.3f} s / sim {sim['jct_s']:.3f} s ="
            f" {jct:.3f}, TTFT p50 real {real['ttft_s']['p50']:.3f} s / sim"
            f" {sim['ttft_p50_s']:.3f} s = {ttft:.3f}; host steal"
            f" {_steal_ticks() - steal_before} ticks\n{_turns(out / 'samples.jsonl')}"
        )
    pytest.fail(f"no attempt within {TOLERANCE:.0%}:\n" + "\n".join(attempts))


def _replay_on_a_fresh_system(trace: Path, out: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1", *CLUSTER)
    with running(up, base + "/ready", timeout=90):
        subprocess.run(
            dualpath("replay", "--url", base, "--trace", str(trace), "--mode", "offline",
                     "--out", str(out), "--no-progress"),
            cwd=REPO, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    summary: dict[str, Any] = json.loads((out / "results.json").read_text())["summary"]
    return summary


def _turns(samples: Path) -> str:
    """One line per turn: when it was sent, its TTFT and end, and how much of it was cached."""
    rows = sorted(
        (json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["sent_at"]
    )
    return "\n".join(
        f"  {r['agent']} turn {r['turn']}: sent {r['sent_at']:.3f} ttft"
        f" {r['first_token_at'] - r['sent_at']:.3f} end {r['end_at']:.3f} cached"
        f" {r['cached_tokens']}/{r['prompt_tokens']} {r['read_path']}"
        for r in rows
    )


def _steal_ticks() -> int:
    """CPU time the hypervisor gave to others (USER_HZ ticks, all CPUs; 0 where unreported)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0
    return int(fields[8]) if len(fields) > 8 else 0
