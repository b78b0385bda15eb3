"""The FastAPI app of one simulated SGLang worker: routes and lifespan-owned state."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from engines.engine_model import EngineModel
from engines.sim_worker import info
from engines.sim_worker.config import SimWorkerConfig
from engines.sim_worker.errors import BadRequest, SimWorkerError
from engines.sim_worker.inputs import (
    ApiRequest,
    Bootstrap,
    GenRequest,
    parse_chat,
    parse_completion,
    parse_generate,
)
from engines.sim_worker.kv_io import StagedBlocks, WorkerKV
from engines.sim_worker.rendezvous import (
    FAKE_BOOTSTRAP_HOST,
    BootstrapServer,
    RoomBoard,
    RoomClient,
    RoomResult,
    bootstrap_app,
)
from engines.sim_worker.responses import error_body, generate_error_body
from engines.sim_worker.runner import EngineRunner
from engines.sim_worker.serving import serve_generation
from engines.sim_worker.tracing import WorkerTracing
from engines.sim_worker.worker import SimWorker
from engines.tokenizer import load_tokenizer
from kvstore.block import BlockShape
from kvstore.block_key import chain_root
from kvstore.open_store import open_store
from kvstore.wire import encode_values

Parser = Callable[..., ApiRequest]
_PARSERS: dict[str, Parser] = {
    "generate": parse_generate,
    "chat": parse_chat,
    "completion": parse_completion,
}


def _worker(request: Request) -> SimWorker:
    worker: SimWorker = request.app.state.worker
    return worker


async def _json_body(request: Request, openai: bool) -> dict[str, Any]:
    if openai:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise BadRequest("Content-Type must be application/json")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _engine_model(config: SimWorkerConfig) -> EngineModel:
    return EngineModel.named(config.engine_model).with_nics(config.snic_gbps, config.cnic_gbps)


async def _worker_kv(
    config: SimWorkerConfig,
    model: EngineModel,
    runner: EngineRunner,
    client: httpx.AsyncClient,
    stack: contextlib.AsyncExitStack,
) -> WorkerKV | None:
    if not config.kv_store:
        return None
    store = await open_store(config.kv_store, segment_bytes=config.kv_segment_bytes)
    stack.push_async_callback(store.close)
    shape = BlockShape(config.page_size, model.model.kv_bytes_per_token, config.kv_scale)
    staging: RoomBoard[StagedBlocks] = RoomBoard(
        config.stage_timeout_s,
        config.max_staged_rooms,
        weigh=lambda blocks: sum(len(b) for b in blocks),
        max_bytes=config.max_staged_bytes,
    )
    # Without the gateway's extension a request is keyed as the anonymous tenant's, as the
    # gateway keys it with its default (empty) secret.
    root = chain_root(b"", "anonymous", config.served_model_name)
    kv = WorkerKV(store, shape, runner, root, staging, client)
    stack.push_async_callback(kv.close)
    return kv


def create_app(config: SimWorkerConfig) -> FastAPI:
    """The worker's app; its engine, caches and bootstrap server live while the app runs."""
    engine_model = _engine_model(config)
    tokenizer = load_tokenizer(config.tokenizer_path)
    context_length = engine_model.model.context_length

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = EngineRunner(
            engine_model,
            time_scale=config.time_scale,
            max_running=config.max_running_requests,
            max_total_tokens=config.max_total_num_tokens,
        )
        board: RoomBoard[RoomResult] = RoomBoard(config.bootstrap_timeout_s, config.max_rooms)
        async with contextlib.AsyncExitStack() as stack:
            tracing = WorkerTracing.from_env(config)  # None unless OTEL_* asks for it
            if tracing is not None:
                stack.callback(tracing.shutdown)  # first in, so last out: flushes every span
            client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)
            await stack.enter_async_context(client)
            rooms = RoomClient(client) if config.role == "decode" else None
            kv = await _worker_kv(config, engine_model, runner, client, stack)
            if config.role == "prefill":
                server = BootstrapServer(
                    bootstrap_app(
                        board,
                        host=config.host,
                        port=config.bootstrap_port,
                        page_size=config.page_size,
                    ),
                    config.host,
                    config.bootstrap_port,
                )
                await server.start()
                stack.push_async_callback(server.stop)
            runner.start()
            stack.push_async_callback(runner.stop)
            app.state.worker = SimWorker(config, tokenizer, runner, board, rooms, kv, tracing)
            app.state.ready_at = time.monotonic() + config.startup_delay_s
            app.state.started = time.time()
            yield

    app = FastAPI(
        title="dualpath sim SGLang worker",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(SimWorkerError)
    async def _on_error(request: Request, exc: SimWorkerError) -> JSONResponse:
        make = generate_error_body if request.url.path == "/generate" else error_body
        return JSONResponse(make(exc.message, exc.status_code, exc.err_type), exc.status_code)

    def _ready(request: Request) -> bool:
        state = request.app.state
        return hasattr(state, "worker") and time.monotonic() >= state.ready_at

    async def generation(request: Request, kind: str) -> Response:
        body = await _json_body(request, openai=kind != "generate")
        api = _PARSERS[kind](body, tokenizer, config, context_length)
        return await serve_generation(request, _worker(request), kind, api)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        return await generation(request, "generate")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generation(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generation(request, "completion")

    @app.get("/health")
    async def health(request: Request) -> Response:
        return Response(status_code=200 if _ready(request) else 503)

    @app.get("/health_generate")
    async def health_generate(request: Request) -> Response:
        if not _ready(request):
            return Response(status_code=503)
        # SGLang's probe: one token through the engine, fake KV transfer in PD mode.
        probe = GenRequest(
            rid=f"HEALTH_CHECK_{time.monotonic_ns()}",
            prompt_ids=(0,),
            max_new_tokens=1,
            bootstrap=Bootstrap(FAKE_BOOTSTRAP_HOST, config.bootstrap_port, 0),
        )
        try:
            async with asyncio.timeout(20):
                async for state in _worker(request).run(probe):
                    ok = state.error is None
        except TimeoutError:
            ok = False
        return Response(status_code=200 if ok else 503)

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info(request: Request) -> dict[str, Any]:
        return info.server_info(config, _worker(request), context_length)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return info.model_info(config)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        card = info.model_card(config, request.app.state.started, context_length)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model:path}")
    async def one_model(request: Request, model: str) -> Response:
        if model != config.served_model_name:
            message = f"The model `{model}` does not exist."
            return JSONResponse(error_body(message, 404, "NotFoundError"), 404)
        return JSONResponse(info.model_card(config, request.app.state.started, context_length))

    @app.get("/get_load")
    async def get_load(request: Request) -> list[dict[str, Any]]:
        return info.get_load(_worker(request))

    @app.get("/v1/loads")
    async def loads(request: Request) -> Response:
        worker = _worker(request)
        if request.query_params.get("format") == "prometheus":
            return PlainTextResponse(info.loads_prometheus(worker))
        return JSONResponse(info.loads(worker))

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache(request: Request) -> Response:
        worker = _worker(request)
        if worker.num_active or not worker.runner.idle:
            return PlainTextResponse("Cache not flushed: requests are running or waiting.\n", 400)
        worker.cache.clear()
        return PlainTextResponse("Cache flushed.\n")

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await _json_body(request, openai=False)
        worker = _worker(request)
        if body.get("abort_all"):
            worker.abort_all()
        elif body.get("rid") is not None:
            worker.abort(str(body["rid"]))
        return Response(status_code=200)

    @app.get("/dualpath/aborted")
    async def aborted(request: Request) -> dict[str, Any]:
        """Sim-only: rids this worker aborted, newest last (bounded)."""
        return {"aborted_rids": list(_worker(request).aborted_rids)}

    @app.get("/dualpath/stage/{room}")
    async def staged(
        request: Request, room: int, wait: float = Query(0.0, alias="timeout")
    ) -> Response:
        """Sim-only, read path `de`: the blocks this decode staged for a room's prefill."""
        kv = _worker(request).kv
        blocks = await kv.staging.collect(room, max(wait, 0.0)) if kv else None
        if blocks is None:
            return JSONResponse({"error": f"nothing staged for room {room}"}, 404)
        return Response(encode_values(blocks), media_type="application/octet-stream")

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(
            _worker(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app
