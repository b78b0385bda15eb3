"""The hit probe against real stores: the embedded store in-process and behind its real server,
a port nobody listens on, and a server that accepts but never answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from engines.chat_template import render_chat
from engines.tokenizer import WordPieceTokenizer
from gateway.errors import ConfigError
from gateway.hit_probe import HitProbe, confirmed_blocks
from gateway.launcher import free_port
from gateway.prompt_tokens import TemplateTokens
from gateway.request_parsing import ParsedRequest
from gateway.sched_request import sched_request
from gateway.scheduler.config import SchedulerConfig
from gateway.settings import load_settings
from kvstore import block_key
from kvstore.embedded_store import EmbeddedKVStore
from kvstore.http_store import HTTPKVStore
from kvstore.store_server import serving
from session.memory_store import MemorySessionStore
from session.tracker import Prompt, SessionTracker, TurnOutcome, TurnPlan

BLOCK = 64
TOKENIZER = WordPieceTokenizer()
TIMEOUT_S = 0.05


def _text(seed: int, words: int) -> str:
    vocab = "alpha beta gamma delta read the file and run tests then fix code".split()
    return " ".join(vocab[(seed * 7 + i * 3) % len(vocab)] + str(i % 10) for i in range(words))


def _prompt(messages: Sequence[Mapping[str, Any]]) -> Prompt:
    return Prompt("t1", "m", None, messages, orjson.dumps(list(messages)))


def _worker_keys(messages: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The keys the workers store this prompt's blocks under (`engines/sim_worker/kv_io.py`)."""
    root = block_key.chain_root(b"", "t1", "m")
    return block_key.chain_blocks(root, TOKENIZER.encode(render_chat(messages)), BLOCK)


async def _agent_plan(turns: int = 8) -> tuple[TurnPlan, list[bytes]]:
    """The plan of an agent's last turn (a hit of many blocks), and its prompt's worker keys."""
    tracker = SessionTracker(MemorySessionStore(), TemplateTokens(TOKENIZER), block_key)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": _text(0, 150)},
        {"role": "user", "content": _text(1, 40)},
    ]
    for i in range(turns):
        plan = await tracker.begin(_prompt(messages))
        reply = _text(i + 2, 30)
        outcome = TurnOutcome(len(TOKENIZER.encode(" " + reply)), 0.1, 0.01, "p", "d", time.time())
        await tracker.finish(plan, outcome)
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "tool", "tool_call_id": f"c{i}", "content": _text(i + 3, 90)},
        ]
    plan = await tracker.begin(_prompt(messages))
    assert plan.hit_tokens >= 8 * BLOCK
    return plan, _worker_keys(messages)


async def _stored(store: Any, keys: Sequence[bytes]) -> None:
    assert await store.put([(key, b"kv-block") for key in keys]) == len(keys)


@pytest.fixture
async def embedded() -> AsyncIterator[EmbeddedKVStore]:
    store = EmbeddedKVStore(capacity_bytes=1 << 20)
    try:
        yield store
    finally:
        await store.close()


def test_confirmed_blocks_is_the_run_of_probed_blocks_all_present() -> None:
    assert confirmed_blocks([0, 3, 7], [True, True, True]) == 8
    assert confirmed_blocks([0, 3, 7], [True, False, True]) == 1
    assert confirmed_blocks([2, 3, 7], [False, True, True]) == 0
    assert confirmed_blocks([], []) == 0


async def test_a_stored_chain_confirms_the_whole_hit(embedded: EmbeddedKVStore) -> None:
    plan, keys = await _agent_plan()
    await _stored(embedded, keys)
    probe = HitProbe(embedded, TIMEOUT_S)
    assert await probe.confirmed_hit(plan) == plan.hit_tokens
    c = probe.counters
    assert (c.probes, c.confirmed, c.lowered, c.tokens_lowered, c.failures) == (1, 1, 0, 0, 0)


async def test_a_missing_middle_block_lowers_the_hit_to_before_it(
    embedded: EmbeddedKVStore,
) -> None:
    plan, keys = await _agent_plan()
    await _stored(embedded, keys)
    indexes = [i for i, _ in plan.probe_points()]
    gone = indexes[len(indexes) // 2]
    assert await embedded.remove([keys[gone]]) == 1
    probe = HitProbe(embedded, TIMEOUT_S)
    hit = await probe.confirmed_hit(plan)
    before = indexes[indexes.index(gone) - 1]
    assert hit == (before + 1) * BLOCK <= gone * BLOCK < plan.hit_tokens
    c = probe.counters
    assert (c.probes, c.confirmed, c.lowered, c.failures) == (1, 0, 1, 0)
    assert c.tokens_lowered == plan.hit_tokens - hit


async def test_only_the_evicted_tail_is_taken_off(embedded: EmbeddedKVStore) -> None:
    plan, keys = await _agent_plan()
    last = plan.hit_tokens // BLOCK - 1
    await _stored(embedded, keys[:last])  # LRU took the chain's tail first: the last hit block
    hit = await HitProbe(embedded, TIMEOUT_S).confirmed_hit(plan)
    kept = [i for i, _ in plan.probe_points() if i < last]
    assert hit == (kept[-1] + 1) * BLOCK < plan.hit_tokens


async def test_an_empty_store_confirms_nothing(embedded: EmbeddedKVStore) -> None:
    plan, _ = await _agent_plan()
    probe = HitProbe(embedded, TIMEOUT_S)
    assert await probe.confirmed_hit(plan) == 0
    assert (probe.counters.lowered, probe.counters.tokens_lowered) == (1, plan.hit_tokens)


async def test_a_turn_without_a_hit_asks_the_store_nothing(embedded: EmbeddedKVStore) -> None:
    tracker = SessionTracker(MemorySessionStore(), TemplateTokens(TOKENIZER), block_key)
    plan = await tracker.begin(_prompt([{"role": "user", "content": _text(5, 200)}]))
    probe = HitProbe(embedded, TIMEOUT_S)
    assert plan.hit_tokens == 0 and await probe.confirmed_hit(plan) == 0
    assert probe.counters.probes == 0


async def test_through_the_real_store_server(embedded: EmbeddedKVStore) -> None:
    plan, keys = await _agent_plan()
    await _stored(embedded, keys)
    async with serving(embedded) as url:
        client = HTTPKVStore(url, timeout_s=2.0)
        try:
            probe = HitProbe(client, 1.0)  # generous: this machine is shared
            assert await probe.confirmed_hit(plan) == plan.hit_tokens
            await embedded.clear()
            assert await probe.confirmed_hit(plan) == 0  # up but empty: believed
            assert (probe.counters.confirmed, probe.counters.lowered) == (1, 1)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def _dropping_first_connection(upstream: str) -> AsyncIterator[str]:
    """A real TCP proxy to `upstream` that hangs up on its first connection unanswered (an idle
    keep-alive connection the server closed as the client reused it looks the same)."""
    host, port = upstream.removeprefix("http://").split(":")
    dropped = False

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dropped
        if not dropped:
            dropped = True
            await reader.read(1 << 16)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_failed_look_up_is_not_taken_for_an_evicted_chain(
    embedded: EmbeddedKVStore,
) -> None:
    """The failed `exists` answers all-missing and the store is up again by the time it is
    asked: the probe looks again rather than cutting the hit to nothing."""
    plan, keys = await _agent_plan()
    await _stored(embedded, keys)
    async with serving(embedded) as url, _dropping_first_connection(url) as flaky:
        client = HTTPKVStore(flaky, timeout_s=2.0)
        try:
            probe = HitProbe(client, 1.0)  # generous: this machine is shared
            assert await probe.confirmed_hit(plan) == plan.hit_tokens
            c = probe.counters
            assert (c.confirmed, c.lowered) == (1, 0) and (await client.stats()).errors == 1
        finally:
            await client.close()


async def test_a_store_nobody_serves_keeps_the_estimate() -> None:
    plan, _ = await _agent_plan()
    client = HTTPKVStore(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    try:
        probe = HitProbe(client, 1.0)
        # It answers "missing" (the store contract), but says it is down: not believed.
        assert await probe.confirmed_hit(plan) == plan.hit_tokens
        assert await probe.confirmed_hit(plan) == plan.hit_tokens
        c = probe.counters
        assert (c.probes, c.failures, c.lowered, c.confirmed) == (2, 2, 0, 0)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[str]:
    """A real TCP server that accepts connections and reads requests but never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read(1 << 16)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_hung_store_costs_one_timeout_and_keeps_the_estimate() -> None:
    plan, _ = await _agent_plan()
    async with _silent_server() as url:
        client = HTTPKVStore(url, timeout_s=5.0)  # its own bound is far longer than the probe's
        try:
            probe = HitProbe(client, TIMEOUT_S)
            started = time.monotonic()
            assert await probe.confirmed_hit(plan) == plan.hit_tokens
            assert time.monotonic() - started < 1.0
            assert (probe.counters.failures, probe.counters.lowered) == (1, 0)
        finally:
            await client.close()


async def test_the_scheduler_request_takes_the_confirmed_hit() -> None:
    plan, _ = await _agent_plan(3)
    parsed = ParsedRequest("/v1/chat/completions", {}, "m", False, False, 1)
    config = SchedulerConfig()
    estimated = sched_request(parsed, plan, {}, 100, config, 0.0)
    assert (estimated.hit_tokens, estimated.append_tokens) == (plan.hit_tokens, plan.append_tokens)
    lowered = sched_request(parsed, plan, {}, 100, config, 0.0, hit_tokens=BLOCK)
    assert lowered.hit_tokens == BLOCK
    assert lowered.append_tokens == plan.prompt_tokens - BLOCK


def test_settings_name_the_store_to_probe() -> None:
    assert load_settings(env={}).kv.store_url == ""
    env = {"DUALPATH_KV_STORE_URL": "http://127.0.0.1:7070", "DUALPATH_KV_PROBE_TIMEOUT_S": "0.2"}
    kv = load_settings(env=env).kv
    assert (kv.store_url, kv.probe_timeout_s) == ("http://127.0.0.1:7070", 0.2)
    flag = load_settings(env=env, kv_store="mooncake://10.0.0.1:50051").kv
    assert flag.store_url == "mooncake://10.0.0.1:50051"
    assert load_settings(env={}, kv_store="memory").kv.store_url == "memory"
    with pytest.raises(ConfigError):
        load_settings(env={}, kv_store="redis://127.0.0.1:6379")
    with pytest.raises(ConfigError):
        load_settings(env={"DUALPATH_KV_PROBE_TIMEOUT_S": "0"})


@pytest.mark.parametrize("kv_store", [None, "memory"])
def test_debug_decisions_show_the_probe_counters(kv_store: str | None) -> None:
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    app = create_app(load_settings(env={}, kv_store=kv_store))
    with TestClient(app) as client:
        probe = client.get("/debug/decisions").json()["hit_probe"]
    if kv_store is None:
        assert probe is None
    else:
        assert probe == dict.fromkeys(
            ("probes", "confirmed", "lowered", "tokens_lowered", "failures"), 0
        )


@pytest.mark.parametrize(
    ("kv", "probed"), [("http://127.0.0.1:7070", "http://127.0.0.1:7070"), ("none", None)]
)
def test_up_gives_the_gateway_the_workers_store(
    kv: str, probed: str | None, tmp_path: Path
) -> None:
    from gateway.launcher import Cluster, ClusterPlan

    cluster = Cluster(ClusterPlan(kv=kv), workdir=tmp_path)
    cluster.build()
    (gateway,) = [c for c in cluster.children if c.name == "gateway"]
    workers = [c for c in cluster.children if c.name.startswith(("prefill", "decode"))]
    for child in [gateway, *workers]:
        args = child.cmd
        assert (args[args.index("--kv-store") + 1] if "--kv-store" in args else None) == probed
