"""Protocol fidelity: the real `sglang-router` in PD mode drives our simulated workers."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.procs import free_port, running, wait_http_ok
from tests.support.tiny_tokenizer import write_tiny_tokenizer

pytestmark = pytest.mark.slow

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 6}


def _worker(role: str, port: int, boot: int) -> list[str]:
    return [
        sys.executable, "-m", "engines.sim_worker", "--role", role, "--port", str(port),
        "--bootstrap-port", str(boot), "--time-scale", "0.05",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    p, d, boot, port = free_port(), free_port(), free_port(), free_port()
    tokenizer = write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    cmd = [
        sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation",
        "--prefill", f"http://127.0.0.1:{p}", str(boot), "--decode", f"http://127.0.0.1:{d}",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warn",
        "--prometheus-port", str(free_port()), "--tokenizer-path", str(tokenizer),
    ]  # fmt: skip
    with (
        running(_worker("prefill", p, boot), f"http://127.0.0.1:{p}/health"),
        running(_worker("decode", d, boot), f"http://127.0.0.1:{d}/health"),
        running(cmd, f"http://127.0.0.1:{port}/health", timeout=60),
    ):
        wait_http_ok(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        yield f"http://127.0.0.1:{port}"


def test_non_streaming_chat_through_the_router(router: str) -> None:
    r = httpx.post(router + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert 0 < body["usage"]["completion_tokens"] <= 6


def test_streaming_chat_through_the_router(router: str) -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", router + "/v1/chat/completions", json=payload, timeout=30) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_second_turn_through_the_router_reports_cached_tokens(router: str) -> None:
    long = {**CHAT, "messages": [{"role": "system", "content": "the agent reads blocks " * 80}]}
    first = httpx.post(router + "/v1/chat/completions", json=long, timeout=30).json()
    again = httpx.post(router + "/v1/chat/completions", json=long, timeout=30).json()
    assert first["usage"]["prompt_tokens"] == again["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64


def test_native_generate_through_the_router(router: str) -> None:
    payload = {"text": "hello world", "sampling_params": {"max_new_tokens": 4}}
    r = httpx.post(router + "/generate", json=payload, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] and out["meta_info"]["completion_tokens"] == 4
