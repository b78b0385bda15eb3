"""`dualpath up`: a gateway and simulated PD workers as child processes on loopback.

The launcher only supervises: it picks free ports, starts every child, waits until each answers,
prints where to point an OpenAI client, and stops every child (SIGTERM, then SIGKILL) when it is
told to stop or when any child dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from gateway.errors import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """What `dualpath up` starts."""

    prefill: int = 1
    decode: int = 2
    model: str = "tiny"
    """Served model name."""
    engine_model: str = "tiny"
    """Cost-model preset of the simulated workers."""
    host: str = "127.0.0.1"
    port: int = 8000
    seed: int = 0
    time_scale: float = 1.0
    tokenizer: str | None = None
    """A HuggingFace tokenizer.json for workers and gateway; None = the built-in tokenizer."""
    redis: str | None = None
    """Session store: None = in-process, `embedded` = a private redis-server, else its URL."""
    kv: str = "embedded"
    """KV store: `embedded` (a private store server), `mooncake` (a private mooncake_master),
    `mooncake://host:port` (an existing master), `http://host:port` (an existing store server)
    or `none` (the workers' local prefix caches only)."""
    kv_capacity_bytes: int = 256 << 20
    """Embedded store: memory it may hold."""
    kv_scale: float = 256.0
    """Stored block bytes = modelled bytes / kv_scale."""
    policy: str | None = None
    """The gateway's scheduling policy; None: its default (`dualpath-slo`)."""
    snic_gbps: float | None = None
    cnic_gbps: float | None = None
    """Every node's storage / compute NIC in GB/s; None: the cost model's node (DESIGN.md)."""
    api_keys_file: str | None = None
    """The gateway's API keys file (`gateway/api_keys.py`); None: `DUALPATH_API_KEYS*`, if
    set, else an open gateway."""


@dataclass(slots=True)
class Child:
    name: str
    cmd: list[str]
    ready_url: str
    """http(s):// polled for a 2xx, redis:// for PONG, tcp:// for an accepted connection."""
    stage: int = 1
    """Children start stage by stage: stores (0) are ready before workers and gateway (1)."""
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


MAX_STORE_RESTARTS = 5
"""A store that died is restarted (its contents lost: clients degrade to misses meanwhile), but
one that keeps dying stops `dualpath up` instead of looping."""


@dataclass(slots=True)
class Cluster:
    plan: ClusterPlan
    children: list[Child] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dualpath-up-")))

    @property
    def base_url(self) -> str:
        return f"http://{self.plan.host}:{self.plan.port}/v1"

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *args]

    def _redis_url(self) -> str | None:
        """The session store's URL, adding a private redis-server child for `embedded`."""
        p = self.plan
        if p.redis != "embedded":
            return p.redis
        from gateway.embedded_redis import redis_server_command

        port = free_port(p.host)
        url = f"redis://{p.host}:{port}/0"
        self.children.append(Child("redis", redis_server_command(port, host=p.host), url, 0))
        return url

    def _kv_url(self) -> str | None:
        """The KV store's URL for the workers, adding a store child when it is ours to run."""
        p = self.plan
        if p.kv == "none":
            return None
        if p.kv.startswith(("mooncake://", "http://")):
            return p.kv  # an existing Mooncake master or embedded store server
        port = free_port(p.host)
        if p.kv == "mooncake":
            from kvstore.mooncake_master import mooncake_master_command

            metrics = free_port(p.host)
            cmd = mooncake_master_command(port, metrics_port=metrics, host=p.host)
            self.children.append(Child("mooncake-master", cmd, f"tcp://{p.host}:{port}", 0))
            return f"mooncake://{p.host}:{port}?metrics={p.host}:{metrics}"
        if p.kv != "embedded":
            raise ConfigError(
                f"unknown KV store {p.kv!r}: embedded, mooncake, mooncake://…, http://…, none"
            )
        url = f"http://{p.host}:{port}"
        cmd = [sys.executable, "-m", "kvstore.store_server", "--host", p.host, "--port", str(port)]
        cmd += ["--capacity-bytes", str(p.kv_capacity_bytes)]
        self.children.append(Child("kvstore", cmd, url + "/health", 0))
        return url

    def build(self) -> None:
        p = self.plan
        redis_url = self._redis_url()
        kv_url = self._kv_url()
        workers: list[dict[str, object]] = []
        for role, count in (("prefill", p.prefill), ("decode", p.decode)):
            for i in range(count):
                port = free_port(p.host)
                args = ["worker", "--role", role, "--host", p.host, "--port", str(port)]
                args += ["--model", p.model, "--engine-model", p.engine_model]
                args += ["--seed", str(p.seed + i), "--time-scale", str(p.time_scale)]
                if p.tokenizer:
                    args += ["--tokenizer", p.tokenizer]
                if kv_url:
                    args += ["--kv-store", kv_url, "--kv-scale", str(p.kv_scale)]
                for flag, gbps in (("--snic-gbps", p.snic_gbps), ("--cnic-gbps", p.cnic_gbps)):
                    if gbps is not None:
                        args += [flag, str(gbps)]
                spec: dict[str, object] = {"url": f"http://{p.host}:{port}", "role": role}
                if role == "prefill":
                    boot = free_port(p.host)
                    args += ["--bootstrap-port", str(boot)]
                    spec["bootstrap_port"] = boot
                workers.append(spec)
                self.children.append(
                    Child(f"{role}-{i}", self._cli(*args), f"http://{p.host}:{port}/health")
                )
        config = self.workdir / "cluster.yaml"
        config.write_text(yaml.safe_dump({"workers": workers}))
        serve = ["serve", "--config", str(config), "--host", p.host, "--port", str(p.port)]
        if redis_url:
            serve += ["--redis", redis_url]
        if p.tokenizer:
            serve += ["--tokenizer", p.tokenizer]
        if p.policy:
            serve += ["--policy", p.policy]
        if kv_url:  # the workers' store: the gateway checks hits against what they hold
            serve += ["--kv-store", kv_url]
        if p.api_keys_file:
            serve += ["--api-keys-file", p.api_keys_file]
        self.children.append(Child("gateway", self._cli(*serve), f"http://{p.host}:{p.port}/ready"))

    def launch(self, timeout_s: float, on_ready: object = None) -> None:
        """Start the children stage by stage, each stage ready before the next starts."""
        deadline = time.monotonic() + timeout_s
        for stage in sorted({c.stage for c in self.children}):
            children = [c for c in self.children if c.stage == stage]
            self.start(children)
            self.wait_ready(max(deadline - time.monotonic(), 0.0), on_ready, children)

    def start(self, children: list[Child] | None = None) -> None:
        for child in self.children if children is None else children:
            log = open(self.workdir / f"{child.name}.log", "wb")  # noqa: SIM115 (child owns it)
            child.proc = subprocess.Popen(
                child.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()

    def revive(self, child: Child) -> bool:
        """Restart a dead store child; False for any other child or one that keeps dying."""
        if child.stage != 0 or child.restarts >= MAX_STORE_RESTARTS:
            return False
        child.restarts += 1
        self.start([child])
        return True

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None and c.proc.poll() is not None]

    def is_ready(self, child: Child) -> bool:
        if child.ready_url.startswith("tcp://"):
            host, _, port = child.ready_url.removeprefix("tcp://").rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
            except OSError:
                return False
            return True
        if child.ready_url.startswith("redis://"):
            from gateway.embedded_redis import redis_pings

            host, _, port = (
                child.ready_url.removeprefix("redis://").split("/", 1)[0].rpartition(":")
            )
            return redis_pings(host, int(port))
        try:
            return httpx.get(child.ready_url, timeout=1.0).is_success
        except httpx.HTTPError:
            return False

    def wait_ready(
        self, timeout_s: float, on_ready: object = None, children: list[Child] | None = None
    ) -> None:
        """Poll each child's readiness URL until all answer; raise if one dies or time runs out."""
        pending = list(self.children if children is None else children)
        deadline = time.monotonic() + timeout_s
        while pending:
            if dead := self.dead():
                raise RuntimeError(f"{dead[0].name} exited; see {self.workdir}/{dead[0].name}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s}s: {[c.name for c in pending]}")
            for child in [c for c in pending if self.is_ready(c)]:
                pending.remove(child)
                if callable(on_ready):
                    on_ready(child)
            if pending:
                time.sleep(0.1)  # poll interval

    def stop(self, grace_s: float = 10.0) -> None:
        stop_processes([c.proc for c in reversed(self.children) if c.proc], grace_s)


def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGTERM each process's group, then SIGKILL whatever is left after `grace_s` in all."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def openai_snippet(base_url: str, model: str) -> str:
    return (
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{base_url}", api_key="none")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}", messages=[{{"role": "user", "content": "Hello!"}}]\n'
        ")\n"
        "print(reply.choices[0].message.content)"
    )
