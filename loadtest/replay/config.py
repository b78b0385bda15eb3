"""What one replay run does: a frozen config, checked when built, so a bad value fails before the
first request rather than in the middle of a run. (No httpx here: `dualpath --help` and the trace
tools import this module through the command's signature.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from loadtest.metrics import SLO
from loadtest.replay.errors import ReplayError


class Mode(StrEnum):
    OFFLINE = "offline"
    """Every agent starts at once; the figure of merit is the JCT."""
    ONLINE = "online"
    """Agents arrive as a Poisson process at `aps` (or at the trace's own `arrival_s`)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; every network wait of a run is bounded by one of these."""

    connect_s: float = 10.0
    """Opening a connection (and waiting for a pooled one)."""
    first_token_s: float = 300.0
    """From sending a request to its response's first body chunk (queueing and prefill)."""
    between_chunks_s: float = 60.0
    """The longest silence inside a stream."""
    control_s: float = 5.0
    """`GET /v1/models` and the server probes."""

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_token_s", "between_chunks_s", "control_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ReplayError(f"timeout {name} must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    url: str
    """The endpoint's base URL; requests go to `{url}/v1/chat/completions` (a trailing `/v1`
    is accepted too)."""
    mode: Mode = Mode.OFFLINE
    aps: float | None = None
    """Online: agents per second (Poisson); None: the trace's own `arrival_s`."""
    agents: int | None = None
    """How many agents to run (None: all in the trace; more reuse trajectories in turn)."""
    max_turns: int | None = None
    """Replay at most this many turns of each agent (None: all)."""
    slo: SLO = field(default_factory=SLO)
    model: str | None = None
    """None: the first of `GET /v1/models`."""
    max_concurrency: int = 512
    """Requests in flight at most (and the connection pool's size)."""
    seed: int = 0
    """Seeds the prompt text and the Poisson arrivals."""
    tool_latency_scale: float = 1.0
    """Multiplies every turn's `tool_s` (0: no tool latency)."""
    ignore_eos: bool = True
    """Send SGLang's `ignore_eos` so exactly `max_tokens` come back."""
    retry_shed: int = 0
    """Retries of a request answered 429 or 503 (after its `Retry-After`); 0: it is an error."""
    api_key: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    probe_server: bool = True
    """Poll our gateway's workers for storage-NIC counters and read its decisions' read paths
    (skipped quietly when the endpoint is not ours)."""
    probe_interval_s: float = 0.5

    def __post_init__(self) -> None:
        try:
            url = urlsplit(self.url)
            host = url.hostname
        except ValueError as exc:
            raise ReplayError(f"--url {self.url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not host:
            raise ReplayError(f"--url must be an http:// or https:// URL, not {self.url!r}")
        if self.aps is not None and not (math.isfinite(self.aps) and self.aps > 0):
            raise ReplayError("--aps must be a positive number")
        if self.mode is Mode.OFFLINE and self.aps is not None:
            raise ReplayError("--aps is for --mode online")
        for name in ("agents", "max_turns"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ReplayError(f"--{name.replace('_', '-')} must be ≥ 1")
        if not 1 <= self.max_concurrency <= 65_536:
            raise ReplayError("--max-concurrency must be between 1 and 65536")
        if not (math.isfinite(self.tool_latency_scale) and self.tool_latency_scale >= 0):
            raise ReplayError("--tool-latency must be a finite number ≥ 0")
        if not 0 <= self.retry_shed <= 100:
            raise ReplayError("--retry-shed must be between 0 and 100")
        if not (math.isfinite(self.probe_interval_s) and self.probe_interval_s > 0):
            raise ReplayError("the probe interval must be a positive number of seconds")

    @property
    def base_url(self) -> str:
        """The URL without a trailing `/` or `/v1`."""
        url = self.url.rstrip("/")
        return url.removesuffix("/v1")
