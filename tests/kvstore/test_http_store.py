"""The store server and its client beyond the contract: the wire format, bad bodies, a server that
stops, hangs or answers nonsense, and the `python -m kvstore.store_server` entry point."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from kvstore.embedded_store import EmbeddedKVStore
from kvstore.http_store import HTTPKVStore
from kvstore.store_server import serving
from kvstore.wire import (
    MalformedBody,
    decode_items,
    decode_keys,
    decode_values,
    encode_items,
    encode_values,
)
from tests.kvstore.contract import BLOCK_BYTES, blocks, chain
from tests.support.procs import free_port, running


def test_the_wire_format_round_trips() -> None:
    keys = chain(3)
    items = [(keys[0], b""), (keys[1], b"x" * 70000), (keys[2], b"abc")]
    assert decode_items(encode_items(items)) == items
    values = [b"abc", None, b"", b"z" * 5]
    assert decode_values(encode_values(values), 4) == values
    assert decode_keys(b"".join(keys)) == keys


@pytest.mark.parametrize(
    ("decode", "body"),
    [
        (decode_keys, b"x" * 17),
        (decode_items, b"k" * 16 + b"\x05\x00"),
        (decode_items, b"k" * 16 + b"\x05\x00\x00\x00abc"),
        (lambda b: decode_values(b, 2), b"\x01\x00\x00\x00a"),
        (lambda b: decode_values(b, 1), b"\x01\x00\x00\x00ab"),
        (lambda b: decode_values(b, 1), b"\x05\x00\x00\x00ab"),
    ],
)
def test_malformed_bodies_are_refused(decode: object, body: bytes) -> None:
    with pytest.raises(MalformedBody):
        decode(body)  # type: ignore[operator]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A store server with small bounds: 4 keys and 4 KiB per request."""
    store = EmbeddedKVStore(1 << 20)
    async with serving(store, max_keys=4, max_body_bytes=4096) as url:
        yield url
    await store.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/blocks/exists", b"x" * 17),
        ("/v1/blocks/exists?prefix=1", b"x" * 15),
        ("/v1/blocks/get", b"x" * 33),
        ("/v1/blocks/remove", b"x"),
        ("/v1/blocks/put", b"k" * 16 + b"\x09\x00\x00\x00short"),
        ("/v1/blocks/get", b"k" * 16 * 5),
    ],
)
async def test_the_server_answers_400_to_a_malformed_body(
    server: str, path: str, body: bytes
) -> None:
    async with httpx.AsyncClient(base_url=server, trust_env=False) as client:
        response = await client.post(path, content=body)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_the_server_bounds_bodies_and_serves_health_and_stats(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, trust_env=False) as client:
        assert (await client.post("/v1/blocks/put", content=b"k" * 5000)).status_code == 413
        assert (await client.get("/health")).text == "OK"
        stats = (await client.get("/v1/stats")).json()
    assert stats["backend"] == "embedded" and stats["capacity_bytes"] == 1 << 20


class Recording(httpx.AsyncBaseTransport):
    """A real transport that notes each request's path."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_client_chunks_by_keys_and_bytes(server: str) -> None:
    transport = Recording()
    store = HTTPKVStore(
        server, max_keys_per_request=3, max_body_bytes=2 * BLOCK_BYTES + 60, transport=transport
    )
    paths = transport.paths
    try:
        keys = chain(7)
        items = blocks(keys)
        assert await store.put(items) == 7  # two items a request: 4 requests under 4 KiB each
        assert await store.get(keys) == [value for _, value in items]  # 3 keys a request
        assert await store.prefix_blocks(keys) == 7
        assert (await store.stats()).errors == 0
    finally:
        await store.close()
    assert paths.count("/v1/blocks/put") == 4
    assert paths.count("/v1/blocks/get") == 3
    assert paths.count("/v1/blocks/exists") == 3


async def test_the_client_survives_a_stopped_server_and_recovers() -> None:
    port = free_port()
    store = HTTPKVStore(f"http://127.0.0.1:{port}", timeout_s=5.0)
    keys = chain(3)
    items = blocks(keys)
    try:
        assert not (await store.stats()).available  # never reached: zeros, unavailable
        async with serving(EmbeddedKVStore(1 << 20), port=port):
            assert await store.put(items) == 3
            up = await store.stats()
            assert up.available and up.backend == "http:embedded" and up.blocks == 3
        errors = (await store.stats()).errors
        assert await store.get(keys) == [None] * 3
        assert await store.exists(keys) == [False] * 3
        assert await store.prefix_blocks(keys) == 0
        assert await store.put(items) == 0
        assert await store.remove(keys) == 0
        assert await store.clear() == 0
        down = await store.stats()
        assert not down.available and down.errors == errors + 7
        assert down.blocks == 3  # the last copy seen
        async with serving(EmbeddedKVStore(1 << 20), port=port):  # a fresh one, same port
            assert await store.get(keys) == [None] * 3
            assert await store.put(items) == 3
            assert await store.get(keys) == [value for _, value in items]
            back = await store.stats()
            assert back.available and back.errors == errors + 7 and back.blocks == 3
    finally:
        await store.close()


async def test_a_hung_server_costs_one_timeout_per_call() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        calls.append(request.path)
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    store: HTTPKVStore | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        store = HTTPKVStore(f"http://{host}:{port}", timeout_s=0.2, max_keys_per_request=2)
        keys = chain(5)
        assert await store.get(keys) == [None] * 5
        assert await store.prefix_blocks(keys) == 0
        assert calls == ["/v1/blocks/get", "/v1/blocks/exists"]  # not one per chunk
        stats = await store.stats()
        assert (stats.errors, stats.available) == (3, False)
    finally:
        release.set()
        if store is not None:
            await store.close()
        await runner.cleanup()


def answering(status: int, body: bytes) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(status, content=body))


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"\x01"), (200, b"not json"), (200, b'{"stored": -1}'), (500, b"boom")],
)
async def test_nonsense_answers_are_counted_as_misses(status: int, body: bytes) -> None:
    store = HTTPKVStore("http://store.invalid", transport=answering(status, body))
    keys = chain(2)
    try:
        assert await store.get(keys) == [None, None]
        assert await store.exists(keys) == [False, False]
        assert await store.prefix_blocks(keys) == 0
        assert await store.put(blocks(keys)) == 0
        assert await store.remove(keys) == 0
        assert await store.clear() == 0
        stats = await store.stats()
        assert stats.errors == 7 and not stats.available
    finally:
        await store.close()


async def test_the_client_refuses_keys_of_another_length() -> None:
    store = HTTPKVStore("http://store.invalid", transport=answering(200, b""))
    try:
        with pytest.raises(ValueError):
            await store.exists([b"short"])
        with pytest.raises(ValueError):
            await store.put([(b"short", b"value")])
    finally:
        await store.close()


async def test_the_entry_point_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    disk = tmp_path / "disk"
    command = [
        *(sys.executable, "-m", "kvstore.store_server", "--port", str(port)),
        *("--capacity-bytes", str(2 * BLOCK_BYTES), "--disk-dir", str(disk)),
        *("--disk-capacity-bytes", str(1 << 20), "--log-level", "info"),
    ]
    log = tmp_path / "store.log"
    with running(command, f"http://127.0.0.1:{port}/health", log=log) as proc:
        store = HTTPKVStore(f"http://127.0.0.1:{port}")
        try:
            keys = chain(5)
            assert await store.put(blocks(keys)) == 5
            assert await store.prefix_blocks(keys) == 5
            assert len(list(disk.iterdir())) == 3
        finally:
            await store.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert list(disk.iterdir()) == []
    text = log.read_text()
    assert "serving the KV store" in text and "Traceback" not in text
