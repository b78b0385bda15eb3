"""A gateway and simulated PD workers as separate real processes, for fault injection.

Unlike `dualpath up` (which stops everything when a child dies), each process here can be
killed on its own. Every process starts at once; the helper then waits on each one's readiness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tests.support.procs import REPO, dualpath, free_port, stop, wait_http_ok

HOST = "127.0.0.1"


@dataclass
class Proc:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to close its connections cleanly."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_bytes()[-3000:].decode(errors="replace")


@dataclass
class Cluster:
    gateway: Proc
    prefill: list[Proc]
    decode: list[Proc]
    workdir: Path
    extra: list[Proc] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.gateway.url


def _start(name: str, cmd: Sequence[str], url: str, workdir: Path, env: dict[str, str]) -> Proc:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,
        )
    return Proc(name, url, proc, log)


def sim_worker(role: str, port: int, boot: int, time_scale: float, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "engines.sim_worker", "--role", role, "--port", str(port),
        "--bootstrap-port", str(boot), "--time-scale", str(time_scale), *extra,
    ]  # fmt: skip


def _wait(procs: list[Proc], path: str, timeout: float) -> None:
    for p in procs:
        try:
            wait_http_ok(p.url + path, p.proc, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{p.name}: {exc}; its output ends:\n{p.tail()}") from None


@contextlib.contextmanager
def sim_cluster(
    prefill: int = 1,
    decode: int = 2,
    *,
    time_scale: float = 1.0,
    env: dict[str, str] | None = None,
    gateway_args: Sequence[str] = (),
    prefill_args: Sequence[str] = (),
    decode_args: Sequence[str] = (),
    extra_workers: Sequence[dict[str, object]] = (),
    timeout: float = 60,
) -> Iterator[Cluster]:
    """`prefill` + `decode` simulated workers and a gateway serving them (`env` is the
    gateway's). `*_args` go to each worker of a role (a later `--time-scale` wins);
    `extra_workers` are more cluster-file entries (workers the test runs itself)."""
    workdir = Path(tempfile.mkdtemp(prefix="pd-cluster-"))
    procs: list[Proc] = []
    try:
        specs: list[dict[str, object]] = []
        roles: dict[str, list[Proc]] = {"prefill": [], "decode": []}
        for role, count in (("prefill", prefill), ("decode", decode)):
            for i in range(count):
                port, boot = free_port(), free_port()
                extra = prefill_args if role == "prefill" else decode_args
                cmd = sim_worker(role, port, boot, time_scale, "--seed", str(i), *extra)
                proc = _start(f"{role}-{i}", cmd, f"http://{HOST}:{port}", workdir, {})
                procs.append(proc)
                roles[role].append(proc)
                spec: dict[str, object] = {"url": proc.url, "role": role}
                if role == "prefill":
                    spec["bootstrap_port"] = boot
                specs.append(spec)
        config = workdir / "cluster.yaml"
        config.write_text(yaml.safe_dump({"workers": [*specs, *extra_workers]}))
        port = free_port()
        cmd = dualpath("serve", "--config", str(config), "--port", str(port), *gateway_args)
        gateway = _start("gateway", cmd, f"http://{HOST}:{port}", workdir, env or {})
        procs.append(gateway)
        _wait(procs[:-1], "/health", timeout)
        _wait([gateway], "/ready", timeout)
        yield Cluster(gateway, roles["prefill"], roles["decode"], workdir)
    finally:
        for p in reversed(procs):
            if p.proc.poll() is None:
                stop(p.proc)


def requests_on(url: str) -> int:
    """Requests a simulated worker holds in any queue or running (`/v1/loads`); -1 if down."""
    try:
        (rank,) = httpx.get(url + "/v1/loads", timeout=5).json()["loads"]
    except httpx.HTTPError:
        return -1
    queued = sum(v for k, v in rank["disaggregation"].items() if k.endswith("_queue_reqs"))
    return int(rank["num_running_reqs"]) + int(rank["num_waiting_reqs"]) + int(queued)
