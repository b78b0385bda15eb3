"""`GET /debug/decisions`: why each recent request went where it went.

The last N scheduling decisions per model with the candidates weighed and their predicted TTFT
and TPOT, what is held and why, and the scheduler's view of every engine. (Admin-only once keys
exist, issue 8.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from gateway.scheduling import LiveScheduler

router = APIRouter()


@router.get("/debug/decisions")
async def decisions(
    request: Request, limit: Annotated[int, Query(ge=0, le=1000)] = 50
) -> JSONResponse:
    scheduler: LiveScheduler = request.app.state.gateway.scheduler
    return JSONResponse(scheduler.explain(limit))
