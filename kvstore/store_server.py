"""The store server: one `KVStore` shared over loopback HTTP by the processes of one `dualpath up`.

The gateway, the prefill workers and the decode workers each talk to it with `HTTPKVStore`, so the
embedded store behaves like one store, as Mooncake does in production. Data travels as binary
bodies (JSON would cost a base64 pass over every KV byte); counts and stats are small JSON.
Integers are little-endian u32.

    POST /v1/blocks/exists       keys (16 B each)                -> one byte 0/1 per key
    POST /v1/blocks/exists?prefix=1                              -> {"blocks": n}
    POST /v1/blocks/get          keys                            -> per key: u32 length
                                                                    (0xFFFFFFFF: missing), bytes
    POST /v1/blocks/put          per item: key, u32 length, value -> {"stored": n}
    POST /v1/blocks/remove       keys                            -> {"removed": n}
    POST /v1/blocks/clear                                        -> {"removed": n}
    GET  /v1/stats                                               -> StoreStats as JSON
    GET  /health                                                 -> OK

Bodies are bounded (`client_max_size`, 413 beyond) and so are keys per request; a malformed body
gets a 400 with `{"error": ...}`.

    python -m kvstore.store_server --port 7070 --capacity-bytes 1073741824 \\
        [--disk-dir D --disk-capacity-bytes N] [--log-level info]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson
from aiohttp import web

from kvstore.embedded_store import EmbeddedKVStore
from kvstore.store import KVStore
from kvstore.wire import MalformedBody, decode_items, decode_keys, encode_values

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20
_T = TypeVar("_T")
MAX_KEYS = 4096
"""Keys (or items) per request; clients send at most 1024."""


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _binary(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/octet-stream")


def create_app(
    store: KVStore, *, max_body_bytes: int = MAX_BODY_BYTES, max_keys: int = MAX_KEYS
) -> web.Application:
    """Routes over `store`. The app does not own the store: whoever made it closes it."""

    async def read(request: web.Request, decode: Callable[[bytes], list[_T]]) -> list[_T]:
        found = decode(await request.read())
        if len(found) > max_keys:
            raise MalformedBody(f"{len(found)} keys in one request; the limit is {max_keys}")
        return found

    async def exists(request: web.Request) -> web.Response:
        keys = await read(request, decode_keys)
        if request.query.get("prefix") in ("1", "true"):
            return _json({"blocks": await store.prefix_blocks(keys)})
        return _binary(bytes(await store.exists(keys)))

    async def get(request: web.Request) -> web.Response:
        keys = await read(request, decode_keys)
        return _binary(encode_values(await store.get(keys)))

    async def put(request: web.Request) -> web.Response:
        items = await read(request, decode_items)
        return _json({"stored": await store.put(items)})

    async def remove(request: web.Request) -> web.Response:
        keys = await read(request, decode_keys)
        return _json({"removed": await store.remove(keys)})

    async def clear(_: web.Request) -> web.Response:
        return _json({"removed": await store.clear()})

    async def stats(_: web.Request) -> web.Response:
        return _json(dataclasses.asdict(await store.stats()))

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    @web.middleware
    async def bad_request(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except MalformedBody as exc:
            return _json({"error": str(exc)}, status=400)

    app = web.Application(client_max_size=max_body_bytes, middlewares=[bad_request])
    app.router.add_post("/v1/blocks/exists", exists)
    app.router.add_post("/v1/blocks/get", get)
    app.router.add_post("/v1/blocks/put", put)
    app.router.add_post("/v1/blocks/remove", remove)
    app.router.add_post("/v1/blocks/clear", clear)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/health", health)
    return app


@contextlib.asynccontextmanager
async def serving(
    store: KVStore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_keys: int = MAX_KEYS,
) -> AsyncIterator[str]:
    """Serve `store` on `host:port` (0: any free port) inside the running loop; yields the base
    URL. On exit, idle connections close and in-flight requests get two seconds to finish."""
    runner = web.AppRunner(
        create_app(store, max_body_bytes=max_body_bytes, max_keys=max_keys),
        access_log=None,
        shutdown_timeout=2,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kvstore.store_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--capacity-bytes", type=int, required=True, help="memory tier bound")
    p.add_argument("--disk-dir", type=Path, default=None, help="disk tier (its files are wiped)")
    p.add_argument("--disk-capacity-bytes", type=int, default=0)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if args.capacity_bytes <= 0:
        p.error("--capacity-bytes must be positive")
    if args.disk_dir is not None and args.disk_capacity_bytes <= 0:
        p.error("--disk-dir needs a positive --disk-capacity-bytes")
    return args


async def run(args: argparse.Namespace) -> None:
    """Serve an `EmbeddedKVStore` until SIGTERM or SIGINT."""
    store = EmbeddedKVStore(
        args.capacity_bytes, disk_dir=args.disk_dir, disk_capacity_bytes=args.disk_capacity_bytes
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serving(store, args.host, args.port) as url:
            log.info("serving the KV store on %s", url)
            await stop.wait()
            log.info("stopping")
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
