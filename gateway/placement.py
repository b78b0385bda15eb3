"""A placement: the prefill and the decode worker that serve one request (the scheduler's
choice, `gateway.scheduling`)."""

from __future__ import annotations

from dataclasses import dataclass

from engines.worker_registry import Worker


@dataclass(frozen=True, slots=True)
class PDPair:
    prefill: Worker
    decode: Worker
