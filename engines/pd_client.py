"""The upstream HTTP client: how the gateway talks to SGLang workers.

aiohttp's client directly. httpx's own pool collapses under hundreds of concurrent streams
(shared/reference/router-bench.md), and even over its aiohttp transport (`httpx-aiohttp`) the
request and response objects httpx builds cost about a quarter of the gateway's CPU per streamed
request (py-spy, bench/gateway_overhead.py), so the hot path uses aiohttp with nothing between.
Every call has a timeout: connect, first byte and between chunks for inference streams; one control
timeout for health, discovery and aborts. aiohttp's errors are translated into `engines.errors`
here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from engines.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout

STALE_RETRIES = 2
"""Resends of a request whose connection the worker closed before answering (see `open`)."""
KEEPALIVE_S = 4.0
"""How long an idle upstream connection is kept: under uvicorn's 5 s `timeout_keep_alive`."""


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Per-phase upstream timeouts, in seconds."""

    connect_s: float = 5.0
    """TCP connect to a worker (`DUALPATH_TIMEOUTS_CONNECT_S`; the others likewise)."""
    first_byte_s: float = 300.0
    """From sending a request to the worker's response head (covers queueing and prefill)."""
    between_chunks_s: float = 60.0
    """Longest silence allowed between two chunks of a response body."""
    control_s: float = 5.0
    """Health checks, discovery, `/abort_request` and other control calls."""


class UpstreamResponse:
    """An open response from a worker: status, headers and a body read with timeouts."""

    __slots__ = ("_between_s", "_response", "url")

    def __init__(self, response: aiohttp.ClientResponse, url: str, between_s: float) -> None:
        self._response = response
        self._between_s = between_s
        self.url = url

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a silence longer than `between_chunks_s` raises.

        The watchdog is armed only while reading, not while the consumer holds a chunk: a slow
        client is not a silent worker. One watchdog for the whole body, re-armed per read, is
        cheaper than a timeout per chunk; like any `asyncio.timeout`, it cancels the task that
        first iterated the body, so the body must be read in one task (the relay's)."""
        loop = asyncio.get_running_loop()
        content = self._response.content
        try:
            async with asyncio.timeout(None) as watchdog:
                while True:
                    watchdog.reschedule(loop.time() + self._between_s)
                    chunk = await content.readany()
                    watchdog.reschedule(None)
                    if not chunk:
                        return
                    yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no data from {self.url} for {self._between_s}s", worker=self.url, phase="chunk"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"{self.url} broke off the response: {exc!r}", worker=self.url, phase="chunk"
            ) from exc

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        # Closing (not releasing) drops a half-read connection instead of reusing it.
        if not self._response.content.at_eof():
            self._response.close()
        else:
            self._response.release()


class UpstreamClient:
    """A pooled client for inference and control calls to workers.

    Construct it inside the running event loop (an app's lifespan), as aiohttp requires.
    """

    def __init__(self, timeouts: UpstreamTimeouts, max_connections: int = 1024) -> None:
        self.timeouts = timeouts
        # Idle connections are dropped before the workers drop them: SGLang (uvicorn) closes
        # an idle keep-alive connection after 5 s, and reusing one it already closed fails the
        # request with a reset (seen under load in bench/soak.py).
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        # The body has its own watchdog; sock_read would also cut a long prefill's first byte.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_s, sock_read=None
        )
        self._control_timeout = aiohttp.ClientTimeout(
            total=timeouts.control_s, sock_connect=timeouts.connect_s
        )

    async def open(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """POST `body` (JSON) to `url` and return once the response head has arrived."""
        send_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with asyncio.timeout(self.timeouts.first_byte_s):
                for tries_left in range(STALE_RETRIES, -1, -1):
                    try:
                        response = await self._session.post(
                            url, data=body, headers=send_headers, timeout=self._stream_timeout
                        )
                        break
                    except aiohttp.ClientConnectorError:
                        raise  # nothing was sent: the connect failed (handled below)
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        # A pooled connection the worker closed as we sent on it (its keep-alive
                        # ran out while our loop lagged): the request never ran; send it again
                        # on another connection. A dead worker refuses the next connect.
                        if not tries_left:
                            raise
        except aiohttp.ConnectionTimeoutError as exc:
            # Also a TimeoutError: caught first, so a connect timeout says so (nothing was sent).
            raise UpstreamTimeout(
                f"cannot connect to {url} in {self.timeouts.connect_s}s",
                worker=url,
                phase="connect",
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no response head from {url} in {self.timeouts.first_byte_s}s",
                worker=url,
                phase="first_byte",
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                f"cannot reach {url}: {exc!r}", worker=url, phase="connect"
            ) from exc
        except aiohttp.ClientError as exc:
            # Connected, then the worker went away (reset, closed) before its response head.
            raise UpstreamError(f"{url} broke off: {exc!r}", worker=url, phase="head") from exc
        return UpstreamResponse(response, url, self.timeouts.between_chunks_s)

    async def request_json(
        self, method: str, url: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """A control call: JSON in, JSON out (None for an empty body); non-2xx raises."""
        timeout = (
            self._control_timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        )
        content = None if payload is None else orjson.dumps(payload)
        headers = {"Content-Type": "application/json"} if content else None
        try:
            async with self._session.request(
                method, url, data=content, headers=headers, timeout=timeout
            ) as response:
                body = await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{method} {url} timed out", worker=url, phase="control") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{method} {url} failed: {exc!r}", worker=url) from exc
        if not 200 <= response.status < 300:
            raise UpstreamStatusError(
                f"{method} {url} answered {response.status}",
                status=response.status,
                body=body,
                worker=url,
            )
        if not body:
            return None
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(body)
        return None

    async def aclose(self) -> None:
        await self._session.close()
