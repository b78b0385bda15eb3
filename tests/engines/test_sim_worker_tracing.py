"""A simulated worker's own spans, with no gateway in front: it continues the `traceparent` it
is sent (as from `sglang-router` or any client), starts a trace when none comes, leaves its
health probe untraced, and marks a request its client abandoned."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.procs import free_port, running

pytestmark = pytest.mark.slow

SERVER = 2
STAGES = {"kv.read", "prefill.compute", "decode"}


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[str, OtlpReceiver]]:
    with OtlpReceiver() as receiver:
        port = free_port()
        cmd = [sys.executable, "-m", "engines.sim_worker", "--role", "null", "--port", str(port),
               "--time-scale", "0.01"]  # fmt: skip
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,  # alone it means `otlp`
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "worker-under-test",
        }
        url = f"http://127.0.0.1:{port}"
        with running(cmd, url + "/health", env=env):
            httpx.get(url + "/health_generate", timeout=30).raise_for_status()
            yield url, receiver


def _chat(url: str, headers: dict[str, str], rid: str | None = None) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}]}
    body |= {"max_tokens": 4, "rid": rid or secrets.token_hex(8)}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers)


def _roots(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == "sim_worker.null"]


def test_continues_the_callers_trace(worker: tuple[str, OtlpReceiver]) -> None:
    url, receiver = worker
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    assert _chat(url, {"traceparent": f"00-{trace_id}-{parent}-01"}).status_code == 200
    spans = receiver.wait_for(lambda got: {s.name for s in got if s.trace_id == trace_id} >= STAGES)
    mine = [s for s in spans if s.trace_id == trace_id]
    (root,) = _roots(mine)
    assert root.parent_id == parent and root.kind == SERVER
    assert root.service == "worker-under-test" and root.resource["dualpath.role"] == "null"
    assert {s.name for s in mine if s.parent_id == root.span_id} == STAGES
    a = root.attributes
    assert a["gen_ai.usage.output_tokens"] == 4 and a["gen_ai.response.finish_reasons"]
    assert a["gen_ai.usage.input_tokens"] == a["dualpath.prompt_tokens"] > 0
    assert "hello" not in str([s.attributes for s in mine])  # no prompt text, ever


def test_a_request_without_traceparent_starts_a_trace(worker: tuple[str, OtlpReceiver]) -> None:
    url, receiver = worker
    rid = secrets.token_hex(8)
    assert _chat(url, {}, rid).status_code == 200
    spans = receiver.wait_for(
        lambda got: any(s.attributes["dualpath.rid"] == rid for s in _roots(got))
    )
    (root,) = [s for s in _roots(spans) if s.attributes["dualpath.rid"] == rid]
    assert not root.parent_id
    # The health probe (`/health_generate`, run at start) made no span.
    assert all(not s.attributes["dualpath.rid"].startswith("HEALTH") for s in _roots(spans))


def test_an_abandoned_stream_is_an_error(worker: tuple[str, OtlpReceiver]) -> None:
    url, receiver = worker
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "a long one"}],
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
        next(r.iter_lines())  # the stream started; hang up
    spans = receiver.wait_for(lambda got: any(_roots([s for s in got if s.trace_id == trace_id])))
    (root,) = _roots([s for s in spans if s.trace_id == trace_id])
    assert root.status_code == 2 and root.attributes["error.type"] == "AbortedError"
