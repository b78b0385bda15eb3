"""A private `mooncake_master` on loopback, for `dualpath up`, the tests and the benches.

The binary comes from the `mooncake-transfer-engine-non-cuda` wheel: its `mooncake_master` console
script (next to `sys.executable` in a venv, else on PATH) `execv`s the real ELF, so the PID we hold
is the master's own and a signal to it stops the master, not a wrapper (the notes' §7 caveat is
about `transfer_engine_bench`, whose wrapper does not `execv`).

What it runs, and why (see `reference/mooncake-notes.md`):

- RPC on 127.0.0.1 only; the embedded HTTP metadata server stays OFF, because it binds 0.0.0.0
  whatever its host flag says (§7). Clients use `metadata_server="P2PHANDSHAKE"`, which needs no
  metadata server and no `MC_TCP_BIND_ADDRESS` (§3).
- Metrics/admin HTTP on 127.0.0.1 and its own free port: the default 9003 could clash, and the
  store reads capacity, usage and evictions from it (`/metrics`).
- glog to stderr at warning level: the master's INFO lines are one per request.
- Metadata lives in memory only: `stop()` (SIGKILL, like a crash) then `start()` on the same port
  is a restart that has forgotten every key (§4), which is what the failover tests need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from kvstore.errors import StoreUnavailable

__all__ = [
    "INSTALL_HINT",
    "MooncakeMaster",
    "free_port",
    "master_accepts",
    "mooncake_master",
    "mooncake_master_binary",
    "mooncake_master_command",
    "read_master_metrics",
    "require_libibverbs",
    "storage_node_command",
]

INSTALL_HINT = (
    "the Mooncake store needs `pip install 'dualpath-gateway[mooncake]'` (wheels for CPython "
    "3.11-3.13 on Linux x86_64/aarch64) and Debian's `apt-get install -y libibverbs1`"
)

_POLL_S = 0.01
"""Between connection attempts while the master starts (a poll interval, not a wait)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now. kvstore imports nothing of ours, so this repeats
    `gateway.launcher.free_port`; the two could move to one shared helper later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_libibverbs() -> None:
    """The wheel's extension modules and binaries link `libibverbs.so.1` even for TCP (§1):
    without it `import mooncake.store` fails and the master exits at once."""
    try:
        ctypes.CDLL("libibverbs.so.1")
    except OSError as exc:
        raise StoreUnavailable(f"libibverbs.so.1 is missing: {INSTALL_HINT}") from exc


def _console_script(name: str) -> str:
    """The wheel's console script in this interpreter's environment first, then PATH's."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StoreUnavailable(f"no {name} found: {INSTALL_HINT}")
    return found


def mooncake_master_binary() -> str:
    return _console_script("mooncake_master")


def mooncake_master_command(
    port: int,
    *,
    metrics_port: int,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """A command line for a loopback-only master in the foreground (see the module docstring).

    `extra_args` are further `--flag=value`s, e.g. `--client_ttl=2` for tests that wait for the
    master to drop a dead storage node.
    """
    return [
        mooncake_master_binary(),
        f"--rpc_address={host}",
        f"--rpc_port={port}",
        "--enable_http_metadata_server=false",
        f"--metrics_host={host}",
        f"--metrics_port={metrics_port}",
        "--logtostderr=true",
        "--minloglevel=1",
        *extra_args,
    ]


def storage_node_command(master: str, *, port: int, segment_bytes: int) -> list[str]:
    """A storage node in its own process: the wheel's standalone `mooncake_client` (an `execv`
    wrapper too) contributing `segment_bytes` to the pool of `master` (host:port), so readers in
    other processes fetch over the TCP transport, as from another machine. `port` is its own
    service port (loopback)."""
    return [
        _console_script("mooncake_client"),
        "--host=127.0.0.1",
        f"--port={port}",
        f"--global_segment_size={segment_bytes}",
        "--protocol=tcp",
        "--metadata_server=P2PHANDSHAKE",
        f"--master_server_address={master}",
        "--logtostderr=true",
        "--minloglevel=1",
    ]


def master_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Readiness: the RPC port accepts TCP connections (it opens in ~0.1 s without the HTTP
    metadata server, §7)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MooncakeMaster:
    """One private master; `stop()` kills it like a crash, `start()` brings it back on the same
    ports with no keys (metadata is in memory only)."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        metrics_port: int | None = None,
        extra_args: Sequence[str] = (),
        stderr: IO[bytes] | int | None = None,
    ) -> None:
        """`stderr`: where the master's warnings go; None inherits ours (pytest shows them with
        a failing test), `subprocess.DEVNULL` drops them."""
        self.host = host
        self.port = port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.extra_args = tuple(extra_args)
        self.stderr = stderr
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """What clients pass as `master_server_addr`."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_address(self) -> str:
        """host:port of the metrics/admin HTTP server (`GET /metrics`)."""
        return f"{self.host}:{self.metrics_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> MooncakeMaster:
        if self.running:
            return self
        require_libibverbs()
        command = mooncake_master_command(
            self.port, metrics_port=self.metrics_port, host=self.host, extra_args=self.extra_args
        )
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not master_accepts(self.host, self.port, timeout=0.2):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise StoreUnavailable(
                    f"mooncake_master on port {self.port} exited with {code} "
                    f"(a port in use, or a broken install: {INSTALL_HINT})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise StoreUnavailable(
                    f"mooncake_master on port {self.port} not ready in {timeout}s"
                )
            time.sleep(_POLL_S)
        return self

    def stop(self) -> None:
        """SIGKILL: no goodbye to clients, as in a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def mooncake_master(
    port: int | None = None, *, extra_args: Sequence[str] = ()
) -> Iterator[MooncakeMaster]:
    master = MooncakeMaster(port, extra_args=extra_args).start()
    try:
        yield master
    finally:
        master.stop()


async def read_master_metrics(address: str, wait_s: float = 0.5) -> dict[str, float] | None:
    """The master's unlabelled Prometheus gauges and counters (`master_key_count`,
    `master_total_capacity_bytes`, `master_allocated_bytes`, `master_evicted_key_count`, ...), or
    None if the metrics server does not answer in time.

    One HTTP/1.1 request read by its Content-Length (the server keeps the connection open even
    for HTTP/1.0), and we close first, so the TIME_WAIT stays on our side of the connection.
    """
    host, _, port = address.rpartition(":")
    request = f"GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(wait_s):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(request.encode())
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                if not head.startswith("http/1.1 200"):
                    return None
                length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
                body = (await reader.readexactly(length)).decode()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        return None
    values: dict[str, float] = {}
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name and not name.startswith("#") and "{" not in name:
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values
