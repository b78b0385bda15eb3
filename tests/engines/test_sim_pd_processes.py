"""Real worker processes: a prefill and a decode rendezvous as a PD router makes them."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.engines.test_sim_units import WEATHER
from tests.support.procs import free_port, running

pytestmark = pytest.mark.slow

WAITING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Pair:
    prefill: str
    decode: str
    bootstrap_port: int


def _worker(role: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engines.sim_worker", "--role", role, "--port", str(port),
            "--page-size", "16", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    p, d, boot = free_port(), free_port(), free_port()
    common = ("--bootstrap-port", str(boot), "--time-scale", "0.05")
    with (
        running(_worker("prefill", p, *common), f"http://127.0.0.1:{p}/health"),
        running(
            _worker("decode", d, *common, "--waiting-timeout", str(WAITING_TIMEOUT_S)),
            f"http://127.0.0.1:{d}/health",
        ),
    ):
        yield Pair(f"http://127.0.0.1:{p}", f"http://127.0.0.1:{d}", boot)


def _with_room(pair: Pair, body: dict[str, Any]) -> dict[str, Any]:
    room = random.getrandbits(63)
    return {**body, "bootstrap_host": "127.0.0.1", "bootstrap_port": pair.bootstrap_port,
            "bootstrap_room": room}  # fmt: skip


async def _both(
    pair: Pair, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, httpx.Response]:
    """POST the same body to both workers concurrently, as the router does."""
    async with httpx.AsyncClient(timeout=30) as c:
        p, d = await asyncio.gather(c.post(pair.prefill + path, json=body),
                                    c.post(pair.decode + path, json=body))  # fmt: skip
    return p, d


def _events(text: str) -> list[dict[str, Any]]:
    parts = [p for p in text.split("\n\n") if p]
    assert parts[-1] == "data: [DONE]"
    return [orjson.loads(p.removeprefix("data: ")) for p in parts[:-1]]


SYSTEM = "You are an agent that reads files, runs tests and plans the next step. " * 6


async def test_pd_chat_stream_and_cached_tokens_on_the_second_turn(pair: Pair) -> None:
    body = {"model": "tiny", "messages": [{"role": "system", "content": SYSTEM},
                                           {"role": "user", "content": "hello"}],
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    p, d = await _both(pair, "/v1/chat/completions", _with_room(pair, body))
    assert p.status_code == d.status_code == 200
    prefill_chunks, decode_chunks = _events(p.text), _events(d.text)
    first_usage = decode_chunks[-1]["usage"]
    assert prefill_chunks[-1]["usage"]["completion_tokens"] == 1
    assert decode_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # The decode's first token is the one the prefill sampled.
    assert (
        decode_chunks[1]["choices"][0]["delta"]["content"]
        == (prefill_chunks[1]["choices"][0]["delta"]["content"])
    )
    assert first_usage["completion_tokens"] > 1

    body["messages"][1]["content"] = "hello again"
    p, d = await _both(pair, "/v1/chat/completions", _with_room(pair, body))
    usage = _events(d.text)[-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 64
    assert usage["prompt_tokens_details"] == _events(p.text)[-1]["usage"]["prompt_tokens_details"]


async def test_pd_generate_prefill_answers_length_zero(pair: Pair) -> None:
    body = _with_room(pair, {"text": SYSTEM, "sampling_params": {"max_new_tokens": 7,
                                                                 "ignore_eos": True}})  # fmt: skip
    p, d = await _both(pair, "/generate", body)
    assert p.json()["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    out = d.json()
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 7}
    assert out["output_ids"][0] == p.json()["output_ids"][0]
    assert out["meta_info"]["cached_tokens"] == p.json()["meta_info"]["cached_tokens"]


async def test_pd_tool_call(pair: Pair) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "weather?"}],
            "tools": [WEATHER]}  # fmt: skip
    _, d = await _both(pair, "/v1/chat/completions", _with_room(pair, body))
    choice = d.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    args = orjson.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])
    assert "city" in args


async def test_decode_times_out_without_its_prefill(pair: Pair) -> None:
    body = _with_room(pair, {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                             "stream": True})  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(pair.decode + "/v1/chat/completions", json=body)
    assert r.status_code == 500
    assert "timed out" in r.json()["message"] and str(body["bootstrap_room"]) in r.json()["message"]


async def test_server_info_fields(pair: Pair) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        p = (await c.get(pair.prefill + "/server_info")).json()
        d = (await c.get(pair.decode + "/get_server_info")).json()
        boot = await c.get(f"http://127.0.0.1:{pair.bootstrap_port}/health")
        layout = (await c.get(f"http://127.0.0.1:{pair.bootstrap_port}/route")).json()
    assert (p["disaggregation_mode"], d["disaggregation_mode"]) == ("prefill", "decode")
    assert p["disaggregation_bootstrap_port"] == pair.bootstrap_port
    assert p["disaggregation_transfer_backend"] == "mooncake" and p["dualpath_sim"] is True
    assert boot.text == "OK" and layout["page_size"] == 16


async def test_abort_request_ends_a_running_stream() -> None:
    port = free_port()
    with running(_worker("null", port, "--time-scale", "1"), f"http://127.0.0.1:{port}/health"):
        url = f"http://127.0.0.1:{port}"
        body = {"text": "go", "rid": "long-1", "stream": True,
                "sampling_params": {"max_new_tokens": 20000, "ignore_eos": True}}  # fmt: skip
        async with (
            httpx.AsyncClient(timeout=30) as c,
            c.stream("POST", url + "/generate", json=body) as r,
        ):
            lines = r.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    break
            await c.post(url + "/abort_request", json={"rid": "long-1", "abort_all": False})
            rest = [line async for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        last = orjson.loads(rest[-2].removeprefix("data: "))
        assert last["meta_info"]["finish_reason"]["type"] == "abort"
        assert last["meta_info"]["completion_tokens"] < 20000
        async with httpx.AsyncClient(timeout=10) as c:
            assert "long-1" in (await c.get(url + "/dualpath/aborted")).json()["aborted_rids"]
            metrics = (await c.get(url + "/metrics")).text
        assert (
            'sglang:num_aborted_requests_total{engine_type="unified",model_name="tiny"} 1.0'
            in metrics
        )


async def test_client_disconnect_aborts_the_request() -> None:
    port = free_port()
    with running(_worker("null", port, "--time-scale", "1"), f"http://127.0.0.1:{port}/health"):
        url = f"http://127.0.0.1:{port}"
        body = {"text": "go", "rid": "gone-1", "stream": True,
                "sampling_params": {"max_new_tokens": 20000, "ignore_eos": True}}  # fmt: skip
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("POST", url + "/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break  # leaving the block drops the connection mid-stream
            for _ in range(200):  # poll: the worker notices on its next write
                if "gone-1" in (await c.get(url + "/dualpath/aborted")).json()["aborted_rids"]:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the disconnected request was not aborted")
            load = (await c.get(url + "/get_load")).json()[0]
        assert load["num_reqs"] == 0
