"""PD dispatch against recording workers, side by side with the real `sglang-router`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.pd_dispatch import encode_body
from tests.support.procs import dualpath, free_port, running, wait_http_ok
from tests.support.tiny_tokenizer import write_tiny_tokenizer

pytestmark = pytest.mark.slow

BODY = {"model": "rec-model", "messages": [{"role": "user", "content": "hello world"}]}
PD_FIELDS = ("bootstrap_host", "bootstrap_port", "bootstrap_room")


class Workers:
    def __init__(self, prefill: str, decode: str, bootstrap_port: int) -> None:
        self.prefill, self.decode, self.bootstrap_port = prefill, decode, bootstrap_port

    def reset(self) -> None:
        for url in (self.prefill, self.decode):
            httpx.post(url + "/_reset").raise_for_status()

    def recorded(self, url: str) -> list[dict[str, Any]]:
        return list(httpx.get(url + "/_recorded").json())


def _recording(
    role: str, port: int, boot: int, interval_ms: float = 20, tokens: int = 50, fail: int = 0
) -> list[str]:
    return [
        sys.executable, "-m", "tests.support.recording_worker", "--role", role, "--port", str(port),
        "--bootstrap-port", str(boot), "--interval-ms", str(interval_ms), "--tokens", str(tokens),
        "--fail-status", str(fail),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    p, d, boot = free_port(), free_port(), free_port()
    with (
        running(_recording("prefill", p, boot), f"http://127.0.0.1:{p}/health"),
        running(_recording("decode", d, boot), f"http://127.0.0.1:{d}/health"),
    ):
        yield Workers(f"http://127.0.0.1:{p}", f"http://127.0.0.1:{d}", boot)


def _cluster_file(tmp: Path, workers: Workers) -> Path:
    spec = {
        "workers": [
            {"url": workers.prefill, "role": "prefill", "bootstrap_port": workers.bootstrap_port},
            {"url": workers.decode, "role": "decode"},
        ]
    }
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def gateway(workers: Workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    config = _cluster_file(tmp_path_factory.mktemp("gw"), workers)
    cmd = dualpath("serve", "--config", str(config), "--port", str(port))
    with running(cmd, f"http://127.0.0.1:{port}/ready"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def router(workers: Workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:

    port = free_port()
    tokenizer = write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    cmd = [
        sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation",
        "--prefill", workers.prefill, str(workers.bootstrap_port), "--decode", workers.decode,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warn",
        "--prometheus-port", str(free_port()), "--tokenizer-path", str(tokenizer),
    ]  # fmt: skip
    with running(cmd, f"http://127.0.0.1:{port}/health", timeout=60):
        wait_http_ok(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        yield f"http://127.0.0.1:{port}"


def _sent(workers: Workers, url: str, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send one chat request through `url`; return what the prefill and decode received."""
    workers.reset()
    with httpx.Client(timeout=30) as client:
        if extra.get("stream"):
            with client.stream("POST", url + "/v1/chat/completions", json={**BODY, **extra}) as r:
                assert r.status_code == 200
                assert r.read().rstrip().endswith(b"data: [DONE]")
        else:
            r = client.post(url + "/v1/chat/completions", json={**BODY, **extra})
            assert r.status_code == 200, r.text
    (prefill,) = workers.recorded(workers.prefill)
    (decode,) = workers.recorded(workers.decode)
    return prefill["body"], decode["body"]


@pytest.mark.parametrize("stream", [False, True])
def test_pd_fields_match_sglang_router(
    workers: Workers, gateway: str, router: str, stream: bool
) -> None:
    ours_p, ours_d = _sent(workers, gateway, stream=stream)
    theirs_p, theirs_d = _sent(workers, router, stream=stream)
    # Each sends the same body to both legs.
    assert ours_p == ours_d and theirs_p == theirs_d
    for field in ("bootstrap_host", "bootstrap_port"):
        assert ours_p[field] == theirs_p[field], field
    for body in (ours_p, theirs_p):
        assert isinstance(body["bootstrap_room"], int) and 0 <= body["bootstrap_room"] < 2**63
    assert {k for k in theirs_p if k.startswith("bootstrap")} == set(PD_FIELDS)
    assert {k for k in ours_p if k.startswith("bootstrap")} == set(PD_FIELDS)
    # Our additions beyond the client's body are the PD fields, the rid used to abort, and usage.
    assert set(ours_p) - {*BODY, "stream"} - set(PD_FIELDS) <= {"rid", "stream_options"}


def test_rooms_are_fresh_per_request(workers: Workers, gateway: str) -> None:
    rooms = {_sent(workers, gateway)[0]["bootstrap_room"] for _ in range(5)}
    assert len(rooms) == 5


def test_batch_gets_one_room_per_item(workers: Workers, gateway: str) -> None:
    prefill, _ = _sent(workers, gateway, n=3)
    assert prefill["bootstrap_host"] == ["127.0.0.1"] * 3
    assert prefill["bootstrap_port"] == [workers.bootstrap_port] * 3
    first = prefill["bootstrap_room"][0]
    assert prefill["bootstrap_room"] == [first, first + 1, first + 2]


def test_client_disconnect_aborts_both_legs_within_1s(workers: Workers, gateway: str) -> None:
    workers.reset()
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gateway + "/v1/chat/completions", json={**BODY, "stream": True}) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        rid = workers.recorded(workers.decode)[0]["body"]["rid"]
    hung_up = time.monotonic()
    aborted: set[str] = set()
    while time.monotonic() - hung_up < 1.0 and len(aborted) < 2:
        for name, url in (("prefill", workers.prefill), ("decode", workers.decode)):
            if any(
                e["path"] == "/abort_request" and e["body"].get("rid") == rid
                for e in workers.recorded(url)
            ):
                aborted.add(name)
    assert aborted == {"prefill", "decode"}, f"aborted within 1 s: {aborted}"


def test_no_healthy_worker_is_503_with_retry_after(tmp_path: Path, workers: Workers) -> None:
    p, boot, port = free_port(), free_port(), free_port()
    with running(_recording("prefill", p, boot), f"http://127.0.0.1:{p}/health") as prefill:
        config = _cluster_file(tmp_path, Workers(f"http://127.0.0.1:{p}", workers.decode, boot))
        cmd = dualpath("serve", "--config", str(config), "--port", str(port))
        fast_health = {"DUALPATH_HEALTH_INTERVAL_S": "0.1"}
        with running(cmd, f"http://127.0.0.1:{port}/ready", env=fast_health):
            prefill.terminate()
            prefill.wait()
            deadline = time.monotonic() + 10
            while httpx.get(f"http://127.0.0.1:{port}/ready").status_code != 503:
                assert time.monotonic() < deadline, "gateway never noticed the dead prefill"
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY)
    assert r.status_code == 503
    assert r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "no_healthy_worker"


@pytest.mark.parametrize("stream", [False, True])
def test_failing_prefill_fails_the_request_fast(
    tmp_path: Path, workers: Workers, stream: bool
) -> None:
    p, boot, port = free_port(), free_port(), free_port()
    with running(_recording("prefill", p, boot, fail=500), f"http://127.0.0.1:{p}/health"):
        config = _cluster_file(tmp_path, Workers(f"http://127.0.0.1:{p}", workers.decode, boot))
        cmd = dualpath("serve", "--config", str(config), "--port", str(port))
        with running(cmd, f"http://127.0.0.1:{port}/ready"):
            workers.reset()
            started = time.monotonic()
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={**BODY, "stream": stream},
                timeout=10,
            )
            elapsed = time.monotonic() - started
    assert elapsed < 5  # not the decode's waiting timeout
    if r.status_code == 200:  # the decode had already started streaming: in-band error
        assert stream
        events = [e for e in r.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]" and '"error"' in events[-2]
    else:
        assert r.status_code == 502 and "injected failure" in r.json()["error"]["message"]
    rid = workers.recorded(workers.decode)[0]["body"]["rid"]
    deadline = time.monotonic() + 2
    while not any(e["path"] == "/abort_request" for e in workers.recorded(workers.decode)):
        assert time.monotonic() < deadline, f"decode leg of {rid} was not aborted"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "hé"}], "stream": True},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "prompt": "no messages here"},
    ],
)
def test_spliced_messages_encode_like_the_whole_body(body: dict[str, object]) -> None:
    messages = orjson.dumps(body["messages"]) if "messages" in body else None
    assert orjson.loads(encode_body(body, messages)) == body
