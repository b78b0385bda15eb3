"""`dualpath trace gen` and `dualpath trace stats`, through the program's own command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from typer.testing import CliRunner

from gateway.cli import app
from loadtest.cli import PresetName
from loadtest.presets import PRESETS

EXCERPT = Path(__file__).parent / "data" / "mooncake_conversation_head200.jsonl"
runner = CliRunner()


def _flat(text: str) -> str:
    """Text without rich's boxes and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_gen_then_stats(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    args = ["trace", "gen", "--preset", "32k", "--agents", "25", "--seed", "4", "-o", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 25 agents" in result.stderr
    first = path.read_bytes()
    assert runner.invoke(app, args).exit_code == 0
    assert path.read_bytes() == first

    result = runner.invoke(app, ["trace", "stats", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert report["format"] == "ours"
    assert report["meta"]["seed"] == 4
    assert report["stats"]["agents"] == 25
    assert report["paper"]["turns"] == 60
    assert 0.9 < report["stats"]["hit_ratio"] < 1

    result = runner.invoke(app, ["trace", "stats", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("turns per agent", "Table 2", "hit ratio implied", "ours format"):
        assert text in result.stdout


def test_tool_latency_zero(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    args = ["trace", "gen", "--preset", "64k", "--agents", "3", "--tool-latency", "0", "-o"]
    assert runner.invoke(app, [*args, str(path)]).exit_code == 0
    assert b"tool_s" not in path.read_bytes()


def test_a_bad_preset_exits_2_naming_the_choices(tmp_path: Path) -> None:
    result = runner.invoke(app, ["trace", "gen", "--preset", "16k", "-o", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert "'16k' is not one of '32k', '48k', '64k'" in _flat(result.output)
    assert not (tmp_path / "t").exists()


def test_stats_reads_mooncake_by_itself_and_reports_the_inference() -> None:
    result = runner.invoke(app, ["trace", "stats", str(EXCERPT), "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert report["format"] == "mooncake"
    assert report["mooncake"]["requests"] == 200
    assert report["mooncake"]["inferred_agents"] == report["stats"]["agents"] == 193
    assert "paper" not in report

    result = runner.invoke(app, ["trace", "stats", str(EXCERPT), "--format", "mooncake"])
    assert result.exit_code == 0, result.output
    assert "agents inferred from prefixes" in result.stdout


def test_a_malformed_trace_exits_2_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"agent": "a", "turns": [{"append": 1, "output": 1}]}\n{"agent": "b"}\n')
    result = runner.invoke(app, ["trace", "stats", str(path)])
    assert result.exit_code == 2
    assert "bad.jsonl:2: missing 'turns'" in _flat(result.stderr)
    result = runner.invoke(app, ["trace", "stats", str(EXCERPT), "--format", "ours"])
    assert result.exit_code == 2
    assert ":1: unknown field(s) hash_ids, input_length" in _flat(result.stderr)


def test_the_cli_presets_are_the_presets() -> None:
    assert [preset.value for preset in PresetName] == list(PRESETS)


def test_the_trace_tools_load_no_web_framework() -> None:
    code = (
        "import sys, loadtest.cli, loadtest.trace_stats, loadtest.mooncake\n"
        "heavy = [m for m in ('fastapi', 'starlette', 'uvicorn', 'httpx', 'engines', 'gateway')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
