"""The simulated SGLang worker: SGLang's HTTP + PD protocol, GPU time from the engine model.

config.py         SimWorkerConfig
app.py            create_app: routes, lifespan-owned state
serving.py        generation endpoints: JSON or SSE, disconnect → abort
worker.py         SimWorker: one request through its role's half of PD serving
runner.py         asyncio loops driving PrefillQueue / DecodeBatch in (scaled) real time
rendezvous.py     bootstrap server, room board (prefill) and room client (decode)
prefix_cache.py   bounded page-aligned LRU prefix cache over token ids
generation.py     deterministic answers and tool calls
inputs.py         request bodies → GenRequest
responses.py      SGLang / OpenAI response shapes
info.py           /server_info, /model_info, /get_load, /v1/loads bodies
metrics.py        sglang:* Prometheus metrics on a per-app registry
tracing.py        OpenTelemetry spans per request, continuing the caller's traceparent
server.py         serve(): uvicorn with uvloop + httptools
"""

from __future__ import annotations

from engines.sim_worker.app import create_app
from engines.sim_worker.config import SimWorkerConfig
from engines.sim_worker.server import serve

__all__ = ["SimWorkerConfig", "create_app", "serve"]
