"""`dualpath simulate` end to end on small generated work."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app

runner = CliRunner()


def test_compare_writes_every_policy_with_the_issue_fields(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    args = ["simulate", "--preset", "32k", "--agents", "6", "--cluster", "1P2D",
            "--compare", "basic,dualpath-slo,oracle", "--json", str(out),
            "--out", str(tmp_path / "report")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["policies"]) == {"basic", "dualpath-slo", "oracle"}
    for figures in report["policies"].values():
        for key in ("jct_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "snic_max_over_avg"):
            assert figures[key] is not None and figures[key] >= 0
        assert figures["completed"] == figures["requests"] == report["requests"]
    assert report["jct_basic_over"]["basic"] == 1.0
    for policy in ("basic", "dualpath-slo", "oracle"):
        folder = tmp_path / "report" / policy
        html = (folder / "index.html").read_text()
        for png in ("ttft_cdf.png", "tpot_cdf.png", "snic.png", "read_paths.png"):
            assert (folder / png).stat().st_size > 1000 and png in html, (policy, png)


def test_online_capacity(tmp_path: Path) -> None:
    out = tmp_path / "cap.json"
    result = runner.invoke(app, ["simulate", "--preset", "32k", "--agents", "4", "--mode",
                                 "online", "--capacity", "--cluster", "1P1D", "--warmup", "30",
                                 "--measure", "30", "--aps-low", "0.05", "--aps-high", "20",
                                 "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads(out.read_text())["capacity"]["dualpath-slo"]
    assert found["window"] == {"warmup_s": 30.0, "measure_s": 30.0}
    assert found["aps"] is not None and 0.05 <= found["aps"] < 20
    assert f"capacity {found['aps']:.4f} agents/s" in result.output
    tried = {float(aps): v["meets"] for aps, v in found["tried"].items()}
    assert tried[0.05] and not any(ok for aps, ok in tried.items() if aps > found["aps"])


def test_bad_arguments_exit_2_with_a_reason() -> None:
    for args, reason in (
        (["--preset", "32k", "--cluster", "2x4"], "xPyD"),
        (["--preset", "32k", "--policy", "fastest"], "unknown policy"),
        (["--cluster", "1P1D"], "--trace FILE or --preset"),
        (["--preset", "32k", "--mode", "online"], "--aps"),
        (["--preset", "32k", "--slo", "ttft=-1"], "positive"),
        (
            [
                "--preset",
                "32k",
                "--mode",
                "online",
                "--capacity",
                "--aps-low",
                "2",
                "--aps-high",
                "1",
            ],
            "--aps-low",
        ),
    ):
        result = runner.invoke(app, ["simulate", "--agents", "2", *args])
        assert result.exit_code == 2 and reason in result.output, (args, result.output)
