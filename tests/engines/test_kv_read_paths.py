"""The simulated workers' KV really lives in the store and travels along the read path.

Real processes: an embedded store server, one prefill and one decode worker. Requests go to both
workers as a PD router sends them, with the gateway's `dualpath` extension naming the read path
(`pe`, `de`, or `split`: some hit blocks through each side's storage NIC, at once).
"""

from __future__ import annotations

import asyncio
import json
import math
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
    c: Cluster,
    prompt: list[int],
    read_path: str,
    *,
    new_tokens: int = 100,
    pe_share: float | None = None,
    expected_hit_tokens: int | None = None,
    stager: str | None = None,
) -> dict[str, Any]:
    """One PD /generate: the decode's answer (output ids, cached tokens)."""
    ext: dict[str, Any] = {"kv_root": ROOT.hex(), "read_path": read_path}
    if read_path in ("de", "split"):
        ext["stager"] = stager or c.decode
    if pe_share is not None:
        ext["pe_share"] = pe_share
    if expected_hit_tokens is not None:
        ext["expected_hit_tokens"] = expected_hit_tokens
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


SPLIT_HITS = 6
"""Blocks stored for a split test's second turn: turn 1 leaves 3xx prompt + 100 output tokens."""


@dataclass(frozen=True)
class Measured:
    """A split request's second turn and both workers' `dualpath` loads around it."""

    answer: dict[str, Any]
    prompt_tokens: int
    p0: dict[str, Any]
    p1: dict[str, Any]
    d0: dict[str, Any]
    d1: dict[str, Any]

    def prefill(self, name: str) -> float:
        return _delta(self.p0, self.p1, name)

    def decode(self, name: str) -> float:
        return _delta(self.d0, self.d1, name)

    def moved(self, side: str, link: str) -> float:
        """Modelled bytes one side's (`p`, `d`) link (`snic`, `cnic`) moved."""
        before, after = (self.p0, self.p1) if side == "p" else (self.d0, self.d1)
        return float(after[f"{link}_moved_bytes"] - before[f"{link}_moved_bytes"])


async def _split_second_turn(
    c: Cluster, seed: int, pe_share: float, stager: str | None = None
) -> Measured:
    """Turn 1 through `pe` stores six blocks; turn 2 appends 50 tokens and loads them `split`,
    with the hit the gateway would expect (so the cut is of six blocks, not of all seven keys)."""
    assert (seed + 100) // BLOCK == SPLIT_HITS  # each test its own seed, so its own blocks
    first = _prompt(seed)
    one = await _turn(c, first, "pe")
    prompt = first + one["output_ids"] + _prompt(50)[:50]
    p0, d0 = await _kv(c.prefill), await _kv(c.decode)
    two = await _turn(
        c,
        prompt,
        "split",
        pe_share=pe_share,
        expected_hit_tokens=SPLIT_HITS * BLOCK,
        stager=stager,
    )
    p1, d1 = await _kv(c.prefill), await _kv(c.decode)
    return Measured(two, len(prompt), p0, p1, d0, d1)


async def _kv_bytes_per_token(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        info = (await client.get(url + "/server_info")).json()["dualpath_kv"]
    assert "split" in info["read_paths"]
    return float(info["kv_bytes_per_token"])


@pytest.mark.parametrize(
    ("seed", "pe_share", "cut"),
    [(310, 0.5, 3), (311, 0.2, 1), (312, 0.0, 0), (313, 1.0, SPLIT_HITS)],
)
async def test_split_path_reads_through_both_storage_nics(
    cluster: Cluster, seed: int, pe_share: float, cut: int
) -> None:
    m = await _split_second_turn(cluster, seed, pe_share)
    assert m.answer["meta_info"]["cached_tokens"] == SPLIT_HITS * BLOCK  # the whole hit
    de_part = SPLIT_HITS - cut
    assert m.prefill("storage_read_blocks") == cut
    assert m.decode("storage_read_blocks") == de_part
    assert m.decode("staged_blocks") == de_part
    assert m.prefill("received_blocks") == de_part
    assert m.prefill("stage_failures") == 0
    assert m.prefill("recomputed_tokens") == 0
    # Each side's storage link moved its own part; the decode keeps its part, so the prefill's
    # handoff over the compute network carries everything else.
    per_token = await _kv_bytes_per_token(cluster.decode)
    assert m.moved("p", "snic") == pytest.approx(cut * BLOCK * per_token)
    assert m.moved("d", "snic") == pytest.approx(de_part * BLOCK * per_token)
    assert m.moved("p", "cnic") == pytest.approx(de_part * BLOCK * per_token)
    handoff = (m.prompt_tokens - de_part * BLOCK) * per_token
    assert m.moved("d", "cnic") == pytest.approx(handoff)


@pytest.mark.parametrize("stager", ["down", "not a stager"])
async def test_split_path_recomputes_a_staged_part_that_never_arrives(
    cluster: Cluster, stager: str
) -> None:
    # Nothing listens on a fresh free port; the store server answers 404 to the stage route.
    url = f"http://127.0.0.1:{free_port()}" if stager == "down" else cluster.store
    m = await _split_second_turn(cluster, 320 + (stager == "down"), 0.5, stager=url)
    cut = 3
    assert m.answer["meta_info"]["cached_tokens"] == cut * BLOCK  # still a success
    assert m.prefill("storage_read_blocks") == cut
    assert m.prefill("stage_failures") == 1
    assert m.prefill("received_blocks") == 0
    assert m.prefill("recomputed_tokens") == (SPLIT_HITS - cut) * BLOCK
    assert m.decode("staged_blocks") == SPLIT_HITS - cut  # staged for a prefill that never came


@pytest.mark.parametrize(("corrupt", "cached_blocks"), [(1, 1), (3, 3)])
async def test_split_path_drops_a_corrupt_block_on_either_side(
    cluster: Cluster, corrupt: int, cached_blocks: int
) -> None:
    from kvstore.block import encode_block
    from kvstore.http_store import HTTPKVStore

    prompt = _prompt(332 + corrupt)
    await _turn(cluster, prompt, "pe", new_tokens=1)  # five stored blocks; cut 2 of 5 at 0.4
    keys = chain_blocks(ROOT, prompt, BLOCK)
    store = HTTPKVStore(cluster.store)
    try:
        await store.remove([keys[corrupt]])
        assert await store.put([(keys[corrupt], encode_block(keys[4], BLOCK, 600))]) == 1
    finally:
        await store.close()
    p0, d0 = await _kv(cluster.prefill), await _kv(cluster.decode)
    again = await _turn(cluster, prompt, "split", new_tokens=1, pe_share=0.4)
    # Block 1 is the prefill's: the staged blocks 2-4 would leave a gap, so they do not count.
    # Block 3 is the decode's: it stages block 2 only.
    assert again["meta_info"]["cached_tokens"] == cached_blocks * BLOCK
    p1, d1 = await _kv(cluster.prefill), await _kv(cluster.decode)
    reader = (p0, p1) if corrupt < 2 else (d0, d1)
    assert _delta(*reader, "corrupt_blocks") == 1


def _split_body(c: Cluster, **ext: Any) -> dict[str, Any]:
    """A PD /generate body on read path `split` with the extension fields given (the tests of
    bad ones: nothing runs, so any room will do)."""
    return {
        "input_ids": _prompt(100),
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": c.bootstrap_port,
        "bootstrap_room": random.getrandbits(63),
        "dualpath": {"kv_root": ROOT.hex(), "read_path": "split", **ext},
    }


@pytest.mark.parametrize("share", [None, -0.1, 1.01, True, "0.5", [0.5], "absent"])
async def test_split_path_needs_a_pe_share_in_the_unit_interval(
    cluster: Cluster, share: object
) -> None:
    body = _split_body(cluster, stager=cluster.decode)
    if share != "absent":
        body["dualpath"]["pe_share"] = share
    async with httpx.AsyncClient(timeout=10) as client:
        for url in (cluster.prefill, cluster.decode):
            r = await client.post(url + "/generate", json=body)
            assert r.status_code == 400, r.text
            assert "pe_share" in r.json()["error"]["message"]


async def test_split_path_pe_share_nan_is_a_400(cluster: Cluster) -> None:
    body = _split_body(cluster, stager=cluster.decode, pe_share=math.nan)
    # NaN is no JSON number: the worker refuses the body before it reaches the range check.
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(cluster.prefill + "/generate", content=json.dumps(body))
    assert r.status_code == 400, r.text


async def test_split_path_needs_a_stager(cluster: Cluster) -> None:
    body = _split_body(cluster, pe_share=0.5)
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(cluster.prefill + "/generate", json=body)
    assert r.status_code == 400, r.text
    assert "stager" in r.json()["error"]["message"]


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
