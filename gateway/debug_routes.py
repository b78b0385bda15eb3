"""`GET /debug/decisions`: why each recent request went where it went.

The last N scheduling decisions per model with the candidates weighed and their predicted TTFT
and TPOT, what is held and why, the scheduler's view of every engine, and how often the KV store
confirmed or lowered the session step's estimated hits (`hit_probe`, null when not checked).
With API keys configured it needs an admin key (`gateway.auth.require_admin`, set in `app.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from gateway.routes import GatewayState

router = APIRouter()


@router.get("/debug/decisions")
async def decisions(
    request: Request, limit: Annotated[int, Query(ge=0, le=1000)] = 50
) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    body = state.scheduler.explain(limit)
    probe = state.hit_probe
    body["hit_probe"] = dataclasses.asdict(probe.counters) if probe is not None else None
    return JSONResponse(body)
