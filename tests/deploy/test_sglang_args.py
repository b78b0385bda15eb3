"""`dualpath sglang-args`: the SGLang flags and environment per worker, and its errors."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.settings import WorkerSpec, load_cluster_file
from gateway.sglang_args import SGLANG_VERSION

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "cluster.yaml"
runner = CliRunner()

SGLANG = {
    "model_path": "Qwen/Qwen2.5-7B-Instruct",
    "mooncake": {"master": "10.0.0.1:50051", "protocol": "rdma"},
}
PREFILL = {"url": "http://10.0.0.11:30000", "role": "prefill", "bootstrap_port": 9001}
DECODE = {"url": "http://10.0.0.21:30001", "role": "decode"}


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _cluster(**sglang: Any) -> dict[str, Any]:
    return {"workers": [PREFILL, DECODE], "sglang": {**SGLANG, **sglang}}


def _run_json(path: Path, *extra: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["sglang-args", "--config", str(path), "--format", "json", *extra])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["sglang_version"] == SGLANG_VERSION
    return {w["name"]: w for w in out["workers"]}


def _flag(argv: list[str], flag: str) -> str | None:
    """The value after `flag`, '' for a bare flag, None when absent."""
    if flag not in argv:
        return None
    i = argv.index(flag)
    nxt = argv[i + 1] if i + 1 < len(argv) else ""
    return "" if nxt.startswith("--") else nxt


def test_prefill_and_decode_flags(tmp_path: Path) -> None:
    workers = _run_json(_write(tmp_path, _cluster()))
    assert list(workers) == ["prefill-0", "decode-0"]
    p, d = workers["prefill-0"]["argv"], workers["decode-0"]["argv"]
    assert p[:3] == ["python3", "-m", "sglang.launch_server"]
    for argv in (p, d):
        assert _flag(argv, "--model-path") == "Qwen/Qwen2.5-7B-Instruct"
        assert _flag(argv, "--disaggregation-transfer-backend") == "mooncake"
        assert _flag(argv, "--hicache-storage-backend") == "mooncake"
        assert _flag(argv, "--host") == "0.0.0.0"
        assert _flag(argv, "--tp-size") == "1"
        assert _flag(argv, "--page-size") == "64"
        assert _flag(argv, "--enable-metrics") == ""
        assert _flag(argv, "--enable-cache-report") == ""
    assert _flag(p, "--disaggregation-mode") == "prefill"
    assert _flag(d, "--disaggregation-mode") == "decode"
    assert (_flag(p, "--port"), _flag(d, "--port")) == ("30000", "30001")
    # HiCache proper on the prefill; the decode offloads finished KV to the same store.
    assert _flag(p, "--enable-hierarchical-cache") == ""
    assert _flag(d, "--enable-hierarchical-cache") is None
    assert _flag(d, "--disaggregation-decode-enable-offload-kvcache") == ""
    assert _flag(p, "--disaggregation-decode-enable-offload-kvcache") is None
    # No collector named: no tracing flags; no NIC named: SGLang picks.
    assert "--enable-trace" not in p + d
    assert "--disaggregation-ib-device" not in p + d


def test_bootstrap_ports(tmp_path: Path) -> None:
    prefills = [
        {"url": "http://h1:30000", "role": "prefill", "bootstrap_port": 9001},
        {"url": "http://h1:30002", "role": "prefill", "bootstrap_port": 9002},
        {"url": "http://h2:30000", "role": "prefill"},
    ]
    workers = _run_json(_write(tmp_path, {"workers": [*prefills, DECODE], "sglang": SGLANG}))
    ports = [
        _flag(workers[f"prefill-{i}"]["argv"], "--disaggregation-bootstrap-port") for i in (0, 1, 2)
    ]
    assert ports == ["9001", "9002", "8998"]  # SGLang's default when the file names none
    assert "--disaggregation-bootstrap-port" not in workers["decode-0"]["argv"]


def test_mooncake_environment(tmp_path: Path) -> None:
    mooncake = {
        "master": "10.0.0.1:50051",
        "metadata_server": "http://10.0.0.1:8080/metadata",
        "protocol": "rdma",
        "device": "mlx5_0,mlx5_1",
        "global_segment_size": 17179869184,
    }
    workers = _run_json(_write(tmp_path, _cluster(mooncake=mooncake)))
    env = workers["prefill-0"]["env"]
    assert env["MOONCAKE_MASTER"] == "10.0.0.1:50051"
    assert env["MOONCAKE_TE_META_DATA_SERVER"] == "http://10.0.0.1:8080/metadata"
    assert env["MOONCAKE_PROTOCOL"] == "rdma"
    assert env["MOONCAKE_DEVICE"] == "mlx5_0,mlx5_1"
    assert env["MOONCAKE_GLOBAL_SEGMENT_SIZE"] == "17179869184"
    assert env["MOONCAKE_LOCAL_HOSTNAME"] == "10.0.0.11"  # the host of the worker's URL
    assert workers["decode-0"]["env"]["MOONCAKE_LOCAL_HOSTNAME"] == "10.0.0.21"
    assert "MC_FORCE_TCP" not in env
    assert "OTEL_SERVICE_NAME" not in env


def test_tcp_tracing_and_defaults(tmp_path: Path) -> None:
    cluster = _cluster(mooncake={"master": "mc:50051", "protocol": "tcp"})
    cluster["sglang"]["otlp_traces_endpoint"] = "otel-collector:4317"
    workers = _run_json(_write(tmp_path, cluster))
    w = workers["decode-0"]
    assert w["env"]["MC_FORCE_TCP"] == "1"
    assert w["env"]["MOONCAKE_TE_META_DATA_SERVER"] == "P2PHANDSHAKE"
    assert w["env"]["MOONCAKE_GLOBAL_SEGMENT_SIZE"] == "4gb"
    assert w["env"]["OTEL_SERVICE_NAME"] == "sglang-decode-0"
    assert _flag(w["argv"], "--enable-trace") == ""
    assert _flag(w["argv"], "--otlp-traces-endpoint") == "otel-collector:4317"


def test_overrides(tmp_path: Path) -> None:
    prefill = {
        **PREFILL,
        "sglang": {
            "name": "p-a",
            "tp": 8,
            "base_gpu_id": 0,
            "ib_device": "mlx5_2",
            "local_hostname": "192.0.2.7",
            "extra_args": ["--mem-fraction-static", "0.8"],
            "env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "MOONCAKE_PROTOCOL": "efa"},
        },
    }
    cluster = {
        "workers": [prefill, DECODE],
        "sglang": {
            **SGLANG,
            "served_model_name": "qwen",
            "ib_device": "mlx5_0",
            "hicache": {"size_gb": 100, "mem_layout": "page_first", "io_backend": "kernel"},
            "extra_args": ["--log-level", "info"],
            "env": {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "600"},
        },
    }
    workers = _run_json(_write(tmp_path, cluster))
    p, d = workers["p-a"], workers["decode-0"]
    assert _flag(p["argv"], "--tp-size") == "8" and _flag(d["argv"], "--tp-size") == "1"
    assert _flag(p["argv"], "--base-gpu-id") == "0" and "--base-gpu-id" not in d["argv"]
    assert _flag(p["argv"], "--disaggregation-ib-device") == "mlx5_2"
    assert _flag(d["argv"], "--disaggregation-ib-device") == "mlx5_0"
    assert _flag(p["argv"], "--served-model-name") == "qwen"
    assert _flag(p["argv"], "--hicache-size") == "100" and "--hicache-ratio" not in p["argv"]
    assert _flag(p["argv"], "--hicache-mem-layout") == "page_first"
    assert p["argv"][-4:] == ["--log-level", "info", "--mem-fraction-static", "0.8"]
    assert p["env"]["MOONCAKE_LOCAL_HOSTNAME"] == "192.0.2.7"
    assert p["env"]["MOONCAKE_PROTOCOL"] == "efa"  # the worker's env wins
    assert p["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert d["env"]["SGLANG_DISAGGREGATION_WAITING_TIMEOUT"] == "600"
    assert "CUDA_VISIBLE_DEVICES" not in d["env"]


def test_decode_without_offload(tmp_path: Path) -> None:
    workers = _run_json(_write(tmp_path, _cluster(hicache={"decode_offload": False})))
    assert not [a for a in workers["decode-0"]["argv"] if "hicache" in a or "offload" in a]
    assert _flag(workers["prefill-0"]["argv"], "--hicache-storage-backend") == "mooncake"


def test_worker_filter(tmp_path: Path) -> None:
    assert list(_run_json(_write(tmp_path, _cluster()), "--worker", "decode-0")) == ["decode-0"]


def test_shell_output_is_the_same_command(tmp_path: Path) -> None:
    """The shell form, run through a shell's word splitting, is the JSON's env and argv."""
    path = _write(tmp_path, _cluster(model_path="/models/my model", mooncake={"master": "m:1"}))
    workers = _run_json(path)
    result = runner.invoke(app, ["sglang-args", "--config", str(path)])
    assert result.exit_code == 0, result.output
    blocks = result.stdout.strip().split("\n\n")
    assert len(blocks) == len(workers)
    for block, w in zip(blocks, workers.values(), strict=True):
        assert block.startswith(f"# {w['name']}: {w['role']} at {w['url']}")
        words = shlex.split(block.replace("\\\n", " "), comments=True)
        n_env = len(w["env"])
        assert words[:n_env] == [f"{k}={v}" for k, v in w["env"].items()]
        assert words[n_env:] == w["argv"]


def test_example_cluster_file() -> None:
    workers = _run_json(EXAMPLE)
    assert {w["role"] for w in workers.values()} == {"prefill", "decode"}
    result = runner.invoke(app, ["sglang-args", "--config", str(EXAMPLE)])
    assert result.exit_code == 0 and "python3 -m sglang.launch_server" in result.stdout


def test_serve_reads_the_extended_file(tmp_path: Path) -> None:
    """`dualpath serve --config` keeps reading `workers:`; `sglang:` sections do not bother it."""
    prefill = {**PREFILL, "sglang": {"tp": 2, "env": {"A": "b"}}}
    path = _write(tmp_path, {"workers": [prefill, DECODE], "sglang": SGLANG})
    assert load_cluster_file(path) == (
        WorkerSpec("http://10.0.0.11:30000", "prefill", 9001),
        WorkerSpec("http://10.0.0.21:30001", "decode", None),
    )
    assert [w.role for w in load_cluster_file(EXAMPLE)] == ["prefill", "decode"]


BAD = [
    ("missing.yaml", None, "cannot read cluster file"),
    ("bad-yaml", "workers: [\n", "cannot read cluster file"),
    ("list", "- 1\n", "expected a mapping"),
    ("legacy", {"workers": [PREFILL, DECODE]}, "no 'sglang:' section"),
    ("no workers", {"workers": [], "sglang": SGLANG}, "workers: List should have at least 1"),
    ("role", {"workers": [{**DECODE, "role": "both"}], "sglang": SGLANG}, "workers.0.role"),
    ("no port", {"workers": [{**DECODE, "url": "http://h"}], "sglang": SGLANG}, "explicit port"),
    ("scheme", {"workers": [{**DECODE, "url": "h:1"}], "sglang": SGLANG}, "workers.0.url"),
    (
        "decode bootstrap",
        {"workers": [{**DECODE, "bootstrap_port": 8998}], "sglang": SGLANG},
        "bootstrap_port belongs to prefill",
    ),
    (
        "bootstrap range",
        {"workers": [{**PREFILL, "bootstrap_port": 70000}], "sglang": SGLANG},
        "bootstrap_port",
    ),
    ("typo", {"workers": [{**DECODE, "bootstap_port": 1}], "sglang": SGLANG}, "bootstap_port"),
    (
        "no model",
        {"workers": [DECODE], "sglang": {"mooncake": SGLANG["mooncake"]}},
        "sglang.model_path",
    ),
    (
        "no master",
        {"workers": [DECODE], "sglang": {**SGLANG, "mooncake": {}}},
        "sglang.mooncake.master",
    ),
    ("bad master", _cluster(mooncake={"master": "no-port"}), "expected host:port"),
    (
        "protocol",
        _cluster(mooncake={"master": "m:1", "protocol": "udp"}),
        "sglang.mooncake.protocol",
    ),
    (
        "segment",
        _cluster(mooncake={"master": "m:1", "global_segment_size": "4 GiB"}),
        "global_segment_size",
    ),
    ("sglang typo", _cluster(tp_size=2), "sglang.tp_size: Extra inputs are not permitted"),
    ("tp", _cluster(tp=0), "sglang.tp"),
    ("both sizes", _cluster(hicache={"ratio": 2, "size_gb": 10}), "ratio or size_gb"),
    ("layout", _cluster(hicache={"mem_layout": "pages"}), "sglang.hicache.mem_layout"),
    ("otlp", _cluster(otlp_traces_endpoint="http://c:4317/v1"), "otlp_traces_endpoint"),
    ("env name", _cluster(env={"BAD-NAME": "1"}), "not an environment variable name"),
    (
        "same name",
        {"workers": [PREFILL, {**DECODE, "sglang": {"name": "prefill-0"}}], "sglang": SGLANG},
        "two workers",
    ),
    (
        "same port",
        {"workers": [DECODE, {**DECODE, "role": "decode"}], "sglang": SGLANG},
        "both use 10.0.0.21:30001",
    ),
    (
        "bootstrap clash",
        {"workers": [PREFILL, {**DECODE, "url": "http://10.0.0.11:9001"}], "sglang": SGLANG},
        "both use 10.0.0.11:9001",
    ),
]


@pytest.mark.parametrize(("case", "content", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_cluster_files(tmp_path: Path, case: str, content: Any, message: str) -> None:
    path = tmp_path / "missing.yaml" if content is None else _write(tmp_path, content)
    result = runner.invoke(app, ["sglang-args", "--config", str(path)])
    assert result.exit_code == 2, (case, result.output)
    assert isinstance(result.exception, SystemExit)  # typer.Exit, never a traceback
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_unknown_worker_and_format(tmp_path: Path) -> None:
    path = _write(tmp_path, _cluster())
    result = runner.invoke(app, ["sglang-args", "--config", str(path), "--worker", "decode-9"])
    assert result.exit_code == 2 and "no worker named 'decode-9'" in result.stderr
    result = runner.invoke(app, ["sglang-args", "--config", str(path), "--format", "yaml"])
    assert result.exit_code == 2
