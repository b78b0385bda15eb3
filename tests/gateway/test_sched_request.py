"""Per-request targets and priority from headers; token counts for requests without a session."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.request_parsing import ParsedRequest
from gateway.sched_request import sched_request
from gateway.scheduler.config import SchedulerConfig

CONFIG = SchedulerConfig(ttft_s=4.0, tpot_s=0.05)


def _parsed(body: dict[str, object], batch: int = 1) -> ParsedRequest:
    return ParsedRequest("/v1/completions", body, "m", False, False, batch)


def test_defaults_come_from_the_config() -> None:
    r = sched_request(_parsed({"prompt": "x"}), None, {}, 400, CONFIG, 7.0)
    assert (r.ttft_target_s, r.tpot_target_s, r.priority, r.arrival) == (4.0, 0.05, 0, 7.0)
    assert (r.hit_tokens, r.append_tokens, r.output_tokens) == (0, 100, 256)


def test_headers_set_targets_and_priority() -> None:
    headers = {"x-slo-ttft-ms": "250", "x-slo-tpot-ms": "20.5", "x-priority": "high"}
    r = sched_request(_parsed({"max_tokens": 9}), None, headers, 4, CONFIG, 0.0)
    assert (r.ttft_target_s, r.tpot_target_s, r.priority) == (0.25, 0.0205, 1)
    assert r.output_tokens == 9
    assert sched_request(_parsed({}), None, {"x-priority": "-2"}, 4, CONFIG, 0.0).priority == -2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-slo-ttft-ms", "0"),
        ("x-slo-ttft-ms", "-5"),
        ("x-slo-ttft-ms", "nan"),
        ("x-slo-ttft-ms", "inf"),
        ("x-slo-tpot-ms", "soon"),
        ("x-slo-tpot-ms", "1e12"),
        ("x-priority", "urgent"),
        ("x-priority", "4"),
    ],
)
def test_bad_headers_are_a_400_naming_the_header(name: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        sched_request(_parsed({}), None, {name: value}, 4, CONFIG, 0.0)
    assert caught.value.status == 400 and caught.value.param == name


def test_a_batch_counts_every_item_output() -> None:
    r = sched_request(_parsed({"max_tokens": 10}, batch=3), None, {}, 40, CONFIG, 0.0)
    assert (r.append_tokens, r.output_tokens) == (10, 30)
