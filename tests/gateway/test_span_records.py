"""The gateway's span records, their sampler and the channel to the span-export process."""

from __future__ import annotations

import os
import random
import signal

import orjson
import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from gateway.span_records import MAX_MESSAGE, Row, Sampler, SpanRecord, Tracer, parse_traceparent
from gateway.span_shipper import FLUSH_SPANS, MAX_BACKLOG, SpanShipper, _messages


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_ratio_sampling_agrees_with_the_sdk(rate: float) -> None:
    """A trace sampled here is sampled by any SDK that sees its id (the workers')."""
    ours, sdk, rng = Sampler("traceidratio", rate), TraceIdRatioBased(rate), random.Random(7)
    for _ in range(2000):
        trace_id = rng.getrandbits(128)
        expected = sdk.should_sample(None, trace_id, "x").decision.is_sampled()
        assert ours.sampled(trace_id, None) is expected


def test_parent_based_follows_the_parent() -> None:
    never = Sampler("parentbased_always_off")
    assert never.sampled(1, True) and not never.sampled(1, False) and not never.sampled(1, None)
    assert not Sampler("always_off").sampled(1, True)


def test_sampler_from_env() -> None:
    sampler = Sampler.from_env(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    )
    assert not sampler.sampled(0, None) and not sampler.sampled(5, True)
    with pytest.raises(ValueError, match="unknown sampler"):
        Sampler.from_env({"OTEL_TRACES_SAMPLER": "sometimes"})
    with pytest.raises(ValueError, match="not a number"):
        Sampler.from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"})


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            (0xAF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True),
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            (0xAF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False),
        ),
        (
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",
            (0xAF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True),
        ),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033zz-01", None),
        ("garbage", None),
    ],
)
def test_traceparent(header: str, parsed: tuple[int, int, bool] | None) -> None:
    assert parse_traceparent(header) == parsed


def test_a_root_continues_the_clients_trace_and_children_follow() -> None:
    shipped: list[Row] = []
    tracer = Tracer(Sampler(), shipped.append)
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    root = tracer.root("chat.completions", header, {"a": 1})
    child = tracer.child("schedule", root)
    assert (root.trace_id, root.parent_id, root.parent_remote) == (
        0xAF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
    )
    assert child.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert child.parent_id == root.span_id and not child.parent_remote
    tracer.end(child)
    tracer.end(root)
    assert [row[4] for row in shipped] == ["schedule", "chat.completions"]
    # An unsampled trace ships nothing and tells the workers so.
    dropped = tracer.root("chat.completions", header[:-2] + "00", {})
    tracer.end(tracer.child("schedule", dropped))
    tracer.end(dropped)
    assert len(shipped) == 2 and dropped.traceparent.endswith("-00")


def _row(i: int) -> Row:
    span = SpanRecord(f"span-{i}", 1, 0, 0, {"i": i})
    span.end_ns = span.start_ns + 1
    return span.row()


def test_a_batch_is_serialised_whole_or_split_to_fit() -> None:
    messages, lost = _messages([_row(i) for i in range(3)])
    ((message, spans),) = messages
    assert lost == 0
    assert spans == 3 and [row[4] for row in orjson.loads(message)] == [
        "span-0",
        "span-1",
        "span-2",
    ]
    # Rows that one message cannot hold go in several; one JSON cannot carry, or too big for
    # any message, is lost alone.
    big = [_row(i) for i in range(8)]
    for row in big:
        row[8]["text"] = "x" * (MAX_MESSAGE // 5)
    big[3][8]["bad"] = {1, 2}  # a set: not JSON
    big[5][8]["text"] = "x" * MAX_MESSAGE
    messages, lost = _messages(big)
    assert lost == 2 and all(len(m) <= MAX_MESSAGE for m, _ in messages) and len(messages) > 1
    names = [row[4] for m, _ in messages for row in orjson.loads(m)]
    assert names == [f"span-{i}" for i in (0, 1, 2, 4, 6, 7)]
    assert sum(spans for _, spans in messages) == 6


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")


def test_the_export_process_exports_what_is_shipped(
    console: None, capfd: pytest.CaptureFixture[str]
) -> None:
    shipper = SpanShipper()
    for i in range(3):
        shipper.ship(_row(i))
    shipper.close(30)  # flushes the batch, then the process flushes its exporters and exits
    out = capfd.readouterr().out
    assert all(f'"name": "span-{i}"' in out for i in range(3)), out[-2000:]
    assert (shipper.shipped, shipper.dropped, shipper.running) == (3, 0, False)


def test_a_stalled_export_process_costs_spans_not_memory(console: None) -> None:
    shipper = SpanShipper()
    os.kill(shipper.pid, signal.SIGSTOP)
    try:
        total = FLUSH_SPANS * (MAX_BACKLOG + 40)  # more than the socket and the backlog hold
        for i in range(total):
            shipper.ship(_row(i))
        assert shipper.dropped > 0
        assert shipper.backlog <= MAX_BACKLOG
        assert shipper.shipped + shipper.dropped + shipper.backlog * FLUSH_SPANS == total
    finally:
        os.kill(shipper.pid, signal.SIGCONT)
        shipper.close(30)
