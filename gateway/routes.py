"""The OpenAI-compatible routes and the health/readiness probes."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from engines.worker_registry import Worker, WorkerRegistry
from gateway.auth import admit
from gateway.errors import ModelNotFound, NoHealthyWorker
from gateway.failover import AttemptFailed, Attempts, CancelOnDisconnect
from gateway.hit_probe import HitProbe
from gateway.kv_route import KVRoute
from gateway.metrics import GatewayMetrics
from gateway.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    generation_responses,
    openapi_body,
)
from gateway.pd_dispatch import FORWARDED_HEADERS, Completed, PDDispatcher
from gateway.request_parsing import ParsedRequest, check_content_type, parse_request, read_body
from gateway.request_trace import RequestTrace
from gateway.sched_request import sched_request
from gateway.scheduler.request import SchedRequest
from gateway.scheduling import LiveScheduler
from gateway.session_turns import SessionTurns, Turn
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from session.identity import SESSION_HEADER


@dataclass(slots=True)
class GatewayState:
    """What the routes need, owned by the app's lifespan."""

    settings: GatewaySettings
    registry: WorkerRegistry
    scheduler: LiveScheduler
    dispatcher: PDDispatcher
    sessions: SessionTurns
    started: int
    hit_probe: HitProbe | None = None
    """Checks each turn's estimated hit against the KV store; None when no store is set."""
    tracing: Tracing | None = None
    """OpenTelemetry traces; None when tracing is off (the requests then build no span)."""
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    """`GET /metrics`: the routes record each request's stages, latencies and usage."""


READ_PATH_HEADER = "x-dualpath-read-path"
PREFILL_HEADER = "x-dualpath-prefill"
DECODE_HEADER = "x-dualpath-decode"

router = APIRouter()


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def _generate(request: Request) -> Response:
    state = _state(request)
    if state.tracing is None:
        return await _handle(request, state, None)
    trace = state.tracing.request(request.url.path, request.headers)
    try:
        return trace.response(await _handle(request, state, trace))
    except BaseException as exc:
        trace.fail(exc)
        raise


async def _handle(request: Request, state: GatewayState, trace: RequestTrace | None) -> Response:
    started_at = time.monotonic()
    metrics = state.metrics
    headers = request.headers
    check_content_type(headers)
    raw = await read_body(headers, request.stream(), state.settings.limits)
    parsed = parse_request(request.url.path, raw, state.settings.limits)
    model = parsed.model
    if model not in state.registry.models():
        raise ModelNotFound(
            f"The model '{model}' does not exist or is not served here", param="model"
        )
    lap = metrics.stage("parse", started_at)
    if trace is not None:
        trace.stage("session.identify")
    turn = await state.sessions.begin(parsed, headers)
    plan = turn.plan if turn is not None else None
    lap = metrics.stage("session", lap)
    if plan is not None:
        metrics.session_turn(plan)
    hit = plan.hit_tokens if plan is not None else None
    if trace is not None:
        trace.session(parsed, plan)
    if plan is not None and state.hit_probe is not None:
        if trace is not None:
            trace.stage("kv.lookup")
        # Evicted blocks are computed, not loaded: schedule and announce only what is stored.
        hit = await state.hit_probe.confirmed_hit(plan)
        lap = metrics.stage("kv_lookup", lap)
        if trace is not None:
            trace.kv_lookup(plan, hit)
    wanted = sched_request(
        parsed, plan, headers, len(raw), state.settings.scheduler, started_at, hit_tokens=hit
    )
    await admit(request, parsed, wanted)  # the key's tokens per minute; its cache namespace
    ready = _Ready(parsed, turn, hit, started_at)
    attempts = Attempts(wanted.rid, state.settings.retry.max_attempts)
    async with CancelOnDisconnect(request.receive):  # a client that hangs up cancels its turn
        while True:
            try:
                return await _try(state, trace, headers, ready, wanted, attempts, lap)
            except AttemptFailed as failed:  # nothing was sent yet: maybe another pair
                wanted = attempts.retry(failed, wanted)  # raises the error when it may not
                lap = time.monotonic()


def header_safe(value: str) -> str:
    """`value` as a response header can carry it: a session id from the body (`user`,
    `metadata`) may be any printable Unicode, and header values are Latin-1 on the wire; such an
    id is echoed percent-encoded (UTF-8), as in a URL."""
    return value if value.isascii() else quote(value, safe=_VISIBLE_ASCII)


_VISIBLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


@dataclass(frozen=True, slots=True)
class _Ready:
    """A parsed request matched to its session, ready to be placed (once per try)."""

    parsed: ParsedRequest
    turn: Turn | None
    hit: int | None
    started_at: float


async def _try(
    state: GatewayState,
    trace: RequestTrace | None,
    headers: Headers,
    ready: _Ready,
    wanted: SchedRequest,
    attempts: Attempts,
    lap: float,
) -> Response:
    """Place one try (avoiding the workers that failed the earlier ones) and dispatch it."""
    parsed, turn, hit, started_at = ready.parsed, ready.turn, ready.hit, ready.started_at
    model, metrics = parsed.model, state.metrics
    plan = turn.plan if turn is not None else None
    if trace is not None:
        trace.stage("schedule")
    try:
        decision, pair = await state.scheduler.place(model, wanted, attempts.excluded)
    except NoHealthyWorker:
        if attempts.last is None:
            raise
        raise attempts.last.error from attempts.last  # a retry with no other pair to go to
    metrics.placed(model, decision, lap)
    if trace is not None:
        trace.scheduled(decision, pair, wanted)
    scheduler, rid = state.scheduler, wanted.rid

    def on_end(done: Completed | None) -> None:
        # However it ends, both legs' work is released; unstreamed, no TTFT was seen to feed back.
        output = (done.usage or {}).get("completion_tokens") if done is not None else None
        scheduler.finished(model, rid, output if isinstance(output, int) else None)
        if done is not None:
            metrics.finished(model, started_at, done)
        if trace is not None:
            trace.end(done)

    forwarded = {h: headers[h] for h in FORWARDED_HEADERS if h in headers}
    # Which route loaded this request's cached KV, for load testers' read-path shares; which
    # workers serve it (opaque ids, as `/workers` names them), so a client can tell a worker's
    # failure from the gateway's; and the gateway's own time so far apart from the scheduler's
    # deliberate hold (`server-timing`), so added latency is measurable per request.
    now = time.monotonic()
    waited = min(max(decision.at - lap, 0.0), now - lap)
    own_ms = (now - started_at - waited) * 1e3
    headers_out = {
        READ_PATH_HEADER: decision.read_path,
        PREFILL_HEADER: pair.prefill.id,
        DECODE_HEADER: pair.decode.id,
        "server-timing": f"gateway;dur={own_ms:.3f}, queue;dur={waited * 1e3:.3f}",
    }
    if plan is not None:
        headers_out[SESSION_HEADER] = header_safe(plan.session_id)
    kv = KVRoute(
        state.sessions.chain_root(headers, model),
        decision.read_path,
        decision.pe_share,
        hit,
    )
    return await state.dispatcher.dispatch(
        parsed,
        pair,
        forwarded,
        response_headers=headers_out,
        on_complete=state.sessions.on_complete(plan, started_at, pair) if plan else None,
        on_first_chunk=lambda: scheduler.first_token(model, rid),
        on_end=on_end,
        messages_json=turn.messages_json if turn is not None else None,
        kv=kv,
        trace=trace,
    )


# The routes read the raw body (`gateway.request_parsing`); `openapi_extra` describes it.
@router.post(
    "/v1/chat/completions",
    response_model=None,
    openapi_extra=openapi_body(ChatCompletionRequest),
    responses=generation_responses(),
)
async def chat_completions(request: Request) -> Response:
    return await _generate(request)


@router.post(
    "/v1/completions",
    response_model=None,
    openapi_extra=openapi_body(CompletionRequest),
    responses=generation_responses(),
)
async def completions(request: Request) -> Response:
    return await _generate(request)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = _state(request)
    data = [
        {"id": m, "object": "model", "created": state.started, "owned_by": "dualpath"}
        for m in state.registry.models()
    ]
    return JSONResponse({"object": "list", "data": data})


@router.get("/health")
async def health() -> JSONResponse:
    """Liveness: the gateway process answers."""
    return JSONResponse({"status": "ok"})


def _load(worker: Worker, now: float) -> dict[str, object] | None:
    """The worker's last `/v1/loads` report, with its age instead of a monotonic stamp."""
    if worker.load is None:
        return None
    report = dataclasses.asdict(worker.load)
    report["age_s"] = round(now - report.pop("at"), 3)
    return report


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: every known model has a healthy prefill and decode worker."""
    registry = _state(request).registry
    models = registry.models()
    ready_models = registry.ready_models()
    now = time.monotonic()
    workers = [
        {
            "url": w.url,
            "role": w.role,
            "model": w.model,
            "healthy": w.healthy,
            "load": _load(w, now),
        }
        for w in registry.all
    ]
    ok = bool(models) and ready_models == models
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "models": ready_models, "workers": workers},
        status_code=200 if ok else 503,
    )
