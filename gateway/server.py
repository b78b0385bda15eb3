"""Run the gateway app under uvicorn (uvloop + httptools, no access log on the hot path)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.http_limits import limited_protocol
from gateway.settings import GatewaySettings


def uvicorn_config(settings: GatewaySettings, app: FastAPI | None = None) -> uvicorn.Config:
    """How `serve` runs `app` (by default `create_app(settings)`); tests run it in a thread."""
    return uvicorn.Config(
        create_app(settings) if app is None else app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=limited_protocol(settings.limits),  # httptools, with header limits (431)
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        backlog=4096,
    )


def serve(settings: GatewaySettings) -> None:
    uvicorn.Server(uvicorn_config(settings)).run()
