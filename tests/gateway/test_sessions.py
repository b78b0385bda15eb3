"""Agent sessions end to end: the OpenAI SDK, simulated PD workers, two gateways on one Redis."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.embedded_redis import RedisServer, redis_server
from tests.support.procs import dualpath, free_port, running

pytestmark = pytest.mark.slow

MODEL = "tiny"
BLOCK = 64
SYSTEM = "You are a coding agent. Read files, run tests, fix code. " * 12


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def gateways(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Gateways A and B share Redis; C keeps sessions in-process, bounded to 3."""
    tmp = tmp_path_factory.mktemp("sessions")
    prefill, boot, decode = free_port(), free_port(), free_port()
    common = ["--time-scale", "0", "--model", MODEL]
    workers = [
        dualpath(
            "worker",
            "--role",
            "prefill",
            "--port",
            str(prefill),
            "--bootstrap-port",
            str(boot),
            *common,
        ),
        dualpath("worker", "--role", "decode", "--port", str(decode), *common),
    ]
    config = tmp / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workers": [
                    {
                        "url": f"http://127.0.0.1:{prefill}",
                        "role": "prefill",
                        "bootstrap_port": boot,
                    },
                    {"url": f"http://127.0.0.1:{decode}", "role": "decode"},
                ]
            }
        )
    )
    ports = [free_port() for _ in range(3)]
    serve = [dualpath("serve", "--config", str(config), "--port", str(p)) for p in ports]
    serve[0] += ["--redis", redis.url]
    serve[1] += ["--redis", redis.url]
    with contextlib.ExitStack() as stack:
        for cmd, port in zip(workers, (prefill, decode), strict=True):
            stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/health", timeout=60))
        for i, (cmd, port) in enumerate(zip(serve, ports, strict=True)):
            env = {"DUALPATH_SESSIONS_MAX_SESSIONS": "3"} if i == 2 else None
            log = Path(tmp / f"gateway-{i}.log")
            stack.enter_context(
                running(cmd, f"http://127.0.0.1:{port}/ready", timeout=60, env=env, log=log)
            )
        yield [f"http://127.0.0.1:{p}" for p in ports]


def sdk(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)


def ask(
    client: openai.OpenAI, messages: list[dict[str, Any]], *, stream: bool, **kw: Any
) -> tuple[str, str, Any]:
    """One turn: (reply text, X-Session-ID, usage)."""
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=24, **kw
        )
        reply = raw.parse()
        return reply.choices[0].message.content or "", raw.headers["x-session-id"], reply.usage
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=messages,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    ) as raw:
        sid = raw.headers["x-session-id"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, sid, chunks[-1].usage


def session(base: str, sid: str, key: str = "none") -> httpx.Response:
    return httpx.get(f"{base}/v1/sessions/{sid}", headers={"authorization": f"Bearer {key}"})


def run_agent(
    bases: list[str], turns: int, key: str = "none", task: str = "session/tracker.py"
) -> tuple[set[str], list[int]]:
    """An agent loop with no session id, alternating gateways; returns ids and expected hits."""
    clients = [sdk(b, key) for b in bases]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Fix the failing test in {task}, please."},
    ]
    ids: set[str] = set()
    expected: list[int] = []
    previous_total = 0
    for i in range(turns):
        text, sid, usage = ask(clients[i % len(clients)], messages, stream=i % 2 == 1)
        ids.add(sid)
        expected.append(previous_total // BLOCK * BLOCK)
        previous_total = usage.prompt_tokens + usage.completion_tokens
        messages.append({"role": "assistant", "content": text})
        messages.append(
            {"role": "user", "content": f"Tool output {i}: 3 passed, 1 failed in run {i}."}
        )
    for c in clients:
        c.close()
    return ids, expected


def recorded_hits(base: str, sid: str, key: str = "none") -> list[int]:
    detail = session(base, sid, key)
    assert detail.status_code == 200, detail.text
    return [t["hit_tokens"] for t in detail.json()["recent_turns"]]


def test_an_unnamed_agent_alternating_between_two_gateways_is_one_session(
    gateways: list[str],
) -> None:
    a, b, _ = gateways
    ids, expected = run_agent([a, b], 20)
    assert len(ids) == 1
    sid = ids.pop()
    assert recorded_hits(a, sid) == expected
    assert recorded_hits(b, sid) == expected
    assert expected[-1] > expected[1] > 0
    body = session(b, sid).json()
    assert body["turns"] == 20 and body["object"] == "session"


def test_the_in_process_store_recognises_an_unnamed_agent_too(gateways: list[str]) -> None:
    c = gateways[2]
    ids, expected = run_agent([c], 6, task="in_process.py")
    assert len(ids) == 1
    assert recorded_hits(c, ids.pop())[1:] == expected[1:]


def test_named_sessions_are_echoed_and_found_by_agent_headers(gateways: list[str]) -> None:
    a, b, _ = gateways
    messages = [{"role": "user", "content": "hello there"}]
    with sdk(a) as client:
        _, sid, _ = ask(client, messages, stream=False, extra_headers={"X-Session-ID": "my-s-1"})
        assert sid == "my-s-1"
        _, sid, _ = ask(
            client, messages, stream=True, extra_headers={"x-claude-code-session-id": "cc-9"}
        )
        assert sid == "cc-9"
        _, sid, _ = ask(client, messages, stream=False, metadata={"session_id": "meta-3"})
        assert sid == "meta-3"
        _, sid, _ = ask(client, messages, stream=False, user="user-5")
        assert sid == "user-5"
        # Any printable Unicode may name a session in the body; the header carries it encoded.
        for stream in (False, True):
            _, sid, _ = ask(client, messages, stream=stream, user="用户 %7 ø")
            assert sid == "%E7%94%A8%E6%88%B7 %257 %C3%B8"
    assert session(b, "cc-9").json()["turns"] == 1


def test_two_api_keys_share_no_session_and_no_hits(gateways: list[str]) -> None:
    a, _, _ = gateways
    ids_one, _ = run_agent([a], 3, key="key-one")
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Fix the failing test in session/tracker.py, please."},
    ]
    with sdk(a, "key-two") as client:
        _, sid, _ = ask(client, messages, stream=False)
    assert sid not in ids_one
    assert recorded_hits(a, sid, "key-two") == [0]
    assert session(a, sid, "key-one").status_code == 404
    assert session(a, ids_one.pop(), "key-two").status_code == 404


def test_the_in_process_store_evicts_past_its_bound(gateways: list[str]) -> None:
    c = gateways[2]
    with sdk(c) as client:
        for i in range(5):
            ask(client, [{"role": "user", "content": "hi"}], stream=False, user=f"bounded-{i}")
    listed = httpx.get(
        f"{c}/v1/sessions", params={"limit": 100}, headers={"authorization": "Bearer none"}
    ).json()
    ids = {s["id"] for s in listed["data"]}
    assert len(ids) == 3 and {"bounded-3", "bounded-4"} <= ids
    assert session(c, "bounded-0").status_code == 404


def test_list_pages_and_delete(gateways: list[str]) -> None:
    a, b, _ = gateways
    headers = {"authorization": "Bearer lister"}
    with sdk(a, "lister") as client:
        for i in range(5):
            ask(client, [{"role": "user", "content": "hi"}], stream=False, user=f"paged-{i}")
    seen: set[str] = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = httpx.get(f"{a}/v1/sessions", params=params, headers=headers).json()
        assert len(page["data"]) <= 2
        seen |= {s["id"] for s in page["data"]}
        cursor = page["next"]
        if not page["has_more"]:
            break
    assert seen == {f"paged-{i}" for i in range(5)}
    gone = httpx.delete(f"{b}/v1/sessions/paged-0", headers=headers)
    assert gone.json() == {"id": "paged-0", "object": "session.deleted", "deleted": True}
    again = httpx.delete(f"{a}/v1/sessions/paged-0", headers=headers)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("headers", "body", "param"),
    [
        ({"X-Session-ID": "x" * 200}, {}, "X-Session-ID"),
        ({"session-id": "s" * 129}, {}, "session-id"),
        ({}, {"metadata": {"session_id": "bell\x07"}}, "metadata.session_id"),
        ({}, {"metadata": {"session_id": "big" * 400_000}}, "metadata.session_id"),
        ({}, {"metadata": {f"k{i}": "v" for i in range(20)}}, "metadata"),
        ({}, {"user": "u" * 200}, "user"),
    ],
)
def test_bad_session_ids_are_a_clear_400(
    gateways: list[str], headers: dict[str, str], body: dict[str, Any], param: str
) -> None:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    r = httpx.post(f"{gateways[0]}/v1/chat/completions", json=payload, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_bad_admin_queries_are_openai_shaped(gateways: list[str]) -> None:
    r = httpx.get(f"{gateways[0]}/v1/sessions", params={"limit": 0})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(f"{gateways[0]}/v1/sessions/nobody")
    assert r.status_code == 404 and r.json()["error"]["param"] == "session_id"


def test_redis_killed_and_restarted_mid_run_fails_no_request(
    gateways: list[str], redis: RedisServer
) -> None:
    a, b, _ = gateways
    ids, _ = run_agent([a, b], 3, task="before.py")
    redis.stop()
    try:
        down_ids, _ = run_agent([a, b], 4, task="during.py")  # every turn answered
    finally:
        redis.start()
    assert len(ids) == 1 and down_ids
    # The gateways find Redis again by themselves: a turn through A becomes visible through B.
    deadline = time.monotonic() + 20
    with sdk(a) as client:
        for probe in itertools.count():
            ask(client, [{"role": "user", "content": "probe"}], stream=False, user=f"probe-{probe}")
            if session(b, f"probe-{probe}").status_code == 200:
                break
            assert time.monotonic() < deadline, "the gateways did not go back to Redis"
    after_ids, expected = run_agent([a, b], 4, task="after.py")
    assert len(after_ids) == 1
    hits = recorded_hits(b, after_ids.pop())
    # A new conversation still hits the system prompt that earlier sessions share.
    assert hits[0] >= len(SYSTEM) // 8 // BLOCK * BLOCK > 0
    assert hits[1:] == expected[1:]
