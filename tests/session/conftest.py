"""One redis-server for the whole session; each test starts from an empty database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from gateway import embedded_redis as servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    with servers.redis_server() as server:
        yield server


@pytest.fixture
async def redis_url(redis_server: servers.RedisServer) -> AsyncIterator[str]:
    """The shared server's URL, flushed before the test."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    yield redis_server.url
