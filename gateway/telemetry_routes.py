"""`GET /metrics` (Prometheus text) and the live dashboard: `GET /dashboard`, its script and style,
and `GET /dashboard/data` (JSON, polled by the page).

The page's three files ship in the package (`gateway/dashboard/`) and load nothing else, so it
works offline and needs no build step.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from gateway.dashboard_data import Dashboard
from gateway.metrics import GatewayMetrics, RequestCounter

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

router = APIRouter()


@cache  # three small files, read once
def _asset(name: str) -> bytes:
    return (resources.files("gateway") / "dashboard" / name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers={"cache-control": "no-cache"})


def install_telemetry(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Serve `metrics` and the dashboard from `app`, and count its responses."""
    app.state.metrics = metrics
    app.state.dashboard = Dashboard(metrics)
    app.include_router(router)
    app.add_middleware(RequestCounter, metrics=metrics)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry: GatewayMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/dashboard")
async def dashboard() -> Response:
    return _serve("index.html")


@router.get("/dashboard/dashboard.js")
async def dashboard_js() -> Response:
    return _serve("dashboard.js")


@router.get("/dashboard/dashboard.css")
async def dashboard_css() -> Response:
    return _serve("dashboard.css")


@router.get("/dashboard/data")
async def dashboard_data(request: Request) -> JSONResponse:
    board: Dashboard = request.app.state.dashboard
    return JSONResponse(board.data())
