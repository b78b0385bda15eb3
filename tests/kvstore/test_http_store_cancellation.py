"""Callers that give up (a probe deadline, an aborted request) must not break the store client.

httpcore 1.0.9 leaks a connection-pool slot when a request is cancelled at the wrong moment
(encode/httpcore#1093); before `HTTPKVStore` shielded its requests, ~2,000 cancelled calls left
every slot taken and each later call failed with `PoolTimeout`: the gateway's hit probe timed out
on every turn for the rest of the run. The server is a real process, so the cancellations land
while requests are really on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from kvstore.http_store import HTTPKVStore
from tests.kvstore.contract import blocks, chain
from tests.support.procs import free_port, running

CANCELLED_CALLS = 1500


async def test_cancelled_calls_leave_the_connection_pool_whole() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "kvstore.store_server", "--port", str(port),
           "--capacity-bytes", str(1 << 20)]  # fmt: skip
    with running(cmd, url + "/health"):
        store = HTTPKVStore(url, timeout_s=1.0, max_connections=4)
        try:
            keys = chain(2)
            assert await store.put(blocks(keys)) == 2
            for i in range(CANCELLED_CALLS):
                # Deadlines from 0 to 3 ms: callers leave at every stage of a request.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.0005 * (i % 7)):
                        await store.exists(keys)
            errors = (await store.stats()).errors
            async with asyncio.timeout(0.9):  # well inside the 1 s a pool wait would take
                assert await store.exists(keys) == [True, True]
            assert (await store.stats()).errors == errors
        finally:
            await store.close()
