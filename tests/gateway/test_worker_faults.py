"""Worker faults injected into real processes: simulated workers killed mid-stream or before the
first byte, workers that hang or stall, clients that hang up, and a gateway told to stop.

Each test runs its own gateway and workers (`tests.support.pd_cluster`), with short timeouts and
a fast health poll set through the gateway's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.support.pd_cluster import requests_on, sim_cluster
from tests.support.procs import free_port, running

pytestmark = pytest.mark.slow

FAST_HEALTH = {"DUALPATH_HEALTH_INTERVAL_S": "0.2", "DUALPATH_TIMEOUTS_CONTROL_S": "1"}
ROUND_ROBIN = ("--policy", "round_robin")  # spreads the requests over every worker


def _body(tokens: int, *, stream: bool = True, words: int = 8, tag: str = "") -> dict[str, Any]:
    content = f"{tag} " + "word " * words
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }


def _complete(events: list[str]) -> bool:
    """A stream that ended well: its finish reason, no error event, then [DONE]."""
    return (
        events[-1:] == ["data: [DONE]"]
        and not any('"error"' in e for e in events)
        and any('"finish_reason":"length"' in e for e in events)
    )


def _broken(events: list[str]) -> dict[str, Any] | None:
    """The error of a stream that ended with an SSE error event then [DONE], else None."""
    if events[-1:] != ["data: [DONE]"] or len(events) < 2 or '"error"' not in events[-2]:
        return None
    error: dict[str, Any] = orjson.loads(events[-2].removeprefix("data: "))["error"]
    return error


class Streams:
    """Concurrent streamed chat requests; `started` is set once each has its first event."""

    def __init__(self, client: httpx.AsyncClient, base: str, count: int) -> None:
        self._client, self._base, self._count = client, base, count
        self._begun = 0
        self.started = asyncio.Event()

    async def one(self, body: dict[str, Any]) -> tuple[int, list[str]]:
        events: list[str] = []
        url = self._base + "/v1/chat/completions"
        async with self._client.stream("POST", url, json=body) as r:
            async for line in r.aiter_lines():
                if not line:
                    continue
                if not events:
                    self._begun += 1
                    if self._begun == self._count:
                        self.started.set()
                events.append(line)
        return r.status_code, events


def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)  # a poll interval


def test_a_killed_decode_worker_ends_only_its_own_streams() -> None:
    n = 6
    with sim_cluster(1, 2, env=FAST_HEALTH, gateway_args=ROUND_ROBIN) as c:

        async def run() -> tuple[int, list[tuple[int, list[str]]]]:
            async with httpx.AsyncClient(timeout=60) as client:
                streams = Streams(client, c.base, n)
                tasks = [asyncio.create_task(streams.one(_body(600))) for _ in range(n)]
                await asyncio.wait_for(streams.started.wait(), 30)
                # Round robin splits them, unless a health check missed on a loaded machine
                # sent them all to one decode: kill the one holding the most.
                held = [await asyncio.to_thread(requests_on, d.url) for d in c.decode]
                on_victim = max(held)
                c.decode[held.index(on_victim)].kill()
                return on_victim, await asyncio.gather(*tasks)

        on_victim, results = asyncio.run(run())
        # New turns go to the survivor (a try on the dead one is retried there).
        after = [
            httpx.post(c.base + "/v1/chat/completions", json=_body(4, stream=False), timeout=30)
            for _ in range(4)
        ]
    assert all(status == 200 for status, _ in results)
    broken = [e for _, events in results if (e := _broken(events)) is not None]
    complete = [events for _, events in results if _complete(events)]
    assert on_victim >= 1
    assert len(broken) == on_victim and len(complete) == n - on_victim, results
    assert all(e["type"] == "upstream_error" and e["message"] for e in broken)
    assert [r.status_code for r in after] == [200] * 4, [r.text for r in after]


def test_a_killed_prefill_worker_is_retried_before_the_first_byte() -> None:
    n = 4
    slow_prefill = ("--time-scale", "12")  # ~1 s per prefill of these prompts
    with sim_cluster(
        2, 1, env=FAST_HEALTH, gateway_args=ROUND_ROBIN, prefill_args=slow_prefill
    ) as c:
        victim = c.prefill[0]

        async def run() -> list[tuple[int, list[str]]]:
            async with httpx.AsyncClient(timeout=60) as client:
                streams = Streams(client, c.base, n)
                bodies = [_body(4, words=1000, tag=f"req{i}") for i in range(n)]
                tasks = [asyncio.create_task(streams.one(b)) for b in bodies]
                deadline = time.monotonic() + 20
                while await asyncio.to_thread(requests_on, victim.url) < 1:
                    assert time.monotonic() < deadline, "the victim never got a request"
                victim.kill()
                return await asyncio.gather(*tasks)

        results = asyncio.run(run())
        decisions = httpx.get(c.base + "/debug/decisions", params={"limit": 100}).json()
    assert all(status == 200 and _complete(events) for status, events in results), results
    (view,) = decisions["models"].values()
    on_victim = [d for d in view["decisions"] if d["prefill"] == victim.url]
    assert on_victim, "no request was placed on the killed prefill"
    assert len(view["decisions"]) > n  # the retries were placed again


def _hung(mode: str, port: int) -> list[str]:
    return [sys.executable, "-m", "tests.support.hung_worker", "--port", str(port), "--mode", mode]


def test_hung_workers_time_out_per_phase_while_the_healthy_pair_keeps_serving() -> None:
    ports = {mode: free_port() for mode in ("hang", "head", "stall")}
    env = {
        **FAST_HEALTH,
        "DUALPATH_TIMEOUTS_FIRST_BYTE_S": "2",
        "DUALPATH_TIMEOUTS_BETWEEN_CHUNKS_S": "2",
        "DUALPATH_BREAKER_FAILURE_THRESHOLD": "2",
        "DUALPATH_BREAKER_COOL_DOWN_S": "60",
    }
    extra: list[dict[str, object]] = [
        {"url": f"http://127.0.0.1:{port}", "role": "decode"} for port in ports.values()
    ]
    with contextlib.ExitStack() as stack:
        for mode, port in ports.items():
            stack.enter_context(running(_hung(mode, port), f"http://127.0.0.1:{port}/health"))
        c = stack.enter_context(
            sim_cluster(1, 1, env=env, gateway_args=ROUND_ROBIN, extra_workers=extra)
        )

        async def timed(client: httpx.AsyncClient) -> tuple[float, int, list[str]]:
            started = time.monotonic()
            status, events = await Streams(client, c.base, 0).one(_body(8))
            return time.monotonic() - started, status, events

        async def round_of(k: int) -> list[tuple[float, int, list[str]]]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*(timed(client) for _ in range(k)))

        first = asyncio.run(round_of(8))  # two per decode worker, round robin
        workers = {w["url"]: w for w in httpx.get(c.base + "/workers").json()["data"]}
        second = asyncio.run(round_of(4))  # every breaker open: only the healthy pair
    healthy = [s for s, status, e in first if status == 200 and _complete(e)]
    timed_out = [orjson.loads(e[0])["error"] for _, status, e in first if status == 504]
    stalled = [err for _, status, e in first if status == 200 and (err := _broken(e))]
    assert len(healthy) == 2 and len(timed_out) == 4 and len(stalled) == 2, first
    assert all(s < 2.0 for s in healthy), "the healthy pair waited on the hung workers"
    # Before the first byte: 504 (no head, or a head and no data); after it: in-band.
    assert sorted("first_byte" in t["message"] for t in timed_out) == [False, False, True, True]
    assert all(t["code"] == "upstream_timeout" for t in [*timed_out, *stalled])
    for port in ports.values():
        assert workers[f"http://127.0.0.1:{port}"]["breaker"]["state"] == "open", workers
    assert all(status == 200 and _complete(e) for _, status, e in second), second
    assert all(s < 2.0 for s, _, _ in second)


def test_a_client_that_hangs_up_before_the_first_byte_aborts_both_legs() -> None:
    slow_prefill = ("--time-scale", "40")  # a prefill of several seconds
    with sim_cluster(1, 1, env=FAST_HEALTH, prefill_args=slow_prefill) as c:
        prefill, decode = c.prefill[0].url, c.decode[0].url

        async def hang_up() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                body = _body(4, words=1000)
                task = asyncio.create_task(Streams(client, c.base, 1).one(body))
                deadline = time.monotonic() + 20
                while await asyncio.to_thread(requests_on, prefill) < 1:
                    assert time.monotonic() < deadline, "the prefill never got the request"
                task.cancel()  # closes the connection
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(hang_up())
        hung_up = time.monotonic()
        _until(lambda: requests_on(prefill) == 0 and requests_on(decode) == 0, 3, "legs freed")
        freed_in = time.monotonic() - hung_up
        aborted = {
            url: httpx.get(url + "/dualpath/aborted").json()["aborted_rids"]
            for url in (prefill, decode)
        }
    assert freed_in < 3
    assert aborted[prefill] and aborted[decode], aborted


def test_sigterm_lets_an_in_flight_stream_finish() -> None:
    env = {**FAST_HEALTH, "DUALPATH_SHUTDOWN_TIMEOUT_S": "30"}
    with sim_cluster(1, 1, env=env) as c:
        gateway = c.gateway.proc
        port = int(c.base.rsplit(":", 1)[1])

        async def run() -> tuple[int, list[str], bool]:
            async with httpx.AsyncClient(timeout=60) as client:
                streams = Streams(client, c.base, 1)
                task = asyncio.create_task(streams.one(_body(500)))
                await asyncio.wait_for(streams.started.wait(), 30)
                os.kill(gateway.pid, signal.SIGTERM)
                refused = await asyncio.to_thread(_refuses, port, 10)
                in_flight = not task.done()
                status, events = await task
                return status, events, refused and in_flight

        status, events, refused_while_streaming = asyncio.run(run())
        code = gateway.wait(30)
    assert status == 200 and _complete(events), events[-3:]
    assert refused_while_streaming  # it stopped listening while the stream went on
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained


def _refuses(port: int, timeout: float) -> bool:
    """Poll until a new connection to `port` is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)  # a poll interval
    return False
