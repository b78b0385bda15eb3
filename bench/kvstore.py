"""KV store throughput and prefix look-up latency, per backend, on the same blocks.

Mooncake: a real `mooncake_master` on loopback and a storage node in its own process (the wheel's
`mooncake_client`); the bench process holds two pure clients (no segment), so every byte crosses
the TCP transport as it would from another machine. `MooncakeKVStore` is measured against the raw
`mooncake.store` client doing `put_batch` / `get_batch` with the same chunking, on the same block
sizes, in interleaved rounds (the order alternates each round; a warm-up round first touches the
node's segment), and the report gives the ratio ours/raw (target ≥ 0.9). Each round uses fresh
keys (a put over an existing key is a no-op in Mooncake) and clears them afterwards, untimed.

The embedded store (`kvstore.embedded_store`) runs the same rounds when the module exists. Prefix
look-up latency: `prefix_blocks` over a stored 512-block chain (p50/p99 µs) for each backend
(target ≤ 1 ms p50 for the embedded store). Values are `encode_block` blocks of `--value-bytes`.

    .venv/bin/python bench/kvstore.py --out bench/results/kvstore.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.overhead.machine import describe  # noqa: E402
from kvstore import mooncake_calls as calls  # noqa: E402
from kvstore.block import HEADER_BYTES, encode_block  # noqa: E402
from kvstore.block_key import chain_blocks, chain_root  # noqa: E402
from kvstore.blocking_worker import BlockingWorker  # noqa: E402
from kvstore.errors import StoreUnavailable  # noqa: E402
from kvstore.mooncake_master import (  # noqa: E402
    MooncakeMaster,
    free_port,
    read_master_metrics,
    storage_node_command,
)
from kvstore.mooncake_store import MooncakeConfig, MooncakeKVStore  # noqa: E402
from kvstore.store import KVStore  # noqa: E402

BLOCK_TOKENS = 64
MOONCAKE_RUNNERS = ("mooncake", "mooncake_raw", "mooncake_raw_thread")
MIB = 1 << 20
Items = list[tuple[bytes, bytes]]


def chain(count: int, value_bytes: int) -> Items:
    """A fresh chain of `count` blocks of `value_bytes` each (header included)."""
    keys = chain_blocks(chain_root(os.urandom(8), "bench", "m"), range(count * 64), 64)
    payload = max(1, value_bytes - HEADER_BYTES)
    return [(key, encode_block(key, BLOCK_TOKENS, payload)) for key in keys]


class RawMooncake:
    """The wheel's client alone: `put_batch` / `get_batch` / `batch_is_exist` with the chunking
    `MooncakeKVStore` uses and no bookkeeping: the baseline. With a `worker`, each operation runs
    as one job on that thread, as any asyncio program must run a blocking client; without, the
    calls block the caller (the ceiling)."""

    def __init__(self, client: Any, config: MooncakeConfig, worker: BlockingWorker | None) -> None:
        self.client = client
        self.config = config
        self.worker = worker
        self.budget = config.buffer_bytes // 2

    def names(self, items: Items) -> tuple[list[str], list[bytes]]:
        return [f"raw/{key.hex()}" for key, _ in items], [value for _, value in items]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.worker is None:
            return fn(*args)
        return await self.worker.call(asyncio.get_running_loop().time() + 60, fn, *args)

    def put(self, names: list[str], values: list[bytes]) -> int:
        stored = 0
        sizes = [len(v) for v in values]
        for part in calls.chunks(sizes, self.config.batch_objects, self.budget):
            chunk = slice(part.start, part.stop)
            if self.client.put_batch(names[chunk], values[chunk]) == 0:
                stored += len(part)
        return stored

    def get(self, names: list[str], value_bytes: int) -> list[bytes]:
        out: list[bytes] = []
        sizes = [value_bytes] * len(names)
        for part in calls.chunks(sizes, self.config.batch_objects, self.budget):
            out.extend(self.client.get_batch(names[part.start : part.stop]))
        return out

    def prefix(self, names: list[str]) -> int:
        found = 0
        step = self.config.batch_objects
        for start in range(0, len(names), step):
            codes = self.client.batch_is_exist(names[start : start + step])
            run = next((i for i, c in enumerate(codes) if c != 1), len(codes))
            found += run
            if run < len(codes):
                break
        return found


def rate(seconds: float, blocks: int, value_bytes: int) -> dict[str, float]:
    return {"mb_per_s": blocks * value_bytes / seconds / 1e6, "blocks_per_s": blocks / seconds}


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "mb_per_s": statistics.median(s["mb_per_s"] for s in samples),
        "blocks_per_s": statistics.median(s["blocks_per_s"] for s in samples),
        "rounds_mb_per_s": [round(s["mb_per_s"], 1) for s in samples],
    }


def percentiles_us(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "samples": len(ordered),
    }


async def time_store(store: KVStore, args: argparse.Namespace) -> tuple[dict[str, float], ...]:
    """One round through a `KVStore`: (put rate, get rate)."""
    items = chain(args.blocks, args.value_bytes)
    keys = [key for key, _ in items]
    t0 = time.perf_counter()
    stored = await store.put(items)
    t1 = time.perf_counter()
    values = await store.get(keys)
    t2 = time.perf_counter()
    assert stored == len(items), f"{store.name}: stored {stored} of {len(items)}"
    assert values == [value for _, value in items], f"{store.name}: a value came back wrong"
    await store.remove(keys)
    return rate(t1 - t0, len(items), args.value_bytes), rate(t2 - t1, len(items), args.value_bytes)


async def time_raw(raw: RawMooncake, args: argparse.Namespace) -> tuple[dict[str, float], ...]:
    items = chain(args.blocks, args.value_bytes)
    names, values = raw.names(items)
    t0 = time.perf_counter()
    stored = await raw.run(raw.put, names, values)
    t1 = time.perf_counter()
    got = await raw.run(raw.get, names, args.value_bytes)
    t2 = time.perf_counter()
    assert stored == len(items) and got == values, "raw: a block was not stored or came back wrong"
    raw.client.batch_remove(names, True)
    return rate(t1 - t0, len(items), args.value_bytes), rate(t2 - t1, len(items), args.value_bytes)


async def prefix_latency(
    lookup: Callable[[], Awaitable[int]], expected: int, samples: int
) -> dict[str, float]:
    for _ in range(5):  # warm-up
        assert await lookup() == expected
    timings = []
    for _ in range(samples):
        t0 = time.perf_counter()
        found = await lookup()
        timings.append(time.perf_counter() - t0)
        assert found == expected
    return percentiles_us(timings)


@contextlib.contextmanager
def storage_node(master: MooncakeMaster, segment_bytes: int) -> Iterator[None]:
    cmd = storage_node_command(master.address, port=free_port(), segment_bytes=segment_bytes)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def wait_for_segment(master: MooncakeMaster, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while ((await read_master_metrics(master.metrics_address)) or {}).get(
        "master_total_capacity_bytes", 0
    ) <= 0:
        if time.monotonic() > deadline:
            raise StoreUnavailable("the storage node did not mount its segment")
        await asyncio.sleep(0.05)  # a poll interval, not a wait


async def bench_mooncake(args: argparse.Namespace) -> dict[str, Any]:
    master = MooncakeMaster(stderr=subprocess.DEVNULL).start()
    try:
        with storage_node(master, args.segment_mib * MIB):
            await wait_for_segment(master)
            config = MooncakeConfig(
                master=master.address,
                metrics=master.metrics_address,
                segment_bytes=0,
                buffer_bytes=args.buffer_mib * MIB,
                timeout_s=10.0,
            )
            ours = await MooncakeKVStore.open(config)
            from mooncake.store import MooncakeDistributedStore

            raw_client = MooncakeDistributedStore()
            assert calls.setup(raw_client, config) == 0, "raw client setup failed"
            worker = BlockingWorker("raw-mooncake", 4)
            runners: dict[str, Any] = {
                "mooncake": ours,
                "mooncake_raw": RawMooncake(raw_client, config, None),
                "mooncake_raw_thread": RawMooncake(raw_client, config, worker),
            }
            try:
                return await measure_mooncake(runners, args)
            finally:
                worker.shutdown()
                await ours.close()
                raw_client.close()
    finally:
        master.stop()


async def one_round(runner: Any, args: argparse.Namespace) -> tuple[dict[str, float], ...]:
    if isinstance(runner, RawMooncake):
        return await time_raw(runner, args)
    return await time_store(runner, args)


async def prefix_of(runner: Any, args: argparse.Namespace) -> dict[str, float]:
    items = chain(args.prefix_blocks, 256)
    if isinstance(runner, RawMooncake):
        names, values = runner.names(items)
        await runner.run(runner.put, names, values)
        lookup = functools.partial(runner.run, runner.prefix, names)
    else:
        await runner.put(items)
        lookup = functools.partial(runner.prefix_blocks, [key for key, _ in items])
    return await prefix_latency(lookup, len(items), args.prefix_samples)


async def measure_mooncake(runners: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds (the order turns each round), after one warm-up round each (the
    first touch of the node's segment pages)."""
    for runner in runners.values():
        await one_round(runner, args)
    puts: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    gets: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(args.rounds):
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            put, get = await one_round(runners[name], args)
            puts[name].append(put)
            gets[name].append(get)
    out: dict[str, Any] = {}
    for name, runner in runners.items():
        out[name] = {
            "skipped": None,
            "put": summary(puts[name]),
            "get": summary(gets[name]),
            "prefix_lookup": await prefix_of(runner, args),
        }
    out["mooncake"]["errors"] = (await runners["mooncake"].stats()).errors
    return out


async def bench_embedded(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from kvstore.embedded_store import EmbeddedKVStore
    except ImportError as exc:
        return {"skipped": f"kvstore.embedded_store is not importable: {exc}"}
    store = EmbeddedKVStore(capacity_bytes=4 * args.blocks * args.value_bytes + 64 * MIB)
    try:
        await time_store(store, args)  # warm-up
        rounds = [await time_store(store, args) for _ in range(args.rounds)]
        prefix_items = chain(args.prefix_blocks, 256)
        await store.put(prefix_items)
        keys = [key for key, _ in prefix_items]
        latency = await prefix_latency(
            lambda: store.prefix_blocks(keys), len(keys), args.prefix_samples
        )
    finally:
        await store.close()
    return {
        "skipped": None,
        "put": summary([put for put, _ in rounds]),
        "get": summary([get for _, get in rounds]),
        "prefix_lookup": latency,
    }


def ratios(backends: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    """Ours over each raw baseline, per operation (None where a side did not run)."""
    ours = backends.get("mooncake", {})
    out: dict[str, dict[str, float] | None] = {}
    for baseline in ("mooncake_raw", "mooncake_raw_thread"):
        raw = backends.get(baseline, {})
        if not ours or not raw or ours.get("skipped") is not None or raw.get("skipped") is not None:
            out[baseline] = None
        else:
            out[baseline] = {
                op: ours[op]["mb_per_s"] / raw[op]["mb_per_s"] for op in ("put", "get")
            }
    return out


def targets(
    backends: dict[str, Any], ratio: dict[str, dict[str, float] | None]
) -> list[dict[str, Any]]:
    embedded = backends.get("embedded", {})
    p50 = embedded.get("prefix_lookup", {}).get("p50_us")
    direct = ratio.get("mooncake_raw") or {}
    out = [
        {"name": f"mooncake_{op}_ours_over_raw", "threshold": 0.9, "value": direct.get(op),
         "passed": None if op not in direct else direct[op] >= 0.9}
        for op in ("put", "get")
    ]  # fmt: skip
    out.append(
        {"name": "embedded_prefix_p50_us", "threshold": 1000.0, "value": p50,
         "passed": None if p50 is None else p50 <= 1000.0}
    )  # fmt: skip
    return out


def mooncake_version() -> str | None:
    try:
        return importlib.metadata.version("mooncake-transfer-engine-non-cuda")
    except importlib.metadata.PackageNotFoundError:
        return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    if "mooncake" in args.backends:
        try:
            backends.update(await bench_mooncake(args))
        except StoreUnavailable as exc:
            note = {"skipped": f"Mooncake unavailable: {exc}"}
            backends.update({name: note for name in MOONCAKE_RUNNERS})
    if "embedded" in args.backends:
        backends["embedded"] = await bench_embedded(args)
    ratio = ratios(backends)
    return {
        "benchmark": "kvstore",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**describe(REPO), "mooncake_wheel": mooncake_version()},
        "config": {
            "blocks_per_round": args.blocks,
            "value_bytes": args.value_bytes,
            "rounds": args.rounds,
            "prefix_blocks": args.prefix_blocks,
            "prefix_samples": args.prefix_samples,
            "mooncake_layout": "master + storage node (mooncake_client) processes; bench "
            "clients hold no segment, so data crosses TCP on loopback",
            "mooncake_buffer_mib": args.buffer_mib,
            "mooncake_segment_mib": args.segment_mib,
            "batch_objects": MooncakeConfig().batch_objects,
        },
        "backends": backends,
        "ratio_ours_over_raw": ratio,
        "targets": targets(backends, ratio),
    }


def headline(backend: dict[str, Any]) -> dict[str, Any]:
    if backend.get("skipped") is not None:
        return backend
    return {
        "put_mb_per_s": backend["put"]["mb_per_s"],
        "get_mb_per_s": backend["get"]["mb_per_s"],
        "prefix_p50_us": backend["prefix_lookup"]["p50_us"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench/results/kvstore.json")
    p.add_argument("--blocks", type=int, default=4096, help="blocks per round and backend")
    p.add_argument("--value-bytes", type=int, default=16 << 10, help="bytes per block value")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--prefix-blocks", type=int, default=512)
    p.add_argument("--prefix-samples", type=int, default=300)
    p.add_argument("--buffer-mib", type=int, default=64, help="Mooncake clients' staging buffer")
    p.add_argument("--segment-mib", type=int, default=512, help="the storage node's segment")
    p.add_argument("--backends", default="mooncake,embedded", type=lambda s: s.split(","))
    args = p.parse_args(argv)
    if args.value_bytes <= HEADER_BYTES:
        p.error(f"--value-bytes must exceed the {HEADER_BYTES}-byte block header")
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    brief = {k: report[k] for k in ("ratio_ours_over_raw", "targets")}
    brief["backends"] = {name: headline(b) for name, b in report["backends"].items()}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
