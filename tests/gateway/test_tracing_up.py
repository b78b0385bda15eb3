"""Traces through `dualpath up`: the gateway's and the simulated workers' spans reach a real
OTLP/HTTP receiver as one tree per request, with the GenAI and `dualpath.*` attributes.

The receiver runs in this process on a free loopback port; every child of `dualpath up` gets the
standard `OTEL_*` variables (batch delay 50 ms), and the test waits for spans with a deadline.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.procs import dualpath, free_port, running

pytestmark = pytest.mark.slow

SERVER, CLIENT = 2, 3
SECRET = "zebra-quartz-7781"  # prompt text that must never appear in a span (content off)
GATEWAY_STAGES = {"session.identify", "kv.lookup", "schedule"}
PREFILL_STAGES = {"kv.read", "prefill.compute", "kv.persist"}
DECODE_STAGES = {"pd.wait", "kv.transfer", "decode"}


class Cluster:
    def __init__(self, base: str, receiver: OtlpReceiver) -> None:
        self.base, self.receiver = base, receiver
        self.answers: dict[str, dict[str, Any]] = {}
        """trace id → what the client saw."""

    def chat(self, turn: int, stream: bool, messages: list[dict[str, str]]) -> str:
        """One turn with its own client `traceparent`; the trace id."""
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        body: dict[str, Any] = {"model": "tiny", "messages": messages, "max_tokens": 6}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        headers = {
            "traceparent": f"00-{trace_id}-{parent}-01",
            "x-session-id": "agent-a",
            "x-request-id": f"agent-a:{turn}",
        }
        r = httpx.post(self.base + "/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        usage = None
        if stream:
            for line in r.text.splitlines():
                if line.startswith("data: {") and '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage") or usage
        else:
            usage = r.json()["usage"]
        self.answers[trace_id] = {"parent": parent, "usage": usage, "stream": stream}
        return trace_id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with OtlpReceiver() as receiver:
        port = free_port()
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
        }
        cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1",
                       "--time-scale", "0.01")  # fmt: skip
        log = tmp_path_factory.mktemp("up") / "up.log"
        with running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90, env=env, log=log):
            c = Cluster(f"http://127.0.0.1:{port}", receiver)
            messages = [{"role": "user", "content": f"{SECRET} " + "read the file " * 60}]
            c.chat(0, True, messages)
            messages += [
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": "and now the tests " * 30},
            ]
            c.chat(1, False, messages)
            missing = httpx.post(
                c.base + "/v1/chat/completions",
                json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-request-id": "agent-b:0"},
                timeout=30,
            )
            assert missing.status_code == 404
            # The workers' spans end with their requests; wait for every expected one.
            receiver.wait_for(lambda spans: _complete(spans, set(c.answers)), timeout=30)
            yield c


def _complete(spans: list[ReceivedSpan], traces: set[str]) -> bool:
    names: dict[str, set[str]] = {t: set() for t in traces}
    for s in spans:
        if s.trace_id in names:
            names[s.trace_id].add(s.name)
    wanted = GATEWAY_STAGES | PREFILL_STAGES | DECODE_STAGES | {"prefill", "decode"}
    requests = [s for s in spans if s.name == "chat.completions"]
    return len(requests) >= 3 and all(wanted <= n for n in names.values())


def _trace(cluster: Cluster, trace_id: str) -> list[ReceivedSpan]:
    return [s for s in cluster.receiver.spans() if s.trace_id == trace_id]


def _one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.name, s.service) for s in spans])
    return found[0]


def test_each_request_is_one_tree_across_gateway_and_workers(cluster: Cluster) -> None:
    for trace_id, seen in cluster.answers.items():
        spans = _trace(cluster, trace_id)
        root = _one(spans, name="chat.completions")
        assert root.service == "dualpath-gateway" and root.kind == SERVER
        assert root.parent_id == seen["parent"]  # the client's traceparent was honoured
        children = {s.name: s for s in spans if s.parent_id == root.span_id}
        assert set(children) == GATEWAY_STAGES | {"prefill", "decode"}
        for leg in ("prefill", "decode"):
            assert children[leg].kind == CLIENT
            # The worker continued the trace from the leg's traceparent.
            worker = _one(spans, name=f"sim_worker.{leg}")
            assert worker.parent_id == children[leg].span_id and worker.kind == SERVER
            assert worker.service == "dualpath-sim-worker"
            assert worker.resource["dualpath.role"] == leg
            stages = {s.name for s in spans if s.parent_id == worker.span_id}
            assert stages == (PREFILL_STAGES if leg == "prefill" else DECODE_STAGES)
        for s in spans:
            assert root.start_ns <= s.start_ns and s.end_ns >= s.start_ns
            assert s.status_code != 2, (s.name, s.attributes)


def test_metrics_count_the_spans_shipped(cluster: Cluster) -> None:
    text = httpx.get(cluster.base + "/metrics", timeout=10).text
    samples = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dualpath_trace_spans_total"
    }
    # Three requests' gateway spans (six, five and one) went out; none was dropped.
    assert samples["shipped"] >= 12 and samples["dropped"] == 0


def test_request_span_attributes(cluster: Cluster) -> None:
    ready = httpx.get(cluster.base + "/ready", timeout=10).json()["workers"]
    urls = {w["role"]: w["url"] for w in ready}
    for trace_id, seen in cluster.answers.items():
        spans = _trace(cluster, trace_id)
        a = _one(spans, name="chat.completions").attributes
        usage = seen["usage"]
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.system"] == "sglang"
        assert a["gen_ai.request.model"] == "tiny" and a["gen_ai.request.max_tokens"] == 6
        assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert a["gen_ai.usage.cache_read.input_tokens"] == cached
        assert a["gen_ai.response.finish_reasons"] in (("stop",), ("length",))
        assert a["dualpath.session.id"] == a["gen_ai.conversation.id"] == "agent-a"
        assert a["dualpath.prefill_engine"] == urls["prefill"]
        assert a["dualpath.decode_engine"] == urls["decode"]
        assert a["dualpath.read_path"] in ("pe", "de", "split")
        assert 0.0 <= a["dualpath.pe_share"] <= 1.0
        assert a["dualpath.predicted_ttft_s"] > 0 and a["dualpath.predicted_tpot_s"] > 0
        assert a["dualpath.queue_wait_s"] >= 0
        assert a["dualpath.hit_tokens"] + a["dualpath.append_tokens"] == usage["prompt_tokens"]
        assert a["http.response.status_code"] == 200
        assert ("dualpath.ttft_s" in a) is seen["stream"]
        if seen["stream"]:
            assert a["dualpath.ttft_s"] > 0 and a["dualpath.tpot_s"] > 0
        schedule = _one(spans, name="schedule").attributes
        assert schedule["dualpath.policy"] == "dualpath-slo"
        assert schedule["dualpath.schedule.reason"]
        worker = _one(spans, name="sim_worker.prefill").attributes
        assert worker["dualpath.cached_tokens"] == cached


def test_second_turn_hits_and_says_so(cluster: Cluster) -> None:
    first, second = (
        _one(_trace(cluster, t), name="chat.completions").attributes for t in cluster.answers
    )
    assert first["dualpath.hit_tokens"] == 0
    assert second["dualpath.hit_tokens"] > 0
    lookup = _one(_trace(cluster, list(cluster.answers)[1]), name="kv.lookup").attributes
    assert lookup["dualpath.hit_tokens"] == second["dualpath.hit_tokens"]


def test_a_failed_request_is_an_error_span(cluster: Cluster) -> None:
    (failed,) = [
        s
        for s in cluster.receiver.spans()
        if s.name == "chat.completions" and s.attributes.get("dualpath.request_id") == "agent-b:0"
    ]
    assert failed.status_code == 2
    assert failed.attributes["error.type"] == "model_not_found"
    assert failed.attributes["http.response.status_code"] == 404


def test_no_prompt_text_in_any_span(cluster: Cluster) -> None:
    for s in cluster.receiver.spans():
        text = json.dumps([s.name, s.attributes, s.events], default=str)
        assert SECRET not in text and "read the file" not in text, s.name
        assert not any(name.startswith("gen_ai.content") for name, _ in s.events)


def test_report_from_the_received_spans(cluster: Cluster, tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    spans_file.write_text("".join(json.dumps(o) + "\n" for o in cluster.receiver.otlp_json()))
    out = tmp_path / "report"
    done = subprocess.run(
        dualpath("report", "--spans", str(spans_file), "--out", str(out), "--json"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    body = json.loads(done.stdout)
    summary = body["summary"]
    assert summary["requests"] == 3 and summary["completed"] == 2 and summary["errors"] == 1
    streamed = [t for t, seen in cluster.answers.items() if seen["stream"]]
    root = _one(_trace(cluster, streamed[0]), name="chat.completions")
    assert summary["ttft_s"]["p50"] == pytest.approx(root.attributes["dualpath.ttft_s"])
    assert sum(summary["read_path_share"].values()) == pytest.approx(1.0)
    stages = {(st["service"], st["name"]): st for st in body["stages"]}
    for name in (*GATEWAY_STAGES, "prefill", "decode", "queue.wait", "gateway.before_dispatch"):
        assert stages[("dualpath-gateway", name)]["count"] >= 2, name
    assert stages[("dualpath-sim-worker", "prefill.compute")]["count"] >= 2
    assert (out / "index.html").is_file() and (out / "span_report.json").is_file()
    assert (out / "ttft_cdf.png").is_file() and (out / "read_paths.png").is_file()
