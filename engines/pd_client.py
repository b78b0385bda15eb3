"""The upstream HTTP client: how the gateway talks to SGLang workers.

httpx's API over aiohttp's connection pool (`httpx-aiohttp`), because httpx's own pool collapses
under hundreds of concurrent streams (see shared/reference/router-bench.md). Every call has a
timeout: connect, first byte and between chunks for inference streams; one control timeout for
health, discovery and aborts. httpx errors are translated into `engines.errors` here and nowhere
else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from engines.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Per-phase upstream timeouts, in seconds."""

    connect_s: float = 5.0
    """TCP connect to a worker."""
    first_byte_s: float = 300.0
    """From sending a request to the worker's response head (covers queueing and prefill)."""
    between_chunks_s: float = 60.0
    """Longest silence allowed between two chunks of a response body."""
    control_s: float = 5.0
    """Health checks, discovery, `/abort_request` and other control calls."""


class UpstreamResponse:
    """An open response from a worker: status, headers and a body read with timeouts."""

    __slots__ = ("_between_s", "_response", "url")

    def __init__(self, response: httpx.Response, url: str, between_s: float) -> None:
        self._response = response
        self._between_s = between_s
        self.url = url

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a silence longer than `between_chunks_s` raises."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(loop.time() + self._between_s) as watchdog:
                async for chunk in self._response.aiter_raw():
                    watchdog.reschedule(loop.time() + self._between_s)
                    yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no data from {self.url} for {self._between_s}s", worker=self.url, phase="chunk"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"{self.url} broke off the response: {exc!r}", worker=self.url, phase="chunk"
            ) from exc

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        with contextlib.suppress(httpx.HTTPError, OSError):
            await self._response.aclose()


class UpstreamClient:
    """A pooled client for inference and control calls to workers."""

    def __init__(self, timeouts: UpstreamTimeouts, max_connections: int = 1024) -> None:
        self.timeouts = timeouts
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        self._client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False), trust_env=False
        )
        # The read timeout bounds the wait for the response head; the body has its own watchdog.
        self._stream_timeout = httpx.Timeout(
            connect=timeouts.connect_s,
            read=timeouts.first_byte_s,
            write=timeouts.connect_s,
            pool=timeouts.connect_s,
        )
        self._control_timeout = httpx.Timeout(timeouts.control_s, connect=timeouts.connect_s)

    async def open(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """POST `body` (JSON) to `url` and return once the response head has arrived."""
        request = self._client.build_request(
            "POST",
            url,
            content=body,
            headers={"content-type": "application/json", **(headers or {})},
            timeout=self._stream_timeout,
        )
        try:
            async with asyncio.timeout(self.timeouts.first_byte_s):
                response = await self._client.send(request, stream=True)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise UpstreamTimeout(
                f"no response head from {url} in time: {exc!r}", worker=url, phase="first_byte"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"cannot reach {url}: {exc!r}", worker=url, phase="connect"
            ) from exc
        return UpstreamResponse(response, url, self.timeouts.between_chunks_s)

    async def request_json(
        self, method: str, url: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """A control call: JSON in, JSON out (None for an empty body); non-2xx raises."""
        timeout = self._control_timeout if timeout_s is None else httpx.Timeout(timeout_s)
        content = None if payload is None else orjson.dumps(payload)
        try:
            response = await self._client.request(
                method,
                url,
                content=content,
                headers={"content-type": "application/json"} if content else None,
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{method} {url} timed out", worker=url, phase="control") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{method} {url} failed: {exc!r}", worker=url) from exc
        if not response.is_success:
            raise UpstreamStatusError(
                f"{method} {url} answered {response.status_code}",
                status=response.status_code,
                body=response.content,
                worker=url,
            )
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None

    async def aclose(self) -> None:
        await self._client.aclose()
