"""Real processes on free loopback ports, waited on by readiness, never by sleeps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from gateway.launcher import free_port, stop_processes

__all__ = ["REPO", "dualpath", "free_port", "running", "stop", "wait_http_ok"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_http_ok(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    """Poll `url` until it answers 2xx; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            r = httpx.get(url, timeout=1.0)
            if r.is_success:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)  # a poll interval, not a wait for an event we could observe
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last!r})")


@contextlib.contextmanager
def running(
    cmd: Sequence[str],
    ready_url: str | None = None,
    *,
    timeout: float = 30,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd`, wait until `ready_url` answers 2xx, and stop it (SIGTERM, then SIGKILL).
    Its output goes to `log` (a temporary file if None); a failed start quotes its tail."""
    out = open(log, "w+b") if log else tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(
        list(cmd),
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
    )
    try:
        if ready_url:
            try:
                wait_http_ok(ready_url, proc, timeout)
            except (RuntimeError, TimeoutError) as exc:
                out.seek(0)
                tail = out.read()[-4000:].decode(errors="replace")
                raise type(exc)(f"{exc}; its output ends:\n{tail}") from None
        yield proc
    finally:
        stop(proc)
        out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    stop_processes([proc], timeout)
    return proc.returncode


def dualpath(*args: str) -> list[str]:
    """The `dualpath` console command of the running interpreter's environment."""
    return [str(BIN / "dualpath"), *args]
