"""The simulated workers' KV really lives in the store and travels along the read path.

Real processes: an embedded store server, one prefill and one decode worker. Requests go to both
workers as a PD router sends them, with the gateway's `dualpath` extension naming the read path.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kvstore.block_key import chain_blocks, chain_root
from tests.support.procs import free_port, running

pytestmark = pytest.mark.slow

BLOCK = 64
ROOT = chain_root(b"test", "tenant-a", "tiny")


@dataclass(frozen=True)
class Cluster:
    store: str
    prefill: str
    decode: str
    bootstrap_port: int


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    s, p, d, boot = free_port(), free_port(), free_port(), free_port()
    store = f"http://127.0.0.1:{s}"
    store_cmd = [sys.executable, "-m", "kvstore.store_server", "--port", str(s),
                 "--capacity-bytes", str(64 << 20)]  # fmt: skip

    def worker(role: str, port: int) -> list[str]:
        return [sys.executable, "-m", "engines.sim_worker", "--role", role, "--port", str(port),
                "--bootstrap-port", str(boot), "--time-scale", "0.01", "--kv-store", store,
                "--engine-model", "ds-27b", "--snic-gbps", "1", "--cnic-gbps", "10"]  # fmt: skip

    with (
        running(store_cmd, f"{store}/health"),
        running(worker("prefill", p), f"http://127.0.0.1:{p}/health"),
        running(worker("decode", d), f"http://127.0.0.1:{d}/health"),
    ):
        yield Cluster(store, f"http://127.0.0.1:{p}", f"http://127.0.0.1:{d}", boot)


async def _turn(
    c: Cluster, prompt: list[int], read_path: str, *, new_tokens: int = 100
) -> dict[str, Any]:
    """One PD /generate: the decode's answer (output ids, cached tokens)."""
    ext: dict[str, Any] = {"kv_root": ROOT.hex(), "read_path": read_path}
    if read_path == "de":
        ext["stager"] = c.decode
    body = {
        "input_ids": prompt,
        "sampling_params": {"max_new_tokens": new_tokens, "ignore_eos": True},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": c.bootstrap_port,
        "bootstrap_room": random.getrandbits(63),
        "dualpath": ext,
    }
    async with httpx.AsyncClient(timeout=30) as client:
        pre, dec = await asyncio.gather(
            client.post(c.prefill + "/generate", json=body),
            client.post(c.decode + "/generate", json=body),
        )
    assert pre.status_code == 200, pre.text
    assert dec.status_code == 200, dec.text
    out: dict[str, Any] = dec.json()
    return out


async def _kv(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        rank = (await client.get(url + "/v1/loads")).json()["loads"][0]
    out: dict[str, Any] = rank["dualpath"]
    return out


def _delta(before: dict[str, Any], after: dict[str, Any], name: str) -> float:
    return float(after["kv"][name] - before["kv"][name])


def _prompt(n: int) -> list[int]:
    rng = random.Random(n)
    return [rng.randrange(5, 5000) for _ in range(n)]


async def _two_turns(c: Cluster, read_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    first = _prompt(300 + (read_path == "de"))
    one = await _turn(c, first, read_path)
    assert one["meta_info"]["cached_tokens"] == 0
    total = first + one["output_ids"]
    two = await _turn(c, total + _prompt(50)[:50], read_path)
    return one, two


async def test_pe_path_reads_through_the_prefill_only(cluster: Cluster) -> None:
    p0, d0 = await _kv(cluster.prefill), await _kv(cluster.decode)
    _, two = await _two_turns(cluster, "pe")
    # Turn 1 left 300 prompt + 100 output tokens: six full blocks, written by both halves.
    assert two["meta_info"]["cached_tokens"] == 400 // BLOCK * BLOCK
    p1, d1 = await _kv(cluster.prefill), await _kv(cluster.decode)
    assert _delta(p0, p1, "storage_read_blocks") == 6
    assert _delta(d0, d1, "storage_read_blocks") == 0
    assert d1["snic_moved_bytes"] == d0["snic_moved_bytes"]  # the decode's storage link idle
    assert p1["snic_moved_bytes"] > p0["snic_moved_bytes"]
    # The prefill wrote the prompt's blocks, the decode those it completed while generating.
    assert _delta(p0, p1, "written_blocks") == 4 + 1  # 300 // 64, then 400 + 50 // 64 - 6
    assert _delta(d0, d1, "written_blocks") == 2 + 1  # blocks 5-6 of turn 1, 8 of turn 2


async def test_de_path_moves_the_bytes_decode_to_prefill(cluster: Cluster) -> None:
    p0, d0 = await _kv(cluster.prefill), await _kv(cluster.decode)
    _, two = await _two_turns(cluster, "de")
    assert two["meta_info"]["cached_tokens"] == 401 // BLOCK * BLOCK
    p1, d1 = await _kv(cluster.prefill), await _kv(cluster.decode)
    assert _delta(d0, d1, "storage_read_blocks") == 6
    assert _delta(d0, d1, "staged_blocks") == 6
    assert _delta(p0, p1, "received_blocks") == 6
    assert _delta(p0, p1, "received_bytes") == _delta(d0, d1, "storage_read_bytes") > 0
    assert _delta(p0, p1, "storage_read_blocks") == 0
    assert p1["snic_moved_bytes"] == p0["snic_moved_bytes"]  # the prefill's storage link idle


async def test_flushed_store_means_no_hits_and_recompute_is_counted(cluster: Cluster) -> None:
    prompt = _prompt(200)
    one = await _turn(cluster, prompt, "pe")
    async with httpx.AsyncClient(timeout=10) as client:
        (await client.post(cluster.store + "/v1/blocks/clear")).raise_for_status()
    p0 = await _kv(cluster.prefill)
    body_prompt = prompt + one["output_ids"] + _prompt(10)[:10]
    two = await _turn(cluster, body_prompt, "pe")
    assert two["meta_info"]["cached_tokens"] == 0
    three = await _turn(cluster, body_prompt, "pe")
    assert three["meta_info"]["cached_tokens"] == (len(body_prompt) - 1) // BLOCK * BLOCK
    assert (await _kv(cluster.prefill))["kv"]["lost_blocks"] == p0["kv"]["lost_blocks"]


async def test_a_corrupt_block_is_caught_and_recomputed(cluster: Cluster) -> None:
    from kvstore.block import encode_block
    from kvstore.http_store import HTTPKVStore

    prompt = _prompt(330)
    await _turn(cluster, prompt, "pe", new_tokens=1)
    keys = chain_blocks(ROOT, prompt, BLOCK)
    store = HTTPKVStore(cluster.store)
    try:
        # Block 2 now holds block 3's value: intact bytes, wrong block.
        await store.remove([keys[2]])
        assert await store.put([(keys[2], encode_block(keys[3], BLOCK, 600))]) == 1
    finally:
        await store.close()
    p0 = await _kv(cluster.prefill)
    again = await _turn(cluster, prompt, "pe", new_tokens=1)
    assert again["meta_info"]["cached_tokens"] == 2 * BLOCK
    p1 = await _kv(cluster.prefill)
    assert _delta(p0, p1, "corrupt_blocks") == 1
    # The bad block was removed and rewritten: the next read is whole again.
    third = await _turn(cluster, prompt, "pe", new_tokens=1)
    assert third["meta_info"]["cached_tokens"] == 5 * BLOCK


async def test_a_worker_started_before_its_mooncake_master_serves_then_hits() -> None:
    pytest.importorskip("mooncake.store", reason="no mooncake wheel for this platform")
    from kvstore.mooncake_master import MooncakeMaster

    master = MooncakeMaster()  # its port is chosen, nothing listens on it yet
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "engines.sim_worker", "--role", "null", "--port", str(port),
           "--time-scale", "0", "--kv-store", f"mooncake://{master.address}"]  # fmt: skip
    prompt = _prompt(200)
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 1},
            "dualpath": {"kv_root": ROOT.hex()}}  # fmt: skip
    with running(cmd, url + "/health", timeout=30):
        async with httpx.AsyncClient(timeout=30) as client:
            first = (await client.post(url + "/generate", json=body)).json()
            assert first["meta_info"]["cached_tokens"] == 0
            master.start()
            try:
                deadline = asyncio.get_running_loop().time() + 30
                cached = 0
                while cached == 0:  # reconnects within a second or two, then writes, then hits
                    assert asyncio.get_running_loop().time() < deadline, "never reconnected"
                    r = await client.post(url + "/generate", json=body)
                    cached = r.json()["meta_info"]["cached_tokens"]
                    await asyncio.sleep(0.05)  # a poll interval
                assert cached == 3 * BLOCK
            finally:
                master.stop()
