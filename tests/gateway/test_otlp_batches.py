"""Encoded spans batched under the `OTEL_BSP_*` bounds (`gateway/otlp_batches.py`), sent to a
recording sender."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from gateway.otlp_batches import BatchExporter, BatchLimits


class Recording:
    """A sender that keeps what it was given; `hold` blocks sends until set."""

    def __init__(self, accept: bool = True) -> None:
        self.batches: list[list[bytes]] = []
        self.accept = accept
        self.hold = threading.Event()
        self.hold.set()
        self.stopped = False
        self.sent = threading.Condition()

    def send(self, request: bytes, spans: int) -> bool:
        self.hold.wait(10)
        batch = request.split(b",") if request else []
        assert len(batch) == spans
        with self.sent:
            self.batches.append(batch)
            self.sent.notify_all()
        return self.accept

    def shutdown(self) -> None:
        self.stopped = True
        self.hold.set()

    def wait(self, batches: int, timeout: float = 5) -> None:
        with self.sent:
            assert self.sent.wait_for(lambda: len(self.batches) >= batches, timeout)


def request(spans: Sequence[bytes]) -> bytes:
    return b",".join(spans)


def spans(n: int, start: int = 0) -> list[bytes]:
    return [str(i).encode() for i in range(start, start + n)]


def test_full_batches_go_at_once_and_in_order() -> None:
    sender = Recording()
    limits = BatchLimits(schedule_delay_s=60, max_batch=4, max_queue=100)
    batches = BatchExporter(sender, request, limits)
    batches.add(spans(9))
    sender.wait(2)
    assert sender.batches == [spans(4), spans(4, 4)]  # the 9th waits for the delay
    batches.close()
    assert sender.batches[-1] == [b"8"] and sender.stopped
    assert batches.sent == 9 and batches.dropped == 0


def test_a_partial_batch_goes_after_the_delay() -> None:
    sender = Recording()
    batches = BatchExporter(sender, request, BatchLimits(schedule_delay_s=0.05, max_batch=100))
    started = time.monotonic()
    batches.add(spans(3))
    sender.wait(1)
    assert sender.batches == [spans(3)] and time.monotonic() - started < 2
    batches.close()


def test_a_full_queue_drops_its_oldest_and_counts_them() -> None:
    sender = Recording()
    sender.hold.clear()  # the receiver is stuck: nothing leaves the queue
    limits = BatchLimits(schedule_delay_s=60, max_batch=2, max_queue=5, export_timeout_s=5)
    batches = BatchExporter(sender, request, limits)
    batches.add(spans(2))
    time.sleep(0.2)  # the thread took those two and waits on the sender
    batches.add(spans(8, 2))
    assert batches.dropped == 3
    sender.hold.set()
    batches.close()
    sent = [s for batch in sender.batches for s in batch]
    assert sent == spans(2) + spans(5, 5)  # 2, 3, 4 dropped: the oldest waiting


def test_close_is_bounded_by_the_export_timeout() -> None:
    sender = Recording()
    sender.hold.clear()
    limits = BatchLimits(schedule_delay_s=60, max_batch=1, max_queue=10, export_timeout_s=0.3)
    batches = BatchExporter(sender, request, limits)
    batches.add(spans(5))
    started = time.monotonic()
    batches.close()  # shuts the sender down, which lets its one send finish
    assert time.monotonic() - started < 2 and sender.stopped
    assert len(sender.batches) <= 2  # no more batches once stopped


def test_refused_and_failing_sends_are_counted_and_later_batches_still_go() -> None:
    class Failing(Recording):
        def send(self, request: bytes, spans: int) -> bool:
            if not self.batches:
                self.batches.append([])
                raise RuntimeError("a sender's bug")
            return super().send(request, spans)

    sender = Failing(accept=False)
    batches = BatchExporter(sender, request, BatchLimits(schedule_delay_s=60, max_batch=2))
    batches.add(spans(4))
    sender.wait(2)
    batches.close()
    assert batches.failed == 4 and batches.sent == 0


@pytest.mark.parametrize(
    ("env", "limits"),
    [
        ({}, BatchLimits()),
        (
            {
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
                "OTEL_BSP_MAX_QUEUE_SIZE": "128",
                "OTEL_BSP_EXPORT_TIMEOUT": "2500",
            },
            BatchLimits(0.05, 64, 128, 2.5),
        ),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon", "OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, BatchLimits()),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, BatchLimits(max_batch=2048)),
    ],
)
def test_limits_from_the_environment(env: dict[str, str], limits: BatchLimits) -> None:
    assert BatchLimits.from_env(env) == limits
