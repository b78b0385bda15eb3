"""A replay run: which agents, when each starts, and everything they send, gathered.

Agents: the trace's first `agents` (all by default); asking for more than the trace has reuses
its trajectories in order under new ids (`a3~1`: its own session and its own text, so copies
share no prefix). Each is cut to `max_turns`. Starts: offline, all at 0; online, a Poisson
process at `aps` from a `random.Random(seed)` (the first agent at 0), or without `aps` the
trace's own `arrival_s`. Requests in flight are bounded by `max_concurrency` (a semaphore and
the connection pool). The run's clock starts just before the first agent; every sample's times
are seconds on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import time
from dataclasses import dataclass, field

import httpx
import orjson

from loadtest.metrics import RequestSample
from loadtest.replay.agent import AgentContext, AgentRecord, replay_agent
from loadtest.replay.chat_request import Endpoint, ItlStats, TurnOutcome
from loadtest.replay.config import Mode, ReplayConfig
from loadtest.replay.errors import ReplayError
from loadtest.replay.progress import NoProgress, ProgressSink
from loadtest.replay.server_probe import ServerProbe
from loadtest.report.series import SnicSeries
from loadtest.trace import AgentTrace, Trace


@dataclass(frozen=True, slots=True)
class PlannedAgent:
    agent_id: str
    trace: AgentTrace
    start_s: float


@dataclass(frozen=True, slots=True)
class ReplayResult:
    config: ReplayConfig
    model: str
    started_at: str
    """Wall-clock time (ISO 8601, UTC) of the run clock's zero."""
    wall_s: float
    samples: tuple[RequestSample, ...]
    itl: tuple[ItlStats | None, ...]
    """Per sample (same order): its stream's inter-token latencies."""
    agents: tuple[AgentRecord, ...]
    planned_requests: int
    snic: tuple[SnicSeries, ...] = ()
    server_read_paths: dict[str, int] = field(default_factory=dict)


def plan_agents(trace: Trace, config: ReplayConfig) -> list[PlannedAgent]:
    if not trace.agents:
        raise ReplayError("the trace has no agents")
    count = config.agents or len(trace.agents)
    chosen: list[tuple[str, AgentTrace]] = []
    for k in range(count):
        agent = trace.agents[k % len(trace.agents)]
        copy = k // len(trace.agents)
        turns = agent.turns[: config.max_turns] if config.max_turns else agent.turns
        name = agent.agent if copy == 0 else f"{agent.agent}~{copy}"
        chosen.append((name, AgentTrace(agent.agent, turns, agent.arrival_s)))
    starts = _starts(config, [a for _, a in chosen], copies=count > len(trace.agents))
    return [PlannedAgent(n, a, s) for (n, a), s in zip(chosen, starts, strict=True)]


def _starts(config: ReplayConfig, agents: list[AgentTrace], copies: bool) -> list[float]:
    if config.mode is Mode.OFFLINE:
        return [0.0] * len(agents)
    if config.aps is not None:
        rng = random.Random(config.seed)
        starts, t = [], 0.0
        for _ in agents:
            starts.append(t)
            t += rng.expovariate(config.aps)
        return starts
    given = [a.arrival_s for a in agents]
    if copies or any(s is None for s in given):
        raise ReplayError("--mode online needs --aps, or a trace whose every agent has 'arrival_s'")
    first = min(s for s in given if s is not None)
    return [s - first for s in given if s is not None]


async def discover_model(
    client: httpx.AsyncClient, base_url: str, headers: dict[str, str] | None = None
) -> str:
    """The first model of `GET /v1/models`."""
    url = base_url + "/v1/models"
    try:
        response = await client.get(url, headers=headers)
        response.raise_for_status()
        models = orjson.loads(response.content)["data"]
        return str(models[0]["id"])
    except httpx.HTTPError as exc:
        raise ReplayError(
            f"cannot list the models at {url} ({exc}); name one with --model"
        ) from exc
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise ReplayError(f"{url} listed no model; name one with --model") from exc


class RunClock:
    """Seconds since `reset` (monotonic)."""

    __slots__ = ("_origin",)

    def __init__(self) -> None:
        self._origin = time.perf_counter()

    def reset(self) -> None:
        self._origin = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self._origin


class _Collector:
    """Samples as they come, in completion order; and the progress bar."""

    def __init__(self, progress: ProgressSink) -> None:
        self.samples: list[RequestSample] = []
        self.itl: list[ItlStats | None] = []
        self.progress = progress

    def __call__(self, outcome: TurnOutcome) -> None:
        self.samples.append(outcome.sample)
        self.itl.append(outcome.itl)
        self.progress.advance(outcome.sample)


async def _run_agent(plan: PlannedAgent, ctx: AgentContext, progress: ProgressSink) -> AgentRecord:
    await asyncio.sleep(max(0.0, plan.start_s - ctx.clock()))
    try:
        record = await replay_agent(plan.trace, plan.agent_id, ctx)
    except Exception as exc:  # a bug must not end everyone else's replay; it is reported
        record = AgentRecord(plan.agent_id, len(plan.trace.turns), error=f"internal: {exc!r}")
    progress.skip(record.turns - record.done - (1 if record.error else 0))
    return record


async def run_replay(
    config: ReplayConfig, trace: Trace, progress: ProgressSink | None = None
) -> ReplayResult:
    """Replay `trace` against `config.url`. Raises `ReplayError` only before the first request
    (no model to name); after that every failure is a sample's `error`."""
    plans = plan_agents(trace, config)
    progress = progress or NoProgress()
    planned = sum(len(p.trace.turns) for p in plans)
    t = config.timeouts
    control = httpx.Timeout(t.control_s)
    endpoint = Endpoint(
        config.base_url + "/v1/chat/completions", t, config.api_key, config.ignore_eos
    )
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else None
    async with (
        endpoint.client(config.max_concurrency) as client,
        httpx.AsyncClient(timeout=control) as control_client,
    ):
        model = config.model or await discover_model(control_client, config.base_url, headers)
        clock = RunClock()
        probe = ServerProbe(
            control_client, config.base_url, clock, config.probe_interval_s, headers=headers
        )
        has_nodes = config.probe_server and await probe.discover() > 0
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        clock.reset()
        collector = _Collector(progress)
        ctx = AgentContext(
            client, endpoint, model, clock, asyncio.Semaphore(config.max_concurrency),
            collector, config.seed, config.tool_latency_scale, config.retry_shed,
        )  # fmt: skip
        poller = asyncio.create_task(probe.poll()) if has_nodes else None
        progress.start(planned)
        try:
            records = await asyncio.gather(*(_run_agent(p, ctx, progress) for p in plans))
        finally:
            progress.stop()
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
        wall = clock()
        if has_nodes:
            await probe.sample_all()
        paths = await probe.read_paths() if config.probe_server else {}
    return ReplayResult(
        config, model, started_at, wall, tuple(collector.samples), tuple(collector.itl),
        tuple(records), planned, probe.series() if has_nodes else (), paths,
    )  # fmt: skip
