"""A recording SGLang worker: answers like a worker and remembers every request it got.

Used to compare what our gateway and `sglang-router` send to workers, field for field, and to see
`/abort_request` calls. Streams are paced (`--interval-ms` between chunks) so a test can hang up
mid-stream. Run: `python -m tests.support.recording_worker --role decode --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse


def create_app(
    role: str,
    model: str,
    tokens: int,
    interval_s: float,
    bootstrap_port: int,
    fail_status: int = 0,
) -> FastAPI:
    app = FastAPI()
    recorded: deque[dict[str, Any]] = deque(maxlen=1000)

    def chunk(rid: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    async def stream(rid: str, n: int) -> AsyncIterator[bytes]:
        yield chunk(rid, {"role": "assistant", "content": ""})
        for i in range(n):
            await asyncio.sleep(interval_s)  # pacing that a real engine's decode steps would give
            yield chunk(rid, {"content": f" t{i}"})
        yield chunk(rid, {}, "length")
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        yield b"data: " + orjson.dumps({"id": rid, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    @app.post("/v1/chat/completions", response_model=None)
    @app.post("/v1/completions", response_model=None)
    @app.post("/generate", response_model=None)
    async def generate(request: Request) -> Response:
        body = orjson.loads(await request.body())
        recorded.append({"path": request.url.path, "body": body})
        rid = str(body.get("rid") or "rec")
        if fail_status:
            error = {"object": "error", "message": "injected failure", "code": fail_status}
            return JSONResponse(error, status_code=fail_status)
        n = 1 if role == "prefill" else tokens
        if body.get("stream"):
            return StreamingResponse(stream(rid, n), media_type="text/event-stream")
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        message = {"role": "assistant", "content": " t" * n}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )

    @app.post("/abort_request")
    async def abort(request: Request) -> JSONResponse:
        recorded.append({"path": "/abort_request", "body": orjson.loads(await request.body())})
        return JSONResponse({})

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        return Response()

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> JSONResponse:
        return JSONResponse(
            {
                "served_model_name": model,
                "model_path": model,
                "disaggregation_mode": role,
                "disaggregation_bootstrap_port": bootstrap_port,
                "dp_size": 1,
                "page_size": 64,
            }
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> JSONResponse:
        return JSONResponse({"model_path": model, "tokenizer_path": model, "is_generation": True})

    @app.get("/get_load")
    async def get_load() -> JSONResponse:
        return JSONResponse([{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}])

    @app.get("/_recorded")
    async def get_recorded() -> JSONResponse:
        return JSONResponse(list(recorded))

    @app.post("/_reset")
    async def reset() -> JSONResponse:
        recorded.clear()
        return JSONResponse({})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=("prefill", "decode"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="rec-model")
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--interval-ms", type=float, default=1.0)
    p.add_argument("--bootstrap-port", type=int, default=8998)
    p.add_argument("--fail-status", type=int, default=0, help="answer generation with this status")
    a = p.parse_args()
    app = create_app(
        a.role, a.model, a.tokens, a.interval_ms / 1000, a.bootstrap_port, a.fail_status
    )
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
