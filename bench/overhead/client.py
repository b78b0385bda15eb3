"""Closed-loop HTTP/1.1 keep-alive streaming client, run as its own (pinned) process.

Each of C connections loops: send one streamed chat request, read the response head, note the
time of the first SSE ``data:`` event (TTFT) and of ``data: [DONE]`` (E2E), wait for the end of
the chunked body, send the next request. Two modes:

- ``plain``: an ordinary keep-alive client (what httpx, aiohttp and the OpenAI SDK do), so the
  kernel's delayed ACK is left alone and a server that relies on Nagle shows its 40 ms stall;
- ``quickack``: ``TCP_QUICKACK`` is set after every read, which removes that stall and shows the
  server's own cost.

The client reads the CPU ticks of the system under test from ``/proc`` at the edges of its own
measurement window, so CPU and request counts cover exactly the same interval. It prints one
JSON object on stdout. It imports only the standard library, httptools and uvloop, so it starts
fast and does not depend on the package around it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - the project venv has uvloop
    uvloop = None  # type: ignore[assignment]

_DONE = b"data: [DONE]"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Stats:
    """Everything the connections record; one instance per client process."""

    samples: list[tuple[float, float, float]] = field(default_factory=list)  # start, ttft, e2e
    bad_status: int = 0
    conn_errors: int = 0
    no_done: int = 0


@dataclass(slots=True)
class Run:
    """Shared state: connections stop issuing new requests once ``sending`` is off, and
    ``idle`` is set when the last in-flight stream after that has ended."""

    sending: bool = True
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def started(self) -> None:
        self.inflight += 1

    def ended(self) -> None:
        self.inflight -= 1
        if not self.sending and self.inflight == 0:
            self.idle.set()


class StreamConn(asyncio.Protocol):
    """One keep-alive connection sending the same streamed request in a loop."""

    def __init__(self, request: bytes, quickack: bool, stats: Stats, run: Run) -> None:
        self.request = request
        self.quickack = quickack
        self.stats = stats
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = asyncio.get_running_loop().create_future()
        self.busy = False
        self._reset()

    def _reset(self) -> None:
        self.t0 = self.t_first = self.t_done = 0.0
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sock = transport.get_extra_info("socket")

    def send(self) -> None:
        self._reset()
        self.busy = True
        self.run.started()
        self.t0 = time.perf_counter()
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.quickack:
            # The ACK flag is cleared by the kernel after it fires, so it is set on every read.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # type: ignore[union-attr]
        self.now = now
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        if not self.t_first and b"data:" in body:
            self.t_first = self.now
        if not self.t_done:
            # Keep a short tail: "data: [DONE]" may straddle two reads.
            window = self.tail + body
            if _DONE in window:
                self.t_done = self.now
            self.tail = window[-len(_DONE) :]

    def on_message_complete(self) -> None:
        self.busy = False
        self.run.ended()
        status = self.parser.get_status_code()
        if status != 200:
            self.stats.bad_status += 1
        elif not self.t_done:
            self.stats.no_done += 1
        else:
            self.stats.samples.append((self.t0, self.t_first - self.t0, self.t_done - self.t0))
        if self.run.sending:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.stats.conn_errors += 1
            self.run.ended()
        if not self.closed.done():
            self.closed.set_result(None)


def proc_cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes (all their threads), in seconds; gone pids count 0."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / _CLK_TCK


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def open_conns(
    args: argparse.Namespace, request: bytes, stats: Stats, run: Run
) -> list[StreamConn]:
    loop = asyncio.get_running_loop()
    conns: list[StreamConn] = []
    # Batches keep the accept queue of a slow server from overflowing at C=512.
    for start in range(0, args.concurrency, 128):
        n = min(128, args.concurrency - start)
        made = await asyncio.gather(
            *(
                loop.create_connection(
                    lambda: StreamConn(request, args.mode == "quickack", stats, run),
                    args.host,
                    args.port,
                )
                for _ in range(n)
            )
        )
        conns += [proto for _, proto in made]
    return conns


async def measure(args: argparse.Namespace) -> dict[str, object]:
    body = args.body.encode()
    request = build_request(args.host, args.port, args.path, body)
    stats, run = Stats(), Run()
    conns = await open_conns(args, request, stats, run)
    for c in conns:
        c.send()
    await asyncio.sleep(args.warmup)  # the warmup is a span of load, not a wait for an event

    sut, workers = args.sut_pids, args.worker_pids
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wcpu0, t_start = proc_cpu_seconds(sut), proc_cpu_seconds(workers), time.perf_counter()
    await asyncio.sleep(args.duration)
    cpu1, wcpu1, t_end = proc_cpu_seconds(sut), proc_cpu_seconds(workers), time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)

    run.sending = False
    await drain(conns, run, args.grace)
    window = [s for s in stats.samples if t_start <= s[0] + s[2] <= t_end]
    elapsed = t_end - t_start
    return {
        "elapsed_s": elapsed,
        "completed": len(window),
        "completed_total": len(stats.samples),
        "bad_status": stats.bad_status,
        "conn_errors": stats.conn_errors,
        "no_done": stats.no_done,
        "ttft_s": [s[1] for s in window],
        "e2e_s": [s[2] for s in window],
        "sut_cpu_s": cpu1 - cpu0,
        "workers_cpu_s": wcpu1 - wcpu0,
        "client_cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
    }


async def drain(conns: list[StreamConn], run: Run, grace: float) -> None:
    """Let in-flight streams finish (bounded by ``grace``), then close every connection."""
    if run.inflight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.idle.wait(), grace)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.gather(*(c.closed for c in conns))


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="closed-loop streaming client (one process)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--body", required=True, help="request JSON")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--mode", choices=("plain", "quickack"), default="plain")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--grace", type=float, default=5.0, help="max seconds to drain at the end")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    p.add_argument("--sut-pids", type=_pids, default=[])
    p.add_argument("--worker-pids", type=_pids, default=[])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = uvloop.run(measure(args)) if uvloop is not None else asyncio.run(measure(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
