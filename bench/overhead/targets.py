"""The systems under test, started as real processes on free loopback ports.

- ``direct``: the client talks to the fake decode worker; the SUT is that worker.
- ``router``: the real ``sglang-router`` in PD mode in front of a fake prefill and decode.
- ``gateway``: ``dualpath serve`` in front of the same pair.

Every process is pinned to the SUT CPU before it execs (so all its threads inherit the mask) and
waited on by polling its readiness URL, never by sleeping. A target whose command is missing or
that does not become ready is skipped with a note instead of failing the whole run.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gateway.launcher import stop_processes

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
BIN = Path(sys.executable).parent
MODEL = "fake-model"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_setup(cpus: set[int] | None) -> None:
    """Runs in the child before exec: pin it, and allow the fds 512 streams x 3 sockets need."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(
    cmd: list[str], cpus: set[int] | None, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`env`: variables added to ours for the child (e.g. `OTEL_*`)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            # The parent starts no threads, so a preexec hook is safe here.
            preexec_fn=lambda: _child_setup(cpus),
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
                last = r.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.02)  # a poll interval, not a wait for something we could observe
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s (last: {last!r})")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    stop_processes([proc], timeout)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a forking server's workers count as its CPU)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return tree


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of VmHWM (peak resident set since start) over ``pids``, in MB."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


@dataclass(slots=True)
class Target:
    """A started (or skipped) system under test."""

    name: str
    port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sut: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    skipped: str | None = None

    def sut_pids(self) -> list[int]:
        return process_tree(self.sut.pid) if self.sut else []

    def worker_pids(self) -> list[int]:
        # For "direct" the decode worker is the SUT, so it is not counted twice.
        return [w.pid for w in self.workers if w is not self.sut]


@dataclass(slots=True)
class Workers:
    """The shared fake prefill + decode pair."""

    prefill: subprocess.Popen[bytes]
    decode: subprocess.Popen[bytes]
    prefill_port: int
    decode_port: int
    bootstrap_port: int


def start_workers(cpus: set[int] | None, logdir: Path, tokens: int, coalesce: bool) -> Workers:
    ports = {"prefill": free_port(), "decode": free_port()}
    boot = free_port()
    procs = {}
    for role, port in ports.items():
        cmd = [
            sys.executable,
            str(BENCH / "fake_worker.py"),
            "--role",
            role,
            "--port",
            str(port),
            "--model",
            MODEL,
            "--tokens",
            str(tokens),
            "--bootstrap-port",
            str(boot),
        ]
        if coalesce:
            cmd.append("--coalesce")
        procs[role] = spawn(cmd, cpus, logdir / f"fake-{role}.log")
    for role, port in ports.items():
        wait_ready(f"http://127.0.0.1:{port}/health", procs[role], 15)
    return Workers(procs["prefill"], procs["decode"], ports["prefill"], ports["decode"], boot)


def direct(w: Workers) -> Target:
    return Target(
        "direct", w.decode_port, sut=w.decode, workers=[w.decode], command=["(fake decode worker)"]
    )


def router(w: Workers, cpus: set[int] | None, logdir: Path, timeout: float) -> Target:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "sglang_router.launch_router",
        "--pd-disaggregation",
        "--prefill",
        f"http://127.0.0.1:{w.prefill_port}",
        str(w.bootstrap_port),
        "--decode",
        f"http://127.0.0.1:{w.decode_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warn",
        "--prometheus-port",
        str(free_port()),
    ]
    return _start("router", cmd, port, "/readiness", w, cpus, logdir, timeout)


def gateway(
    w: Workers,
    cpus: set[int] | None,
    logdir: Path,
    timeout: float,
    *,
    name: str = "gateway",
    env: dict[str, str] | None = None,
) -> Target:
    exe = BIN / "dualpath"
    if not exe.exists():
        return Target(name, skipped=f"{exe} not found (package not installed yet?)")
    probe = subprocess.run(
        [str(exe), "serve", "--help"], capture_output=True, timeout=60, cwd=REPO, check=False
    )
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).decode(errors="replace")[-400:]
        return Target(name, skipped=f"`dualpath serve --help` failed: {tail}")
    config = logdir / "cluster.yaml"
    config.write_text(
        "workers:\n"
        f'  - {{url: "http://127.0.0.1:{w.prefill_port}", role: prefill, '
        f"bootstrap_port: {w.bootstrap_port}}}\n"
        f'  - {{url: "http://127.0.0.1:{w.decode_port}", role: decode}}\n'
    )
    port = free_port()
    cmd = [str(exe), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return _start(name, cmd, port, "/ready", w, cpus, logdir, timeout, env)


def _start(
    name: str,
    cmd: list[str],
    port: int,
    ready: str,
    w: Workers,
    cpus: set[int] | None,
    logdir: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Target:
    log = logdir / f"{name}.log"
    proc = spawn(cmd, cpus, log, env)
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready}", proc, timeout)
    except (RuntimeError, TimeoutError) as exc:
        stop(proc)
        tail = log.read_text(errors="replace")[-600:]
        return Target(name, command=cmd, skipped=f"not ready: {exc}; log tail: {tail}")
    return Target(name, port, procs=[proc], sut=proc, workers=[w.prefill, w.decode], command=cmd)
