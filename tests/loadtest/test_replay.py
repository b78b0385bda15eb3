"""`dualpath replay` against a real `dualpath up` (simulated workers, instant GPU time), and
against a port where nothing listens."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from loadtest.cli import register
from loadtest.replay.results import RESULTS, SAMPLES
from loadtest.report.render import CORE_PLOTS, INDEX, READ_PATHS_PLOT
from loadtest.trace import AgentId, AgentTrace, Trace, Turn
from loadtest.trace_io import write_trace
from tests.support.procs import dualpath, free_port, running

pytestmark = pytest.mark.slow

TURNS = ((400, 12), (200, 20), (300, 9))
"""(append, output) of each agent's turns."""
FIRST_TURN_TEMPLATE_TOKENS = 32

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """The program's commands (as `gateway.cli` mounts them)."""

    register(app)
    return app


APP = _app()


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "2",
                   "--time-scale", "0")  # fmt: skip
    with running(cmd, base + "/ready", timeout=90):
        yield base


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    agents = tuple(
        AgentTrace(AgentId(f"agent-{i}"), tuple(Turn(a, o, 0.02) for a, o in TURNS))
        for i in range(3)
    )
    path = tmp_path / "trace.jsonl"
    write_trace(path, Trace(agents, {"test": "replay"}))
    return path


def _samples(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (out / SAMPLES).read_bytes().splitlines()]


def _by_agent(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    agents: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(samples, key=lambda s: s["sent_at"]):
        agents.setdefault(s["agent"], []).append(s)
    return agents


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.src += [v for k, v in attrs if tag == "img" and k == "src" and v]


def test_offline_replay_through_the_gateway(gateway: str, trace_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["replay", "--url", gateway, "--trace", str(trace_file), "--out", str(out),
            "--no-progress", "--seed", "11"]  # fmt: skip
    result = runner.invoke(APP, args)
    assert result.exit_code == 0, result.output
    assert "requests (completed / errors)" in result.stdout

    body = orjson.loads((out / RESULTS).read_bytes())
    summary = body["summary"]
    assert (summary["requests"], summary["completed"], summary["errors"]) == (9, 9, 0)
    assert summary["ttft_s"]["p50"] > 0 and summary["jct_s"] > 0
    assert body["config"]["model"] == "tiny" and body["config"]["mode"] == "offline"
    assert body["agents_finished"] == 3 and all(a["jct_s"] > 0 for a in body["agents"])
    command = body["command"]
    assert command[command.index("--seed") + 1] == "11" and "--no-progress" in command
    assert body["machine"]["cpus"] >= 1
    assert sum(body["series"]["completed_rps"]) * body["series"]["bin_s"] == pytest.approx(9)
    assert body["server_read_paths"] and sum(body["server_read_paths"].values()) >= 9
    assert {n["node"] for n in body["snic"]} == {"p0", "d0", "d1"}

    agents = _by_agent(_samples(out))
    assert sorted(agents) == ["agent-0", "agent-1", "agent-2"]
    for turns in agents.values():
        assert [s["turn"] for s in turns] == [0, 1, 2]
        for earlier, later in itertools.pairwise(turns):
            assert later["sent_at"] >= earlier["end_at"] + 0.02  # after the tool latency
        context = 0
        for s, (append, output) in zip(turns, TURNS, strict=True):
            assert s["output_tokens"] == output and s["error"] is None
            expected = context + append
            if s["turn"] == 0:
                assert 0 <= s["prompt_tokens"] - expected <= FIRST_TURN_TEMPLATE_TOKENS
            else:
                assert abs(s["prompt_tokens"] - expected) <= 0.05 * expected, s
                assert s["cached_tokens"] > 0, s
            context += append + output

    images = _Images()
    images.feed((out / INDEX).read_text())
    assert set(CORE_PLOTS) | {READ_PATHS_PLOT} <= set(images.src)
    for name in images.src:
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_online_replay_reuses_trajectories(gateway: str, trace_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["replay", "--url", gateway, "--trace", str(trace_file), "--out", str(out),
            "--mode", "online", "--aps", "40", "--agents", "6", "--tool-latency", "0",
            "--no-progress", "--no-probe", "--seed", "12"]  # fmt: skip
    result = runner.invoke(APP, args)
    assert result.exit_code == 0, result.output
    body = orjson.loads((out / RESULTS).read_bytes())
    assert body["summary"]["completed"] == 18 and body["config"]["aps"] == 40
    assert body["snic"] == [] and body["server_read_paths"] == {}
    agents = _by_agent(_samples(out))
    assert "agent-0~1" in agents and len(agents) == 6
    starts = sorted(turns[0]["sent_at"] for turns in agents.values())
    assert starts[-1] - starts[0] > 0.01  # Poisson arrivals, not all at once


def test_a_closed_port_fails_every_agent_and_says_so(trace_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}"
    args = ["replay", "--url", url, "--trace", str(trace_file), "--out", str(out),
            "--model", "tiny", "--no-progress", "--connect-timeout", "2"]  # fmt: skip
    result = runner.invoke(APP, args)
    assert result.exit_code == 1, result.output
    assert "3 request(s) failed" in result.stderr
    body = orjson.loads((out / RESULTS).read_bytes())
    assert (body["summary"]["completed"], body["summary"]["errors"]) == (0, 3)
    assert body["agents_finished"] == 0
    assert all(a["done"] == 0 and "ConnectError" in a["error"] for a in body["agents"])
    assert [s["turn"] for s in _samples(out)] == [0, 0, 0]
    assert "ConnectError" in next(iter(body["errors"]))
    assert (out / INDEX).exists()


def test_no_model_to_name_or_a_bad_option_exits_2(trace_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(APP, ["replay", "--url", url, "--trace", str(trace_file)])
    assert result.exit_code == 2 and "name one with --model" in result.stderr
    result = runner.invoke(APP, ["replay", "--url", url, "--trace", str(trace_file), "--aps", "1"])
    assert result.exit_code == 2 and "--aps is for --mode online" in result.stderr
    result = runner.invoke(APP, ["replay", "--url", url, "--trace", str(trace_file),
                                 "--mode", "online"])  # fmt: skip
    assert result.exit_code == 2 and "needs --aps" in result.stderr
