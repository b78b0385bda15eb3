"""The system under soak: what `dualpath up` starts, and the processes the soak watches or kills.

Two ways to run it, with the same children and the same command lines:

- `UpCluster`: the real `dualpath up` as a subprocess; the gateway and workers are found among
  its children by their command lines. `up` stops everything when a worker dies, so it cannot
  host the kill run.
- `LauncherCluster`: `gateway.launcher.Cluster`, the very code `dualpath up` runs, driven from
  here, so one decode worker can be SIGKILLed and started again with the same port and args
  while the rest keep running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from gateway.launcher import Child, Cluster, ClusterPlan, free_port, stop_processes


@dataclass(frozen=True, slots=True)
class Proc:
    name: str
    pid: int
    url: str | None = None


class SoakCluster(Protocol):
    base: str
    workdir: Path
    command: list[str]

    def processes(self) -> list[Proc]:
        """The gateway and the workers (stores too), by name."""
        ...

    def stop(self) -> None: ...


def wait_ready(url: str, timeout_s: float, alive: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"exited with {alive.returncode} before {url} was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).is_success:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready in {timeout_s}s")
        time.sleep(0.1)  # a poll interval


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return []


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _name_of(cmd: list[str], counts: dict[str, int]) -> tuple[str, str | None]:
    """`gateway`, `prefill-0`, `decode-1`, ... and the worker's URL, from a child's argv."""
    if "serve" in cmd:
        return "gateway", None
    if "worker" in cmd:
        role = cmd[cmd.index("--role") + 1]
        host, port = cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1]
        i = counts[role] = counts.get(role, -1) + 1
        return f"{role}-{i}", f"http://{host}:{port}"
    if "kvstore.store_server" in cmd:
        return "kvstore", None
    return Path(cmd[0]).name if cmd else "?", None  # mooncake_master, redis-server


class UpCluster:
    """`dualpath up ...` in its own process group."""

    def __init__(self, plan_args: list[str], port: int, workdir: Path, timeout_s: float) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        exe = str(Path(sys.executable).parent / "dualpath")
        self.command = [exe, "up", "--port", str(port), *plan_args]
        log = open(workdir / "up.log", "wb")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_ready(self.base + "/ready", timeout_s, self.proc)

    def processes(self) -> list[Proc]:
        counts: dict[str, int] = {}
        out = []
        for pid in sorted(_children(self.proc.pid)):
            name, url = _name_of(_cmdline(pid), counts)
            out.append(Proc(name, pid, url))
        return out

    def stop(self) -> None:
        stop_processes([self.proc], grace_s=20)


class LauncherCluster:
    """`gateway.launcher.Cluster` driven from here: `dualpath up`'s children, restartable."""

    def __init__(self, plan: ClusterPlan, timeout_s: float) -> None:
        self.cluster = Cluster(plan)
        self.cluster.build()
        self.base = f"http://{plan.host}:{plan.port}"
        self.workdir = self.cluster.workdir
        self.command = [f"{c.name}: {' '.join(c.cmd)}" for c in self.cluster.children]
        self.timeout_s = timeout_s
        self.cluster.launch(timeout_s)

    def child(self, name: str) -> Child:
        (found,) = [c for c in self.cluster.children if c.name == name]
        return found

    def processes(self) -> list[Proc]:
        out = []
        for c in self.cluster.children:
            if c.proc is not None and c.proc.poll() is None:
                url = c.ready_url.removesuffix("/health") if c.name != "gateway" else None
                out.append(Proc(c.name, c.proc.pid, url))
        return out

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash: no drain, no goodbye to the gateway."""
        proc = self.child(name).proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, name: str) -> None:
        """The same command (same port, same args) again, waited on until it answers."""
        child = self.child(name)
        self.cluster.start([child])
        self.cluster.wait_ready(self.timeout_s, children=[child])

    def stop(self) -> None:
        self.cluster.stop(grace_s=20)


def plan_args(args: argparse.Namespace) -> list[str]:
    """`dualpath up` options from the soak's arguments."""
    out = ["--prefill", str(args.prefill), "--decode", str(args.decode)]
    out += ["--time-scale", str(args.time_scale), "--kv", args.kv]
    if args.policy:
        out += ["--policy", args.policy]
    return out


def plan_of(args: argparse.Namespace, port: int) -> ClusterPlan:
    return ClusterPlan(
        prefill=args.prefill,
        decode=args.decode,
        port=port,
        time_scale=args.time_scale,
        kv=args.kv,
        policy=args.policy,
    )


__all__ = [
    "LauncherCluster",
    "Proc",
    "SoakCluster",
    "UpCluster",
    "free_port",
    "plan_args",
    "plan_of",
]
