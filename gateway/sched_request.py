"""A parsed request as the scheduler sees it: tokens, targets and priority.

Chat turns bring exact counts from the session step (hit and append tokens, the session's
recent output lengths); other requests are estimated from their body size. Clients may set
their own targets and priority with headers:

- `x-slo-ttft-ms`, `x-slo-tpot-ms`: positive numbers, at most an hour;
- `x-priority`: `low`, `normal`, `high` or an integer from -3 to 3 (higher runs earlier).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping

from gateway.errors import InvalidRequest
from gateway.request_parsing import ParsedRequest
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.request import RequestId, SchedRequest
from gateway.tenancy import tenant_of
from session.tracker import TurnPlan

TTFT_HEADER = "x-slo-ttft-ms"
TPOT_HEADER = "x-slo-tpot-ms"
PRIORITY_HEADER = "x-priority"
DEFAULT_OUTPUT_TOKENS = 256
"""Expected output when neither the session nor `max_tokens` says."""
BYTES_PER_TOKEN = 4
"""Estimate for prompts the session step did not tokenize (completions, batches)."""
_PRIORITIES = {"low": -1, "normal": 0, "high": 1}
_MAX_TARGET_MS = 3_600_000.0


def _target_s(headers: Mapping[str, str], name: str, default_s: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default_s
    try:
        ms = float(raw)
    except ValueError:
        ms = math.nan
    if not 0 < ms <= _MAX_TARGET_MS:  # NaN fails too
        raise InvalidRequest(
            f"header {name} must be milliseconds in (0, {_MAX_TARGET_MS:.0f}], not {raw!r}",
            param=name,
        )
    return ms / 1000.0


def _priority(headers: Mapping[str, str]) -> int:
    raw = headers.get(PRIORITY_HEADER)
    if raw is None:
        return 0
    value = _PRIORITIES.get(raw.strip().lower())
    if value is None:
        try:
            value = int(raw)
        except ValueError:
            value = 99
    if not -3 <= value <= 3:
        raise InvalidRequest(
            f"header {PRIORITY_HEADER} must be low, normal, high or an integer in [-3, 3]",
            param=PRIORITY_HEADER,
        )
    return value


def _max_output(req: ParsedRequest) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = req.body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def sched_request(
    req: ParsedRequest,
    plan: TurnPlan | None,
    headers: Mapping[str, str],
    body_bytes: int,
    config: SchedulerConfig,
    now: float,
    *,
    hit_tokens: int | None = None,
) -> SchedRequest:
    """`hit_tokens`, when given, replaces the plan's estimate (the part the KV store holds)."""
    if plan is not None:
        hit = plan.hit_tokens if hit_tokens is None else hit_tokens
        append = max(plan.prompt_tokens - hit, 1)
        expected = plan.expected_output_tokens or DEFAULT_OUTPUT_TOKENS
    else:
        hit, append = 0, max(body_bytes // BYTES_PER_TOKEN, 1)
        expected = DEFAULT_OUTPUT_TOKENS
    cap = _max_output(req)
    output = min(expected, cap) if cap is not None else expected
    n = req.batch_size
    per_item = n if plan is not None else 1  # the body estimate already covers every item
    return SchedRequest(
        rid=RequestId(uuid.uuid4().hex),
        hit_tokens=hit * per_item,
        append_tokens=append * per_item,
        output_tokens=output * n,
        arrival=now,
        ttft_target_s=_target_s(headers, TTFT_HEADER, config.ttft_s),
        tpot_target_s=_target_s(headers, TPOT_HEADER, config.tpot_s),
        priority=_priority(headers),
        session=plan.session_id if plan is not None else None,
        tenant=tenant_of(headers),
    )
