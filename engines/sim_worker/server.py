"""Running one worker: uvicorn (uvloop + httptools) serving `create_app`.

The prefill's bootstrap server starts and stops inside the app's lifespan, so it shares the event
loop and the clean shutdown uvicorn gives on SIGINT/SIGTERM.
"""

from __future__ import annotations

import uvicorn

from engines.sim_worker.app import create_app
from engines.sim_worker.config import SimWorkerConfig


def serve(config: SimWorkerConfig) -> None:
    """Serve until SIGINT/SIGTERM (blocking)."""
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        log_level=config.log_level,
        access_log=config.log_level in ("debug", "info"),
        timeout_graceful_shutdown=2,
    )
