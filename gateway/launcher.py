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


@dataclass(slots=True)
class Child:
    name: str
    cmd: list[str]
    ready_url: str
    proc: subprocess.Popen[bytes] | None = None


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
        self.children.append(Child("redis", redis_server_command(port, host=p.host), url))
        return url

    def build(self) -> None:
        p = self.plan
        redis_url = self._redis_url()
        workers: list[dict[str, object]] = []
        for role, count in (("prefill", p.prefill), ("decode", p.decode)):
            for i in range(count):
                port = free_port(p.host)
                args = ["worker", "--role", role, "--host", p.host, "--port", str(port)]
                args += ["--model", p.model, "--engine-model", p.engine_model]
                args += ["--seed", str(p.seed + i), "--time-scale", str(p.time_scale)]
                if p.tokenizer:
                    args += ["--tokenizer", p.tokenizer]
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
        self.children.append(Child("gateway", self._cli(*serve), f"http://{p.host}:{p.port}/ready"))

    def start(self) -> None:
        for child in self.children:
            log = open(self.workdir / f"{child.name}.log", "wb")  # noqa: SIM115 (child owns it)
            child.proc = subprocess.Popen(
                child.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None and c.proc.poll() is not None]

    def is_ready(self, child: Child) -> bool:
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

    def wait_ready(self, timeout_s: float, on_ready: object = None) -> None:
        """Poll each child's readiness URL until all answer; raise if one dies or time runs out."""
        pending = list(self.children)
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
