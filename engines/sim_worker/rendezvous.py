"""The PD rendezvous: a prefill publishes each room's result, its decode collects it.

In SGLang the decode learns the prefill's layout from the bootstrap server (`GET /route`) and then
receives KV pages plus aux metadata (first token, cached count) over ZMQ+RDMA. The sim keeps the
bootstrap server (aiohttp, like SGLang's) and replaces the KV channel by a long-poll on a sim-only
route, `GET /dualpath/room/{room}?timeout=s`, that answers the room's `RoomResult` once published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

import httpx
from aiohttp import web

from engines.sim_worker.errors import RendezvousError

T = TypeVar("T")

FAKE_BOOTSTRAP_HOST = "2.2.2.2"
"""SGLang's marker for a fake KV transfer (warm-up and health probes)."""


@dataclass(frozen=True, slots=True)
class RoomResult:
    room: int
    first_token_id: int
    prompt_tokens: int
    cached_tokens: int
    error: str | None = None
    """Set when the prefill failed or was aborted: the decode aborts too."""


class RoomBoard(Generic[T]):
    """Values by room, kept `ttl_s` for one peer to collect, at most `max_rooms` of them and at
    most `max_bytes` by `weigh` (oldest dropped first).

    The prefill publishes each room's `RoomResult` for its decode; a decode that read KV for the
    prefill (read path `de`) publishes the staged blocks for its prefill.
    """

    def __init__(
        self,
        ttl_s: float,
        max_rooms: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        weigh: Callable[[T], int] = lambda _: 0,
        max_bytes: int = 0,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_rooms = max_rooms
        self._clock = clock
        self._weigh = weigh
        self._max_bytes = max_bytes
        self._bytes = 0
        self._results: OrderedDict[int, tuple[T, float]] = OrderedDict()
        self._waiters: dict[int, list[asyncio.Future[T]]] = {}

    def __len__(self) -> int:
        return len(self._results)

    def publish(self, room: int, value: T) -> None:
        waiters = self._waiters.pop(room, [])
        live = [w for w in waiters if not w.done()]
        if live:
            live[0].set_result(value)  # one peer per room; later pollers would be duplicates
            return
        now = self._clock()
        self._drop(room)
        self._results[room] = (value, now + self._ttl_s)
        self._bytes += self._weigh(value)
        while self._results:
            oldest, (_, expires) = next(iter(self._results.items()))
            over = len(self._results) > self._max_rooms or (
                self._max_bytes and self._bytes > self._max_bytes
            )
            if expires > now and not over:
                break
            self._drop(oldest)

    def _drop(self, room: int) -> tuple[T, float] | None:
        kept = self._results.pop(room, None)
        if kept is not None:
            self._bytes -= self._weigh(kept[0])
        return kept

    async def collect(self, room: int, timeout_s: float) -> T | None:
        """The room's value, waiting up to `timeout_s` for it to be published; None on timeout."""
        kept = self._drop(room)
        if kept is not None and kept[1] > self._clock():
            return kept[0]
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(room, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(room)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[room]


def bootstrap_app(
    board: RoomBoard[RoomResult], *, host: str, port: int, page_size: int
) -> web.Application:
    """SGLang's bootstrap routes (health, layout) plus the sim's room long-poll."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def get_route(request: web.Request) -> web.Response:
        ranks = [request.query.get(k, "-1") for k in ("prefill_dp_rank", "target_tp_rank")]
        if all(r == "-1" for r in ranks):
            return web.json_response(
                {
                    "attn_tp_size": 1,
                    "attn_cp_size": 1,
                    "dp_size": 1,
                    "pp_size": 1,
                    "page_size": page_size,
                    "kv_cache_dtype": "auto",
                    "follow_bootstrap_room": True,
                    "load_balance_method": "follow_bootstrap_room",
                }
            )
        return web.json_response({"rank_ip": host, "rank_port": port + 1})

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def query_dp_ranks(request: web.Request) -> web.Response:
        rooms = (await request.json()).get("bootstrap_rooms") or []
        return web.json_response({str(r): 0 for r in rooms})

    async def room(request: web.Request) -> web.Response:
        try:
            room_id = int(request.match_info["room"])
            timeout = float(request.query.get("timeout", "0"))
        except ValueError:
            return web.json_response({"error": "room and timeout must be numbers"}, status=400)
        result = await board.collect(room_id, max(timeout, 0.0))
        if result is None:
            return web.json_response({"error": f"room {room_id} not published"}, status=404)
        return web.json_response(asdict(result))

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/route", get_route)
    app.router.add_put("/route", ok)
    app.router.add_post("/register_dp_rank", ok)
    app.router.add_post("/query_dp_ranks", query_dp_ranks)
    app.router.add_get("/dualpath/room/{room}", room)
    return app


class BootstrapServer:
    """The prefill's bootstrap HTTP server, run in the worker's own event loop."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port

    async def start(self) -> None:
        await self._runner.setup()
        # Pending long-polls are cut at shutdown instead of holding it up for a minute.
        await web.TCPSite(self._runner, self._host, self._port, shutdown_timeout=0.5).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


class RoomClient:
    """Decode side: waits for its prefill's room result on the prefill's bootstrap server."""

    def __init__(self, client: httpx.AsyncClient, retry_interval_s: float = 0.1) -> None:
        self._client = client
        self._retry_interval_s = retry_interval_s

    async def collect(self, host: str, port: int, room: int, timeout_s: float) -> RoomResult:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        url = f"http://{host}:{port}/dualpath/room/{room}"
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r = await self._client.get(
                    url, params={"timeout": f"{left:.3f}"}, timeout=httpx.Timeout(left + 5.0)
                )
            except httpx.TransportError:
                # The prefill (or its bootstrap server) is not up yet: SGLang's decode keeps
                # retrying the bootstrap until its waiting timeout, so do we.
                await asyncio.sleep(min(self._retry_interval_s, max(left, 0)))
                continue
            if r.status_code == 404:
                break
            if r.status_code != 200:
                raise RendezvousError(f"bootstrap server {host}:{port} answered {r.status_code}")
            result = RoomResult(**r.json())
            if result.error:
                raise RendezvousError(f"prefill failed for room {room}: {result.error}")
            return result
        raise RendezvousError(
            f"timed out after {timeout_s:g}s waiting for the prefill of bootstrap_room {room} "
            f"at {host}:{port} (SGLANG_DISAGGREGATION_WAITING_TIMEOUT)"
        )
