"""`dualpath replay`: the command-line face of the replay client.

Messages and the progress bar go to stderr, the summary table to stdout. Exit codes: 0 every
request succeeded; 1 the run ended but some requests failed (the results say which and why);
2 it could not start (an unreadable trace, a bad option, no model to name). The run's machinery
(httpx, matplotlib) is imported when the command runs, so `dualpath --help` stays quick.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loadtest.errors import LoadtestError
from loadtest.metrics import SLO
from loadtest.replay.config import Mode, ReplayConfig, Timeouts
from loadtest.trace_files import TraceFormat, load_trace

_out = Console()
_err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    _err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def replay(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="The endpoint's base URL (OpenAI-compatible).")],
    trace: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="A trace file (ours or Mooncake's).")
    ],
    fmt: Annotated[
        TraceFormat, typer.Option("--format", help="Trace format: ours, mooncake or auto.")
    ] = TraceFormat.AUTO,
    mode: Annotated[
        Mode, typer.Option(help="offline: all agents at once (JCT); online: Poisson arrivals.")
    ] = Mode.OFFLINE,
    aps: Annotated[
        float | None, typer.Option(help="Online: agents arriving per second (Poisson).")
    ] = None,
    agents: Annotated[
        int | None, typer.Option(min=1, help="Agents to run (default: all in the trace).")
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option(min=1, help="Replay at most this many turns of each agent.")
    ] = None,
    slo: Annotated[str, typer.Option(help="Targets in seconds for goodput.")] = (
        "ttft=4,tpot=0.05"
    ),
    model: Annotated[
        str | None, typer.Option(help="Model name (default: the first of GET /v1/models).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Folder for results.json and the HTML/PNG report."),
    ] = None,
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at most.")] = 512,
    seed: Annotated[int, typer.Option(help="Seeds the prompt text and the arrivals.")] = 0,
    tool_latency: Annotated[
        float, typer.Option(min=0, metavar="SCALE", help="Multiplies each turn's tool latency.")
    ] = 1.0,
    ignore_eos: Annotated[
        bool, typer.Option(help="Send ignore_eos so exactly max_tokens come back (SGLang).")
    ] = True,
    retry_shed: Annotated[
        int, typer.Option(min=0, max=100, help="Retries of a 429/503 after its Retry-After.")
    ] = 0,
    api_key: Annotated[
        str | None, typer.Option(envvar="OPENAI_API_KEY", help="Bearer token, if needed.")
    ] = None,
    connect_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds.")] = 10.0,
    first_token_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds from send to the first chunk.")
    ] = 300.0,
    chunk_timeout: Annotated[
        float, typer.Option(min=0.001, help="Longest silence inside a stream, seconds.")
    ] = 60.0,
    probe: Annotated[
        bool, typer.Option(help="Read our gateway's storage-NIC counters and read paths.")
    ] = True,
    progress: Annotated[
        bool | None, typer.Option(help="Progress bar (default: when stderr is a terminal).")
    ] = None,
) -> None:
    """Replay a trace's agents against an OpenAI-compatible endpoint and measure them."""
    try:
        loaded = load_trace(trace, fmt)
        config = ReplayConfig(
            url=url, mode=mode, aps=aps, agents=agents, max_turns=max_turns,
            slo=SLO.parse(slo), model=model, max_concurrency=max_concurrency, seed=seed,
            tool_latency_scale=tool_latency, ignore_eos=ignore_eos, retry_shed=retry_shed,
            api_key=api_key, probe_server=probe,
            timeouts=Timeouts(connect_timeout, first_token_timeout, chunk_timeout),
        )  # fmt: skip
    except (LoadtestError, ValueError) as exc:
        raise _fail(str(exc)) from None
    from loadtest.replay.progress import NoProgress, ProgressSink, RichProgress
    from loadtest.replay.results import results_json, write_results
    from loadtest.replay.runner import run_replay

    show = _err.is_terminal if progress is None else progress
    bar: ProgressSink = RichProgress(_err) if show else NoProgress()
    try:
        result = asyncio.run(run_replay(config, loaded.trace, bar))
    except LoadtestError as exc:
        raise _fail(str(exc)) from None
    body = results_json(result, loaded.trace, _command(ctx), str(trace))
    _out.print(_table(body))
    if out is not None:
        try:
            path, report = write_results(out, result, body)
        except OSError as exc:
            raise _fail(f"cannot write to {out}: {exc.strerror or exc}") from None
        _err.print(f"wrote {path} and {report.index}", markup=False, highlight=False)
    if body["summary"]["errors"]:
        first = next(iter(body["errors"]), "")
        _err.print(f"{body['summary']['errors']} request(s) failed; first: {first}",
                   style="yellow", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


def _command(ctx: typer.Context) -> list[str]:
    """The command with every option's value, defaults included (the API key left out)."""
    words = ctx.command_path.split()
    for name, value in ctx.params.items():
        flag = "--" + ("format" if name == "fmt" else name.replace("_", "-"))
        if value is None or name == "api_key":
            continue
        if isinstance(value, bool):
            words.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            words += [flag, str(value.value if hasattr(value, "value") else value)]
    return words


def _table(body: dict[str, Any]) -> Table:
    s = body["summary"]
    table = Table(title=f"replay: {body['config']['mode']}, {body['config']['agents']} agents")
    table.add_column("figure")
    table.add_column("value", justify="right")

    def ms(dist: dict[str, float | None], q: str) -> str:
        v = dist.get(q)
        return "–" if v is None else f"{v * 1000:.1f} ms"

    rows = [
        ("requests (completed / errors)", f"{s['completed']} / {s['errors']}"),
        ("wall time", f"{body['wall_s']:.2f} s"),
        ("JCT", f"{s['jct_s']:.2f} s"),
        ("throughput", f"{s['throughput_rps']:.2f} req/s"),
        ("goodput (SLO met)", f"{s['goodput_rps']:.2f} req/s ({s['slo_met']} met)"),
        ("TTFT p50 / p99", f"{ms(s['ttft_s'], 'p50')} / {ms(s['ttft_s'], 'p99')}"),
        ("TTST p50", ms(s["ttst_s"], "p50")),
        ("TPOT p50 / p99", f"{ms(s['tpot_s'], 'p50')} / {ms(s['tpot_s'], 'p99')}"),
        ("E2E p50", ms(s["e2e_s"], "p50")),
        ("cached / prompt tokens", f"{s['cached_ratio']:.3f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
