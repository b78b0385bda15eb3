"""The sessions admin API: list, inspect and end the caller's agent sessions.

Sessions are per tenant: a caller sees only its own (another tenant's id answers 404). With API
keys configured these routes need an admin key (`gateway.auth.require_admin`, set in `app.py`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from gateway.errors import NotFound
from gateway.session_turns import SessionTurns
from gateway.tenancy import tenant_of
from session.record import SessionRecord

router = APIRouter()


def _sessions(request: Request) -> SessionTurns:
    sessions: SessionTurns = request.app.state.gateway.sessions
    return sessions


def _summary(record: SessionRecord, block_tokens: int) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "session",
        "model": record.model,
        "created": record.created,
        "last_seen": record.last_seen,
        "turns": record.turns,
        "prompt_tokens": record.prompt_tokens,
        "output_tokens": record.output_tokens,
        "total_tokens": record.total_tokens,
        "blocks": record.tip.tokens // block_tokens,
        "parent": record.parent,
        "last_prefill": record.last_prefill,
        "last_decode": record.last_decode,
    }


def _detail(record: SessionRecord, block_tokens: int) -> dict[str, Any]:
    out = _summary(record, block_tokens)
    ratio = record.tokens_per_char
    out["tokens_per_char"] = round(ratio, 4) if ratio is not None else None
    out["checkpoints"] = len(record.checkpoint_list())
    out["recent_turns"] = [
        {
            "hit_tokens": f.hit_tokens,
            "append_tokens": f.append_tokens,
            "output_tokens": f.output_tokens,
            "ttft_s": f.ttft_s,
            "tpot_s": f.tpot_s,
            "at": f.at,
        }
        for f in record.recent
    ]
    return out


@router.get("/v1/sessions")
async def list_sessions(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(None, max_length=200),
) -> JSONResponse:
    sessions = _sessions(request)
    page = await sessions.store.list(tenant_of(request.headers), after, limit)
    block = sessions.tracker.config.block_tokens
    return JSONResponse(
        {
            "object": "list",
            "data": [_summary(r, block) for r in page.data],
            "has_more": page.next_cursor is not None,
            "next": page.next_cursor,
        }
    )


async def _find(request: Request, session_id: str) -> SessionRecord:
    sessions = _sessions(request)
    record = await sessions.store.get(tenant_of(request.headers), session_id)
    if record is None:
        raise NotFound(f"No session '{session_id}'", param="session_id")
    return record


@router.get("/v1/sessions/{session_id}")
async def get_session(request: Request, session_id: str) -> JSONResponse:
    record = await _find(request, session_id)
    return JSONResponse(_detail(record, _sessions(request).tracker.config.block_tokens))


@router.delete("/v1/sessions/{session_id}")
async def delete_session(request: Request, session_id: str) -> JSONResponse:
    deleted = await _sessions(request).store.delete(tenant_of(request.headers), session_id)
    if not deleted:
        raise NotFound(f"No session '{session_id}'", param="session_id")
    return JSONResponse({"id": session_id, "object": "session.deleted", "deleted": True})
