"""The `dualpath` command: `up`, `serve`, `worker`, and the `trace` tools of `loadtest`."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.syntax import Syntax

from gateway.keys_cli import keys_app
from gateway.scheduler.policies import POLICIES
from gateway.sglang_args import sglang_args
from loadtest.cli import register as register_loadtest
from loadtest.cli import trace_app
from loadtest.simulate_cli import simulate
from loadtest.span_report_cli import report

POLICY_NAMES = ", ".join(POLICIES)

app = typer.Typer(
    name="dualpath",
    help="An OpenAI-compatible gateway for agentic LLM traffic on SGLang PD clusters.",
    no_args_is_help=True,
    add_completion=False,
)
# This module is the program's composition root: the one place that mounts other packages' commands.
app.add_typer(trace_app, name="trace")
register_loadtest(app)
app.command("simulate")(simulate)
app.command("report")(report)
app.command("sglang-args")(sglang_args)
app.add_typer(keys_app, name="keys")
console = Console()


@app.command()
def up(
    prefill: Annotated[int, typer.Option(min=1, help="Simulated prefill workers.")] = 1,
    decode: Annotated[int, typer.Option(min=1, help="Simulated decode workers.")] = 2,
    model: Annotated[str, typer.Option(help="Served model name (and cost model if known).")] = (
        "tiny"
    ),
    engine_model: Annotated[
        str | None, typer.Option(help="Cost-model preset; defaults to --model if it is one.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address every process binds.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed of the simulated workers' output.")] = 0,
    time_scale: Annotated[
        float, typer.Option(min=0, help="Multiplies every simulated GPU time (0 = instant).")
    ] = 1.0,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 60,
    tokenizer: Annotated[
        str | None, typer.Option(help="Path to a HuggingFace tokenizer.json for the workers.")
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(help="Session store: a redis:// URL, or 'embedded' to start a private one."),
    ] = None,
    kv: Annotated[
        str,
        typer.Option(
            help="KV store: 'embedded', 'mooncake' (a private mooncake_master), "
            "'mooncake://HOST:PORT' (an existing master), 'http://HOST:PORT' (an existing "
            "embedded store server) or 'none'."
        ),
    ] = "embedded",
    policy: Annotated[
        str | None,
        typer.Option(help=f"Scheduling policy: {POLICY_NAMES} (default dualpath-slo)."),
    ] = None,
    kv_capacity_bytes: Annotated[
        int, typer.Option(min=1, help="Embedded KV store: bytes it may hold (LRU past that).")
    ] = 256 << 20,
    snic_gbps: Annotated[
        float | None,
        typer.Option(min=0.001, help="Every node's storage NIC, GB/s (default: the cost model's)."),
    ] = None,
    cnic_gbps: Annotated[
        float | None,
        typer.Option(min=0.001, help="Every node's compute NIC, GB/s (default: the cost model's)."),
    ] = None,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(help="The gateway's API keys file (see `dualpath keys`); default: open."),
    ] = None,
) -> None:
    """Start the gateway and simulated SGLang prefill/decode workers on embedded defaults."""
    from engines.engine_model import MODELS
    from gateway.errors import ConfigError
    from gateway.launcher import Cluster, ClusterPlan, openai_snippet

    cost_model = engine_model or (model if model in MODELS else "tiny")
    if cost_model not in MODELS:
        raise typer.BadParameter(f"known: {', '.join(sorted(MODELS))}", param_hint="--engine-model")
    if redis and redis != "embedded" and not redis.startswith(("redis://", "rediss://")):
        raise typer.BadParameter("a redis:// URL or 'embedded'", param_hint="--redis")
    if policy is not None and policy not in POLICY_NAMES.split(", "):
        raise typer.BadParameter(f"known: {POLICY_NAMES}", param_hint="--policy")
    plan = ClusterPlan(
        prefill,
        decode,
        model,
        cost_model,
        host,
        port,
        seed,
        time_scale,
        tokenizer or None,
        redis,
        kv=kv,
        kv_capacity_bytes=kv_capacity_bytes,
        policy=policy,
        snic_gbps=snic_gbps,
        cnic_gbps=cnic_gbps,
        api_keys_file=str(api_keys_file.resolve()) if api_keys_file else None,
    )
    cluster = Cluster(plan)
    try:
        cluster.build()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with console.status("starting stores, workers and gateway…"):
            cluster.launch(
                ready_timeout,
                lambda c: console.print(f"[green]✓[/] {c.name} ready ({c.ready_url})"),
            )
        console.print(
            f"\n[bold]dualpath-gateway is up.[/] OpenAI base URL: [cyan]{cluster.base_url}[/]"
        )
        console.print(Syntax(openai_snippet(cluster.base_url, model), "python"))
        console.print(f"logs: {cluster.workdir}   stop with Ctrl-C")
        while not stop.wait(0.5):
            for child in cluster.dead():
                if not cluster.revive(child):
                    console.print(f"[red]{child.name} exited; stopping[/]")
                    raise typer.Exit(1)
                console.print(f"[yellow]{child.name} exited; restarted it (empty)[/]")
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    finally:
        cluster.stop()
        console.print("stopped")


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="YAML cluster file naming the workers.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    redis: Annotated[
        str | None, typer.Option(help="Redis URL for sessions shared by gateway replicas.")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="The workers' HuggingFace tokenizer.json.")
    ] = None,
    policy: Annotated[str | None, typer.Option(help=f"Scheduling policy: {POLICY_NAMES}.")] = None,
    kv_store: Annotated[
        str | None,
        typer.Option(
            help="The workers' KV store (http://HOST:PORT, mooncake://HOST:PORT): each turn's "
            "estimated hit is checked against it before scheduling."
        ),
    ] = None,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(help="YAML API keys file (hashed keys, tenants, limits): `dualpath keys`."),
    ] = None,
) -> None:
    """Run the gateway alone against the workers named in a cluster file."""
    from gateway.errors import ConfigError
    from gateway.server import serve as run
    from gateway.settings import load_cluster_file, load_settings

    try:
        settings = load_settings(
            load_cluster_file(config),
            host=host,
            port=port,
            redis_url=redis,
            tokenizer=tokenizer,
            policy=policy,
            kv_store=kv_store,
            api_keys_file=api_keys_file,
        )
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper())
    run(settings)


@app.command()
def worker(
    role: Annotated[str, typer.Option(help="prefill, decode or null (no PD).")],
    port: Annotated[int, typer.Option()] = 30000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    bootstrap_port: Annotated[int, typer.Option(help="Prefill's PD bootstrap port.")] = 8998,
    model: Annotated[str, typer.Option(help="Served model name.")] = "tiny",
    engine_model: Annotated[str, typer.Option(help="Cost-model preset.")] = "tiny",
    seed: Annotated[int, typer.Option()] = 0,
    time_scale: Annotated[float, typer.Option(min=0)] = 1.0,
    tokenizer: Annotated[
        str | None, typer.Option(help="Path to a HuggingFace tokenizer.json.")
    ] = None,
    kv_store: Annotated[
        str | None,
        typer.Option(help="KV store: http://HOST:PORT (embedded server), mooncake://HOST:PORT."),
    ] = None,
    kv_scale: Annotated[
        float, typer.Option(min=1, help="Stored block bytes = modelled bytes / this.")
    ] = 256.0,
    snic_gbps: Annotated[
        float | None, typer.Option(help="Storage NIC GB/s (default: the cost model's node).")
    ] = None,
    cnic_gbps: Annotated[
        float | None, typer.Option(help="Compute NIC GB/s (default: the cost model's node).")
    ] = None,
) -> None:
    """Run one simulated SGLang worker."""
    if role not in ("prefill", "decode", "null"):
        raise typer.BadParameter("must be prefill, decode or null", param_hint="--role")
    from engines.sim_worker import SimWorkerConfig
    from engines.sim_worker import serve as run

    run(
        SimWorkerConfig(
            role=role,
            host=host,
            port=port,
            bootstrap_port=bootstrap_port,
            served_model_name=model,
            engine_model=engine_model,
            seed=seed,
            tokenizer_path=tokenizer,
            time_scale=time_scale,
            kv_store=kv_store,
            kv_scale=kv_scale,
            snic_gbps=snic_gbps,
            cnic_gbps=cnic_gbps,
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
