"""The gateway's dependencies fail under live traffic, with real processes: zero failed requests.

- Redis (the session store) is SIGKILLed while agents keep talking: sessions degrade to the
  gateway's in-process store (`session/failover_store.py`), and once Redis is back the gateway
  writes to it again by itself.
- The Mooncake master (the KV store) is SIGKILLed while agents keep talking: the gateway's hit
  probe keeps the sessions' estimates (`gateway/hit_probe.py`), the workers read and write nothing
  and compute instead; once a master is back, hits return.
- The gateway process restarts while Redis keeps running: a session from before is still known
  to its tenant (and only to it), and its next turn gets its hit.

Every phase waits on turns completed (`AgentLoad.until`), never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import yaml

from engines.worker_registry import Worker
from gateway.embedded_redis import RedisServer
from tests.support.agent_load import BLOCK, SYSTEM, AgentLoad, Tally, agent_load
from tests.support.procs import dualpath, free_port, running, wait_http_ok

pytestmark = pytest.mark.slow

MODEL = "tiny"
TIME_SCALE = "0.01"
"""Fast turns (a few tens of ms of modelled GPU time) that still interleave on the workers."""
OUTAGE_S = 3.0
"""How long a dependency stays down: three of the session store's 1 s retry intervals and of
the Mooncake store's 1 s probe back-off."""


@dataclass(frozen=True)
class Workers:
    config: Path
    """The cluster file naming them, for `dualpath serve`."""
    prefill: str
    decode: str


@contextlib.contextmanager
def pd_workers(tmp: Path, kv_store: str | None = None) -> Iterator[Workers]:
    """One simulated prefill and one decode worker, as real processes."""
    prefill, boot, decode = free_port(), free_port(), free_port()
    common = ["--time-scale", TIME_SCALE, "--model", MODEL]
    if kv_store:
        common += ["--kv-store", kv_store]
    boot_args = ["--bootstrap-port", str(boot)]
    cmds = {
        prefill: dualpath(
            "worker", "--role", "prefill", "--port", str(prefill), *boot_args, *common
        ),
        decode: dualpath("worker", "--role", "decode", "--port", str(decode), *common),
    }
    config = tmp / "cluster.yaml"
    specs = [
        {"url": f"http://127.0.0.1:{prefill}", "role": "prefill", "bootstrap_port": boot},
        {"url": f"http://127.0.0.1:{decode}", "role": "decode"},
    ]
    config.write_text(yaml.safe_dump({"workers": specs}))
    with contextlib.ExitStack() as stack:
        for port, cmd in cmds.items():
            log = tmp / f"worker-{port}.log"
            url = f"http://127.0.0.1:{port}/health"
            stack.enter_context(running(cmd, url, timeout=60, log=log))
        yield Workers(config, specs[0]["url"], specs[1]["url"])


def serve_cmd(workers: Workers, port: int, *extra: str) -> list[str]:
    return dualpath("serve", "--config", str(workers.config), "--port", str(port), *extra)


def assert_no_failures(tally: Tally) -> None:
    assert not tally.failures, f"{len(tally.failures)} failed turns, e.g. {tally.failures[:3]}"


async def _redis_keys(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


async def test_redis_killed_mid_run_fails_no_request(tmp_path: Path) -> None:
    redis = RedisServer().start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    try:
        with (
            pd_workers(tmp_path) as workers,
            running(serve_cmd(workers, port, "--redis", redis.url), base + "/ready", log=log),
        ):
            async with agent_load(base) as load:
                await load.until(12)
                assert_no_failures(load.tally)
                assert await _redis_keys(redis.url) > 0  # sessions live in Redis
                await asyncio.to_thread(redis.stop)
                await load.for_at_least(OUTAGE_S, 24)  # several retry intervals, all served
                await asyncio.to_thread(redis.start)  # back, empty (nothing is persisted)
                restarted = load.done
                # The gateway tries Redis again every second, and commits there once it answers.
                async with asyncio.timeout(30):
                    while await _redis_keys(redis.url) == 0:
                        await load.until(load.done + 1)
                await load.until(load.done + 12)
            text = log.read_text()
    finally:
        redis.stop()
    assert_no_failures(load.tally)
    assert "serving sessions from the in-process store" in text  # it did degrade
    # After the outage, sessions go on hitting what their earlier turns left.
    assert any(t.cached_tokens > 0 for t in load.tally.turns[restarted:] if t.turn > 0)


def _hit_probe(base: str) -> dict[str, Any]:
    probe: dict[str, Any] = httpx.get(base + "/debug/decisions", timeout=5).json()["hit_probe"]
    return probe


async def test_mooncake_master_killed_mid_run_fails_no_request(tmp_path: Path) -> None:
    pytest.importorskip("mooncake.store", reason="no mooncake wheel for this platform")
    from kvstore.mooncake_master import MooncakeMaster

    master = MooncakeMaster(stderr=subprocess.DEVNULL).start()
    store = f"mooncake://{master.address}?metrics={master.metrics_address}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with (
            pd_workers(tmp_path, kv_store=store) as workers,
            running(
                serve_cmd(workers, port, "--kv-store", store),
                base + "/ready",
                log=tmp_path / "gateway.log",
                # A generous probe bound: on a loaded 2-core machine a late answer is a failure.
                env={"DUALPATH_KV_PROBE_TIMEOUT_S": "1"},
            ),
        ):
            async with agent_load(base) as load:
                # Hits loaded from the store, and confirmed there by the gateway, first.
                await load.until_true(lambda t: any(r.cached_tokens > 0 for r in t.turns))
                await load.until(load.done + 6)
                before = await asyncio.to_thread(_hit_probe, base)
                await asyncio.to_thread(master.stop)
                # Past the ~5 s after which a dead master's client calls block for ~4.5 s each.
                await load.for_at_least(2 * OUTAGE_S, 24)
                during = await asyncio.to_thread(_hit_probe, base)
                await asyncio.to_thread(master.start)  # empty: the master forgets every key
                restarted = len(load.tally.turns)

                def hits_again(tally: Tally) -> bool:
                    return any(t.cached_tokens > 0 for t in tally.turns[restarted:])

                # Clients re-mount their segments (~2.5 s), then turns write and hit again.
                await load.until_true(hits_again, limit_s=45)
    finally:
        master.stop()
    assert_no_failures(load.tally)
    assert before["confirmed"] > 0
    assert during["failures"] > before["failures"]  # the probe saw the outage and degraded


def _turn(
    client: httpx.Client, sid: str, messages: list[dict[str, Any]], workers: Workers
) -> dict[str, Any]:
    r = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 12},
        headers={"x-session-id": sid},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-session-id"] == sid
    # The workers that served it, by the ids `/workers` gives them, and the gateway's own time.
    assert r.headers["x-dualpath-prefill"] == Worker(workers.prefill, "prefill").id
    assert r.headers["x-dualpath-decode"] == Worker(workers.decode, "decode").id
    own, queue = r.headers["server-timing"].split(", ")
    assert own.startswith("gateway;dur=") and queue.startswith("queue;dur=")
    assert float(own.removeprefix("gateway;dur=")) >= 0
    reply: dict[str, Any] = r.json()
    messages += [
        {"role": "assistant", "content": reply["choices"][0]["message"]["content"]},
        {"role": "user", "content": f"Tool output {len(messages)}: 1 failed."},
    ]
    return reply


def _session(base: str, sid: str, key: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(f"{base}/v1/sessions/{sid}", headers=headers, timeout=5)


def _committed(base: str, sid: str, key: str, turns: int) -> dict[str, Any]:
    """The session once its `turns`-th turn is committed (commits run after the response)."""
    deadline = time.monotonic() + 10
    while True:
        r = _session(base, sid, key)
        if r.status_code == 200 and r.json()["turns"] >= turns:
            body: dict[str, Any] = r.json()
            return body
        assert time.monotonic() < deadline, f"turn {turns} of {sid} never committed: {r.text}"
        time.sleep(0.02)  # a poll interval


def test_sessions_survive_a_gateway_restart_with_redis(tmp_path: Path) -> None:
    redis = RedisServer().start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sid, key = "survivor", "tenant-a"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Fix the failing test in session/tracker.py."},
    ]
    try:
        with pd_workers(tmp_path) as workers:
            cmd = serve_cmd(workers, port, "--redis", redis.url)
            client = httpx.Client(
                base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30
            )
            with client:
                with running(cmd, base + "/ready", log=tmp_path / "gateway-1.log"):
                    _turn(client, sid, messages, workers)
                    usage = _turn(client, sid, messages, workers)["usage"]
                    assert _committed(base, sid, key, 2)["turns"] == 2
                # The first gateway is gone (SIGTERM, then SIGKILL): a new one on the same port.
                with running(cmd, base + "/ready", log=tmp_path / "gateway-2.log"):
                    wait_http_ok(base + "/ready")
                    kept = _session(base, sid, key)
                    assert kept.status_code == 200 and kept.json()["turns"] == 2
                    assert _session(base, sid, "tenant-b").status_code == 404  # not another's
                    reply = _turn(client, sid, messages, workers)
                    detail = _committed(base, sid, key, 3)
    finally:
        redis.stop()
    expected = (usage["prompt_tokens"] + usage["completion_tokens"]) // BLOCK * BLOCK
    assert expected > 0
    # The new gateway knew the session's blocks (its estimate) and the workers loaded them.
    assert detail["recent_turns"][-1]["hit_tokens"] == expected
    assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == expected


def test_agent_load_counts_every_failure_kind() -> None:
    """The driver itself: a gateway that is not there fails every turn, and it says so."""

    async def run() -> Tally:
        load = AgentLoad(f"http://127.0.0.1:{free_port()}", agents=2, turns=2)
        load.start()
        await load.until(4)
        return await load.stop()

    tally = asyncio.run(run())
    assert len(tally.failures) >= 4 and not tally.turns
    assert "ConnectError" in tally.failures[0]
