"""The app factory: a FastAPI app whose state (client, registry, scheduler) the lifespan owns."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from engines.pd_client import UpstreamClient
from engines.worker_loads import LoadPoller
from engines.worker_registry import Worker, WorkerRegistry
from gateway.auth import Auth, AuthMiddleware, require_admin
from gateway.debug_routes import router as debug_router
from gateway.errors import APIError, InvalidRequest, MethodNotAllowed, NotFound
from gateway.hit_probe import HitProbe
from gateway.live_state import LiveState
from gateway.metrics import GatewayMetrics
from gateway.pd_dispatch import PDDispatcher
from gateway.routes import GatewayState, router
from gateway.scheduling import LiveScheduler
from gateway.session_routes import router as session_router
from gateway.session_turns import SessionTurns
from gateway.settings import GatewaySettings
from gateway.telemetry_routes import install_telemetry
from gateway.tracing import Tracing
from gateway.worker_routes import router as worker_router
from kvstore.open_store import open_store
from kvstore.store import KVStore

log = logging.getLogger(__name__)


def _error_response(err: APIError) -> Response:
    return Response(
        err.json_bytes(), status_code=err.status, headers=err.headers, media_type="application/json"
    )


async def _on_api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return _error_response(exc)


async def _on_http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error_response(NotFound("Unknown route"))
    if exc.status_code == 405:
        return _error_response(MethodNotAllowed("Method not allowed on this route"))
    err = InvalidRequest(str(exc.detail))
    err.status = exc.status_code
    return _error_response(err)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    return _error_response(InvalidRequest(f"Invalid request: {exc}"))


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    # A bug, but the client still gets an OpenAI-shaped answer.
    log.exception("unexpected error", exc_info=exc)
    err = APIError("internal error in the gateway")
    return _error_response(err)


def create_app(settings: GatewaySettings) -> FastAPI:
    metrics = GatewayMetrics()  # before the lifespan: its middleware counts every response
    auth = Auth.from_settings(settings)  # likewise: its middleware checks every request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First, so a store that cannot be set up stops the start before anything runs. The
        # gateway only looks blocks up: it lends the store no memory (Mooncake segment 0).
        kv_store: KVStore | None = None
        if settings.kv.store_url:
            kv_store = await open_store(settings.kv.store_url, segment_bytes=0)
        client = UpstreamClient(settings.timeouts, settings.upstream_connections)
        workers = [Worker(s.url, s.role, s.bootstrap_port) for s in settings.workers]
        registry = WorkerRegistry(workers, client, settings.health, settings.breaker)
        await registry.start()
        scheduler = LiveScheduler(
            registry, settings.scheduler, settings.scheduling, settings.retry_after_s
        )
        scheduler.sync()
        loads = LoadPoller(
            lambda: registry.all, client, settings.loads_interval_s, on_poll=scheduler.sync
        )
        loads.start()
        sessions = SessionTurns.from_settings(settings)
        metrics.attach(LiveState(registry, scheduler.schedulers, scheduler.policy, sessions.store))
        tracing = Tracing.from_env(settings.trace_content)  # None unless OTEL_* asks for it
        if tracing is not None and (shipper := tracing.shipper) is not None:
            metrics.trace_spans = lambda: (shipper.shipped, shipper.dropped)
        app.state.gateway = GatewayState(
            settings=settings,
            registry=registry,
            scheduler=scheduler,
            dispatcher=PDDispatcher(client, on_stage=metrics.stage_seconds, registry=registry),
            sessions=sessions,
            started=int(time.time()),
            hit_probe=HitProbe(kv_store, settings.kv.probe_timeout_s) if kv_store else None,
            metrics=metrics,
            tracing=tracing,
        )
        try:
            yield
        finally:
            await sessions.close()
            await auth.close()
            await loads.stop()
            scheduler.close()
            await registry.stop()
            await client.aclose()
            if kv_store is not None:
                await kv_store.close()
            if tracing is not None:  # last: flushes the spans of everything above
                tracing.shutdown()

    app = FastAPI(title="dualpath-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(router)
    admin_only = [Depends(require_admin)]  # 403 for a non-admin key once keys are configured
    app.include_router(session_router, dependencies=admin_only)
    app.include_router(debug_router, dependencies=admin_only)
    app.include_router(worker_router, dependencies=admin_only)
    app.state.auth = auth
    app.add_middleware(AuthMiddleware, auth=auth)  # inside the counter: 401s and 429s count
    install_telemetry(app, metrics)
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    return app
