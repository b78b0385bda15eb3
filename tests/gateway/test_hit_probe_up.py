"""Through `dualpath up`: the gateway checks each turn's hit against the workers' KV store, so
blocks evicted by other sessions are neither scheduled nor announced as hits."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.gateway.test_kv_turns import BLOCK, Agent
from tests.support.procs import dualpath, free_port, running

pytestmark = pytest.mark.slow


def _recomputed(prefill: str) -> int:
    """Tokens the gateway told the prefill were cached that it had to compute (since start)."""
    loads = httpx.get(prefill + "/v1/loads", timeout=5).json()["loads"]
    return int(loads[0]["dualpath"]["kv"]["recomputed_tokens"])


def _hit_probe(base: str) -> dict[str, Any]:
    probe: dict[str, Any] = httpx.get(base + "/debug/decisions", timeout=5).json()["hit_probe"]
    return probe


def test_evicted_blocks_are_taken_off_the_hit_before_scheduling() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Room for about ten blocks of the tiny model (548 stored bytes each).
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1",
                   "--time-scale", "0", "--kv-capacity-bytes", "6000")  # fmt: skip
    with (
        # A generous probe bound: on a loaded test machine a late answer would keep estimates.
        running(cmd, base + "/ready", timeout=90, env={"DUALPATH_KV_PROBE_TIMEOUT_S": "2"}),
        openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0) as client,
    ):
        workers = httpx.get(base + "/ready", timeout=5).json()["workers"]
        (prefill,) = [w["url"] for w in workers if w["role"] == "prefill"]
        first = Agent(client, "first")
        first.step()
        prompt, completion, cached = first.step()
        assert cached > 0
        probe = _hit_probe(base)
        assert probe["probes"] == 1 and probe["confirmed"] == 1 and probe["failures"] == 0
        for name in ("second", "third"):  # their blocks push the first agent's out
            other = Agent(client, name)
            other.step()
            other.step()
        before, recomputed = _hit_probe(base), _recomputed(prefill)
        estimate = (prompt + completion) // BLOCK * BLOCK  # what the session step expects
        _, _, cached = first.step()
        assert cached < estimate
        after = _hit_probe(base)
        assert after["lowered"] == before["lowered"] + 1 and after["failures"] == 0
        lowered_by = after["tokens_lowered"] - before["tokens_lowered"]
        # The gateway scheduled (and told the workers to expect) only what the store held: the
        # prefill computed nothing it was told was cached. Without the probe it would have
        # counted `estimate - cached` here.
        assert estimate - lowered_by == cached
        assert _recomputed(prefill) == recomputed
