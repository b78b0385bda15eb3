"""The simulated worker in process (role null, no sleeping) through httpx's ASGI transport."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from engines.sim_worker import SimWorkerConfig, create_app
from tests.engines.test_sim_units import WEATHER


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    config = SimWorkerConfig(role="null", time_scale=0.0, page_size=16, served_model_name="tiny")
    app = create_app(config)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://w") as c,
    ):
        yield c


def _events(text: str) -> list[dict]:
    parts = [p for p in text.split("\n\n") if p]
    assert parts[-1] == "data: [DONE]"
    return [orjson.loads(p.removeprefix("data: ")) for p in parts[:-1]]


LONG = "the agent reads the file and then plans the next step of the work " * 8


async def test_generate_non_stream_and_cumulative_stream(client: httpx.AsyncClient) -> None:
    body = {"text": LONG, "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}}
    r = await client.post("/generate", json=body)
    out = r.json()
    assert r.status_code == 200 and len(out["output_ids"]) == 5
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert out["meta_info"]["cached_tokens"] == 0 and "e2e_latency" in out["meta_info"]
    r = await client.post("/generate", json={**body, "stream": True})
    chunks = _events(r.text)
    assert len(chunks) == 5
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # cumulative
    assert chunks[-1]["text"] == out["text"]  # same prompt, same seed, same answer
    assert chunks[-1]["meta_info"]["cached_tokens"] > 0  # the first call filled the cache
    assert chunks[0]["meta_info"]["finish_reason"] is None


async def test_generate_batch_and_stop_string(client: httpx.AsyncClient) -> None:
    r = await client.post("/generate", json={"text": ["a b c", "d e f"]})
    assert [len(o["output_ids"]) > 0 for o in r.json()] == [True, True]
    first = (await client.post("/generate", json={"text": "x y"})).json()
    stop = first["text"].split()[1]
    again = await client.post("/generate", json={"text": "x y", "sampling_params": {"stop": stop}})
    meta = again.json()["meta_info"]
    assert meta["finish_reason"] == {"type": "stop", "matched": stop}
    assert stop not in again.json()["text"]


async def test_chat_stream_shape_and_usage(client: httpx.AsyncClient) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": LONG}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "rid": "req-1",
    }
    await client.post("/v1/chat/completions", json={**body, "stream": False})
    chunks = _events((await client.post("/v1/chat/completions", json=body)).text)
    assert all(c["id"] == "req-1" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"][0]["delta"] == {}
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == len(chunks) - 3
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0
    no_usage = _events(
        (await client.post("/v1/chat/completions", json={**body, "stream_options": None})).text
    )
    assert no_usage[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tool_call_then_text_after_the_tool_result(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "weather in Paris?"}]
    body = {"model": "m", "messages": messages, "tools": [WEATHER]}
    out = (await client.post("/v1/chat/completions", json=body)).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    assert "city" in orjson.loads(call["function"]["arguments"])
    chunks = _events(
        (await client.post("/v1/chat/completions", json={**body, "stream": True})).text
    )
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    args = "".join(d[0]["function"].get("arguments", "") for d in deltas if d)
    assert args == call["function"]["arguments"]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]
    final = (await client.post("/v1/chat/completions", json={**body, "messages": messages})).json()
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("path", "content", "headers"),
    [
        ("/v1/chat/completions", b'{"model": "m"}', {"content-type": "application/json"}),
        ("/v1/chat/completions", b'{"messages": []}', {"content-type": "text/plain"}),
        ("/v1/completions", b"not json", {"content-type": "application/json"}),
        ("/generate", b'{"sampling_params": {}}', {}),
        ("/generate", b'{"text": "x", "sampling_params": {"max_new_tokens": 40000}}', {}),
    ],
)  # fmt: skip
async def test_bad_requests_get_sglang_400(
    client: httpx.AsyncClient, path: str, content: bytes, headers: dict[str, str]
) -> None:
    r = await client.post(path, content=content, headers=headers)
    assert r.status_code == 400
    body = r.json()
    assert body["object"] == "error" and body["code"] == 400 and body["message"]
    assert body["type"] == "BadRequestError" and body["param"] is None


async def test_pd_role_without_bootstrap_fields_is_rejected() -> None:
    app = create_app(SimWorkerConfig(role="decode", time_scale=0.0))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://w") as c,
    ):
        r = await c.post("/generate", json={"text": "hi"})
        assert r.status_code == 400 and "bootstrap" in r.json()["message"]
        fake = {"text": "hi", "bootstrap_host": "2.2.2.2", "bootstrap_room": 0}
        r = await c.post("/generate", json={**fake, "sampling_params": {"max_new_tokens": 3}})
        assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 3
        assert (await c.get("/health_generate")).status_code == 200


async def test_info_load_and_metrics_surfaces(client: httpx.AsyncClient) -> None:
    await client.post("/generate", json={"text": LONG})
    await client.post("/generate", json={"text": LONG})
    info = (await client.get("/server_info")).json()
    assert info == (await client.get("/get_server_info")).json() | {
        "internal_states": info["internal_states"]
    }
    assert info["disaggregation_mode"] == "null" and info["dualpath_sim"] is True
    assert info["page_size"] == 16 and info["dp_size"] == 1 and info["version"]
    assert (await client.get("/model_info")).json()["is_generation"] is True
    assert (await client.get("/v1/models")).json()["data"][0]["id"] == "tiny"
    load = (await client.get("/get_load")).json()
    assert load[0]["num_reqs"] == 0 and load[0]["dp_rank"] == 0
    rich = (await client.get("/v1/loads")).json()["loads"][0]
    assert rich["num_running_reqs"] == 0 and rich["disaggregation"]["mode"] == "null"
    assert 0 < rich["cache_hit_rate"] < 1
    text = (await client.get("/metrics")).text
    for name in ("num_running_reqs", "token_usage", "cache_hit_rate", "cached_tokens_total",
                 "num_aborted_requests_total", "time_to_first_token_seconds_bucket",
                 "num_decode_transfer_queue_reqs"):  # fmt: skip
        assert f"sglang:{name}" in text
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/flush_cache")).status_code == 200
    assert (await client.post("/abort_request", json={"rid": "nope"})).status_code == 200
