"""The dual-path scheduler through `dualpath up` with 1 prefill and 2 decode workers.

Many agent sessions at once against slow storage NICs (tiny model, 20 MB/s per node): the
prefill node's read queue grows, so the scheduler loads hit blocks through the decode nodes too
(`de`, or `split` across both). Every request succeeds, both sides' storage NICs carry reads,
and `/debug/decisions` explains the choices.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.support.procs import dualpath, free_port, running

pytestmark = pytest.mark.slow

SESSIONS = 12
TURNS = 3


async def _agent(client: openai.AsyncOpenAI, name: str) -> list[int]:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": f"You are agent {name}. " + "Context to keep. " * 300},
    ]
    cached: list[int] = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"step {turn} of {name}: " + "go on " * 40})
        reply = await client.chat.completions.create(
            model="tiny",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            extra_headers={"x-session-id": name},
        )
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        cached.append(reply.usage.prompt_tokens_details.cached_tokens or 0)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
    return cached


def _kv_counters(url: str) -> dict[str, Any]:
    loads = httpx.get(url + "/v1/loads", timeout=10).json()["loads"]
    return loads[0]["dualpath"]["kv"]


def test_reads_go_through_both_sides_and_every_request_succeeds() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "2",
                   "--time-scale", "1", "--snic-gbps", "0.02")  # fmt: skip

    async def run() -> list[list[int]]:
        async with openai.AsyncOpenAI(
            base_url=base + "/v1", api_key="none", max_retries=0, timeout=120
        ) as client:
            return await asyncio.gather(*(_agent(client, f"a{i}") for i in range(SESSIONS)))

    with running(cmd, base + "/ready", timeout=90):
        cached = asyncio.run(run())
        workers = httpx.get(base + "/ready", timeout=10).json()["workers"]
        explained = httpx.get(base + "/debug/decisions", params={"limit": 1000}).json()
        one = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        reads = {
            w["role"] + w["url"]: _kv_counters(w["url"])["storage_read_blocks"] for w in workers
        }
    assert all(c[0] == 0 and c[-1] > 0 for c in cached), cached  # later turns hit
    prefill = [n for k, n in reads.items() if k.startswith("prefill")]
    decode = [n for k, n in reads.items() if k.startswith("decode")]
    assert prefill[0] > 0 and sum(decode) > 0, reads
    (view,) = explained["models"].values()
    paths = [d["read_path"] for d in view["decisions"]]
    assert len(paths) == SESSIONS * TURNS
    assert {"de", "split"} & set(paths), paths
    assert explained["policy"] == "dualpath-slo"
    assert one.status_code == 200 and one.headers["x-dualpath-read-path"] == "pe"  # no hit
    for d in view["decisions"]:
        assert d["candidates"] and d["reason"]
        assert d["candidates"][0]["ttft_s"] == d["predicted_ttft_s"]
