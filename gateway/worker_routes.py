"""`/workers`: register, list and drain workers at run time (admin routes).

- `POST /workers` `{url, role, bootstrap_port?}` registers a worker and discovers it as a
  configured one is (`/server_info`, then `/health`); 201 with its state, which may still be
  unhealthy (the health checks go on: it is used once it answers). 409 if the URL is known;
  400 for a bad body, a URL with credentials, or past `MAX_WORKERS`.
- `GET /workers` lists every worker: role, model, health, breaker, draining, in-flight count;
  `GET /workers/{id or url}` one of them (404 once a drained worker is gone).
- `DELETE /workers/{id or url}` drains it: no new request goes there, the in-flight ones finish,
  then it is removed (202 while draining, 200 once removed). `?force=true` removes it at once,
  leaving its in-flight requests to end on their own.

A worker's id is a short hash of its URL; a URL in the path may be sent as is or
percent-encoded. Registrations live in this gateway's memory: a restart reads the cluster file
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from engines.worker_registry import Worker, WorkerRegistry
from gateway.errors import InvalidRequest, NotFound, WorkerConflict
from gateway.scheduling import LiveScheduler
from gateway.settings import GatewaySettings

router = APIRouter()

MAX_WORKERS = 1024
"""Registered workers at most: the registry is bounded even against a runaway client."""


class WorkerIn(BaseModel):
    """`POST /workers`: as a cluster file's `workers` entry."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    role: Literal["prefill", "decode"]
    bootstrap_port: int | None = Field(default=None, ge=1, le=65535)
    """Prefill only; None lets the worker report it in `/server_info`."""


def _registry(request: Request) -> WorkerRegistry:
    registry: WorkerRegistry = request.app.state.gateway.registry
    return registry


def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.gateway.settings
    return settings


def _scheduler(request: Request) -> LiveScheduler:
    scheduler: LiveScheduler = request.app.state.gateway.scheduler
    return scheduler


def _base_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise InvalidRequest(f"url must be http(s)://host:port, not {raw!r}", param="url")
    if parts.username or parts.password:  # it would be logged and listed
        raise InvalidRequest("url must not carry credentials", param="url")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise InvalidRequest(f"url has a bad port: {raw!r}", param="url") from exc
    return url


def describe(worker: Worker, registry: WorkerRegistry, now: float) -> dict[str, Any]:
    breaker = worker.breaker
    return {
        "id": worker.id,
        "object": "worker",
        "url": worker.url,
        "role": worker.role,
        "model": worker.model,
        "bootstrap_port": worker.bootstrap_port,
        "healthy": worker.healthy,
        "usable": registry.usable(worker),
        "draining": worker.draining,
        "in_flight": worker.in_flight,
        "breaker": {
            "state": breaker.state(now).value,
            "consecutive_failures": breaker.failures,
            "times_opened": breaker.opened,
            "retry_in_s": round(breaker.retry_in_s(now), 3),
        },
    }


def _find(registry: WorkerRegistry, key: str) -> Worker:
    worker = registry.find(key)
    if worker is None:
        raise NotFound(f"no worker {key!r} is registered")
    return worker


@router.post("/workers", status_code=201)
async def register_worker(request: Request, spec: WorkerIn) -> JSONResponse:
    registry = _registry(request)
    url = _base_url(spec.url)
    if registry.find(url) is not None:
        raise WorkerConflict(f"worker {url} is already registered", param="url")
    if len(registry.all) >= MAX_WORKERS:
        raise InvalidRequest(f"at most {MAX_WORKERS} workers may be registered")
    worker = registry.add(Worker(url, spec.role, spec.bootstrap_port))
    # Discovery and a first health check, as at start-up; one that takes longer than a control
    # call (an address that drops packets) is left to the background health checks.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_settings(request).timeouts.control_s):
            await registry.check(worker)
    _scheduler(request).sync()
    return JSONResponse(describe(worker, registry, time.monotonic()), status_code=201)


@router.get("/workers")
async def list_workers(request: Request) -> JSONResponse:
    registry = _registry(request)
    now = time.monotonic()
    data = [describe(w, registry, now) for w in registry.all]
    return JSONResponse({"object": "list", "data": data})


@router.get("/workers/{key:path}")
async def get_worker(request: Request, key: str) -> JSONResponse:
    registry = _registry(request)
    return JSONResponse(describe(_find(registry, key), registry, time.monotonic()))


@router.delete("/workers/{key:path}")
async def drain_worker(request: Request, key: str, force: bool = False) -> JSONResponse:
    registry = _registry(request)
    worker = _find(registry, key)
    removed = registry.drain(worker, force=force)
    body = {**describe(worker, registry, time.monotonic()), "removed": removed}
    return JSONResponse(body, status_code=200 if removed else 202)
