"""Agent turns through `dualpath up` with the KV in a real store: hits are what the store holds.

Both stores: the embedded store server and a real `mooncake_master`, each started by the test so
it can flush, kill and restart them under a running `dualpath up --kv URL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.procs import REPO, dualpath, free_port, running, stop, wait_http_ok

pytestmark = pytest.mark.slow

BLOCK = 64
MODEL = "tiny"


@dataclass
class Stack:
    client: openai.OpenAI
    flush: Callable[[], None]
    kill: Callable[[], None]
    restart: Callable[[], None]


class StoreServer:
    """The embedded store server on a fixed port, killed and restarted (empty) at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "kvstore.store_server", "--port", str(self.port),
               "--capacity-bytes", str(32 << 20)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
        wait_http_ok(self.url + "/health", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def flush(self) -> None:
        httpx.post(self.url + "/v1/blocks/clear").raise_for_status()


def _flush_mooncake(address: str) -> None:
    from kvstore.mooncake_store import MooncakeKVStore

    async def clear() -> None:
        store = await MooncakeKVStore.connect(master=address, segment_bytes=0)
        try:
            await store.clear()
        finally:
            await store.close()

    asyncio.run(clear())


@contextlib.contextmanager
def _store(kind: str) -> Iterator[tuple[str, Stack]]:
    if kind == "embedded":
        server = StoreServer()
        server.start()
        try:
            yield server.url, Stack(None, server.flush, server.stop, server.start)  # type: ignore[arg-type]
        finally:
            server.stop()
        return
    from kvstore.mooncake_master import MooncakeMaster

    master = MooncakeMaster().start()
    try:
        flush = lambda: _flush_mooncake(master.address)  # noqa: E731
        yield f"mooncake://{master.address}", Stack(None, flush, master.stop, master.start)  # type: ignore[arg-type]
    finally:
        master.stop()


@pytest.fixture(scope="module", params=["embedded", "mooncake"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    if request.param == "mooncake":
        pytest.importorskip("mooncake.store", reason="no mooncake wheel for this platform")
    with _store(request.param) as (url, st):
        port = free_port()
        cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1",
                       "--time-scale", "0.01", "--kv", url)  # fmt: skip
        with (
            running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90),
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
            ) as client,
        ):
            st.client = client
            yield st


class Agent:
    """One agent session: each turn appends the reply and a new user message."""

    def __init__(self, client: openai.OpenAI, name: str) -> None:
        self.client = client
        self.name = name
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"You are agent {name}. " + "Follow the plan. " * 40},
            {"role": "user", "content": "Start with the first file."},
        ]
        self.turn = 0

    def step(self) -> tuple[int, int, int]:
        """(prompt, completion, cached) tokens of one turn."""
        reply = self.client.chat.completions.create(
            model=MODEL,
            messages=self.messages,  # type: ignore[arg-type]
            max_tokens=40,
            extra_headers={"X-Session-ID": self.name},
        )
        usage = reply.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        self.turn += 1
        self.messages += [
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": f"Now turn {self.turn}: run the tests and fix them."},
        ]
        cached = usage.prompt_tokens_details.cached_tokens or 0
        return usage.prompt_tokens, usage.completion_tokens, cached


def test_each_turn_hits_everything_the_last_turn_left(stack: Stack) -> None:
    agent = Agent(stack.client, "hits")
    prompt, completion, cached = agent.step()
    assert cached == 0
    for _ in range(5):
        left = prompt + completion
        prompt, completion, cached = agent.step()
        assert cached == left // BLOCK * BLOCK


def test_a_flushed_store_loses_the_hits_until_the_next_turn(stack: Stack) -> None:
    agent = Agent(stack.client, "flush")
    prompt, completion, _ = agent.step()
    prompt, completion, cached = agent.step()
    assert cached > 0
    stack.flush()
    left = prompt + completion
    prompt, completion, cached = agent.step()
    assert cached == 0
    _, _, cached = agent.step()
    assert cached == (prompt + completion) // BLOCK * BLOCK
    assert left < prompt


def test_store_killed_mid_run_costs_hits_not_requests(stack: Stack) -> None:
    agent = Agent(stack.client, "outage")
    agent.step()
    assert agent.step()[2] > 0
    stack.kill()
    for _ in range(3):  # every request still succeeds, computing what it cannot load
        assert agent.step()[2] == 0
    stack.restart()
    deadline = time.monotonic() + 30
    hits = 0
    while hits == 0:  # the store forgot every key: hits return once a turn writes again
        assert time.monotonic() < deadline, "hits never came back after the store restarted"
        hits = agent.step()[2]
    assert hits > 0


def test_up_runs_its_own_mooncake_master_and_sets_the_nics() -> None:
    pytest.importorskip("mooncake.store", reason="no mooncake wheel for this platform")
    port = free_port()
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1",
                   "--time-scale", "0.01", "--kv", "mooncake", "--snic-gbps", "2")  # fmt: skip
    with (
        running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90) as up,
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        ) as client,
    ):
        agent = Agent(client, "own-master")
        prompt, completion, _ = agent.step()
        assert agent.step()[2] == (prompt + completion) // BLOCK * BLOCK
        masters = _children_named(up.pid, "mooncake_master")
        assert len(masters) == 1
        for worker in _workers_with_loads(port):
            kv = httpx.get(worker["url"] + "/server_info").json()["dualpath_kv"]
            assert kv["store"] == "mooncake" and kv["snic_bytes_per_s"] == 2e9
            # The gateway reads each healthy worker's load (and its link queues) every 0.25 s.
            assert worker["load"]["read_q_bytes"] == 0.0 and worker["load"]["age_s"] < 5
    assert not any(_alive(pid) for pid in masters)  # stopped with everything else


def _workers_with_loads(port: int) -> list[dict[str, Any]]:
    """`/ready`'s workers once the gateway has read a load report from each (its first read
    comes within one poll interval of a worker turning healthy)."""
    deadline = time.monotonic() + 10
    while True:
        workers: list[dict[str, Any]] = httpx.get(f"http://127.0.0.1:{port}/ready").json()[
            "workers"
        ]
        if all(w["load"] is not None for w in workers) or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)  # a poll interval


def _children_named(pid: int, name: str) -> list[int]:
    """PIDs of `pid`'s direct children whose command is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == pid and comm.startswith(name[:15]):
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
        state = stat[stat.rindex(")") + 2 :].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_blocks_evicted_by_other_sessions_are_hits_no_more() -> None:
    port = free_port()
    # Room for about ten blocks of the tiny model (548 stored bytes each).
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1",
                   "--time-scale", "0", "--kv-capacity-bytes", "6000")  # fmt: skip
    with (
        running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90),
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        ) as client,
    ):
        first = Agent(client, "first")
        first.step()
        prompt, completion, cached = first.step()
        assert cached > 0
        for name in ("second", "third"):  # their blocks push the first agent's out
            other = Agent(client, name)
            other.step()
            other.step()
        assert first.step()[2] < (prompt + completion) // BLOCK * BLOCK
