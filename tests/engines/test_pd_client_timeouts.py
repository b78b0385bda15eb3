"""Each upstream phase's timeout fires, and says which phase it was, against real sockets:
a listener whose accept queue is full (connect), a server that never answers (first byte), one
that goes silent after its first chunk (between chunks), and failures that are not timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from engines.errors import UpstreamError, UpstreamTimeout
from engines.pd_client import UpstreamClient, UpstreamTimeouts
from tests.support.procs import free_port

TIMEOUTS = UpstreamTimeouts(connect_s=0.3, first_byte_s=0.5, between_chunks_s=0.4, control_s=0.5)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(TIMEOUTS)
    yield c
    await c.aclose()


async def _server(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def _read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    await reader.read()  # until the client gives up
    writer.close()


async def _one_chunk_then_silence(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await _read_head(reader)
    chunk = b"data: {}\n\n"
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n"
    )
    await writer.drain()
    await reader.read()
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.close()


async def test_connect_timeout_when_the_accept_queue_is_full(client: UpstreamClient) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for s in fillers:  # fill the queue: the kernel then drops further SYNs
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout) as caught:
            await client.open(f"http://127.0.0.1:{port}/x", b"{}")
    finally:
        for s in [*fillers, listener]:
            s.close()
    assert caught.value.phase == "connect"
    assert TIMEOUTS.connect_s <= time.monotonic() - started < TIMEOUTS.first_byte_s + 1


async def test_first_byte_timeout_when_the_worker_never_answers(client: UpstreamClient) -> None:
    server, url = await _server(_never_answer)
    started = time.monotonic()
    async with server:
        with pytest.raises(UpstreamTimeout) as caught:
            await client.open(url, b"{}")
    assert caught.value.phase == "first_byte"
    assert time.monotonic() - started >= TIMEOUTS.first_byte_s


async def test_between_chunks_timeout_after_the_first_chunk(client: UpstreamClient) -> None:
    server, url = await _server(_one_chunk_then_silence)
    async with server:
        response = await client.open(url, b"{}")
        chunks = response.chunks()
        assert await anext(chunks) == b"data: {}\n\n"
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as caught:
            await anext(chunks)
        await response.aclose()
    assert caught.value.phase == "chunk"
    assert time.monotonic() - started >= TIMEOUTS.between_chunks_s


async def test_a_slow_reader_is_not_a_silent_worker(client: UpstreamClient) -> None:
    """The between-chunks clock runs only while reading: a consumer may hold a chunk longer."""

    async def two_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd")
        await writer.drain()
        writer.close()

    server, url = await _server(two_chunks)
    async with server:
        response = await client.open(url, b"{}")
        got = []
        async for chunk in response.chunks():
            got.append(chunk)
            await asyncio.sleep(TIMEOUTS.between_chunks_s * 1.5)  # the consumer's own pace
        await response.aclose()
    assert b"".join(got) == b"abcd"


async def test_refused_and_reset_are_errors_not_timeouts(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamError) as refused:
        await client.open(f"http://127.0.0.1:{free_port()}/x", b"{}")
    assert not isinstance(refused.value, UpstreamTimeout) and refused.value.phase == "connect"
    server, url = await _server(_hang_up)
    async with server:
        with pytest.raises(UpstreamError) as reset:
            await client.open(url, b"{}")
    assert not isinstance(reset.value, UpstreamTimeout) and reset.value.phase == "head"


async def test_a_connection_the_worker_closed_is_resent_on_another(
    client: UpstreamClient,
) -> None:
    """A worker whose keep-alive ran out closes the connection just as the gateway sends on it:
    that request never ran, so it goes again on a fresh connection instead of failing."""
    connections: list[int] = []
    answered = 0

    async def closes_on_reuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        connections.append(1)
        served = 0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if served:  # a reused connection: close it unanswered
                    break
                served += 1
                answered += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()

    server, url = await _server(closes_on_reuse)
    async with server:
        for _ in range(3):
            response = await client.open(url, b"{}")
            assert response.status == 200 and await response.read() == b"{}"
            await response.aclose()
    assert answered == 3 and len(connections) >= 3


def test_idle_connections_are_dropped_before_the_workers_drop_them() -> None:
    """Reusing a connection the worker already closed fails the request with a reset; SGLang and
    our simulated workers serve with uvicorn's keep-alive default."""
    import inspect

    import uvicorn

    from engines.pd_client import KEEPALIVE_S

    default = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    assert default > KEEPALIVE_S
