"""docker-compose.yml: valid Compose, commands our CLI has, files the repo has, one source of truth.

No Docker engine here: the file is validated against the Compose Specification's JSON schema, and
every command a container of ours runs is parsed by the very CLI the image installs.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer
import yaml
from typer.core import TyperGroup

from gateway.cli import app
from gateway.sglang_args import launch_specs, load_cluster
from kvstore import store_server
from tests.deploy.compose import (
    CLUSTER_FILE,
    COMPOSE_FILE,
    PROFILES,
    ROOT,
    aliases,
    argv,
    bind_mounts,
    compose_schema,
    in_profile,
    load_compose,
)

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OUR_IMAGE = "${DUALPATH_IMAGE"
SGLANG_IMAGE = "${SGLANG_IMAGE"
DASHBOARD_METRICS = {
    "dualpath_requests_total",
    "dualpath_ttft_seconds",
    "dualpath_tpot_seconds",
    "dualpath_read_path_decisions_total",
    "dualpath_queue_depth",
    "dualpath_snic_utilization",
}


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def _ours(name: str) -> bool:
    return str(SERVICES[name].get("image", "")).startswith(OUR_IMAGE)


def _dockerfile_entrypoint() -> list[str]:
    line = next(
        s for s in (ROOT / "Dockerfile").read_text().splitlines() if s.startswith("ENTRYPOINT")
    )
    entrypoint = json.loads(line.removeprefix("ENTRYPOINT"))
    assert isinstance(entrypoint, list)
    return entrypoint


def check_dualpath(args: list[str]) -> None:
    """Parse `dualpath ARGS` as the CLI would, without running it; raises the CLI's usage error
    (a `typer.TyperException`). Typer vendors click, so its own classes are the ones to use."""
    cmd: Any = typer.main.get_command(app)
    ctx = typer.Context(cmd, info_name="dualpath")
    rest = list(args)
    while isinstance(cmd, TyperGroup):
        assert rest, f"dualpath {' '.join(args)}: no subcommand"
        name, *rest = rest
        sub = cmd.get_command(ctx, name)
        if sub is None:
            raise typer.BadParameter(f"no command {name!r}")
        cmd, ctx = sub, typer.Context(sub, info_name=name, parent=ctx)
    cmd.make_context(ctx.info_name, rest, parent=ctx.parent).close()


def test_valid_against_the_compose_specification() -> None:
    assert _schema_errors(COMPOSE) == []


def test_the_schema_check_catches_mistakes() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["redis"]["imag"] = "redis"
    broken["services"]["gateway"]["ports"] = 8000
    errors = _schema_errors(broken)
    assert any("imag" in e for e in errors) and any(
        e.startswith("services/gateway/ports") for e in errors
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_brings_the_whole_stack(profile: str) -> None:
    names: set[str] = set()
    for name, service in SERVICES.items():
        assert set(service.get("profiles", [])) <= set(PROFILES), name
        assert service.get("profiles"), f"{name} would start in every profile"
        if in_profile(service, profile):
            names |= aliases(name, service)
    stack = {"redis", "otel-collector", "jaeger", "prometheus", "grafana", "gateway"}
    workers = {urlsplit(w.url).hostname for w in load_cluster(CLUSTER_FILE).workers}
    assert stack | workers <= names
    if profile == "gpu":
        assert "mooncake-master" in names


def test_dualpath_commands_exist_in_the_cli() -> None:
    entrypoint = _dockerfile_entrypoint()
    assert entrypoint == ["dualpath"]
    checked = []
    for name, service in SERVICES.items():
        if _ours(name) and "entrypoint" not in service:
            args = argv(service, entrypoint)
            check_dualpath(args[1:])
            checked.append(args[1])
    assert sorted(checked) == ["serve", "serve", "worker", "worker"]


@pytest.mark.parametrize(
    "args",
    [["serve", "--config=x", "--no-such-option"], ["sever", "--config=x"], ["worker", "--port=1"]],
)
def test_the_cli_check_catches_mistakes(args: list[str]) -> None:
    with pytest.raises(typer.TyperException):
        check_dualpath(args)


def test_store_server_command_parses() -> None:
    args = argv(SERVICES["kvstore"], [])
    assert args[:3] == ["python", "-m", "kvstore.store_server"]
    store_server.parse_args(args[3:])  # exits (SystemExit) on an unknown or missing option


def test_mooncake_master_flags_exist() -> None:
    from kvstore.mooncake_master import mooncake_master_binary, require_libibverbs

    try:
        require_libibverbs()
        binary = mooncake_master_binary()
        helpfull = subprocess.run(
            [binary, "--helpfull"], capture_output=True, text=True, timeout=30
        ).stdout
    except Exception as exc:  # no wheel or no libibverbs: nothing to ask
        pytest.skip(f"no runnable mooncake_master: {exc}")
    args = argv(SERVICES["mooncake-master"], [])
    assert args[0] == "mooncake_master"
    for arg in args[1:]:
        flag = arg.removeprefix("--").split("=", 1)[0]
        assert re.search(rf"^\s+-{flag} \(", helpfull, re.MULTILINE), (
            f"mooncake_master has no {arg}"
        )


def test_mounted_files_exist() -> None:
    mounts = 0
    for name, service in SERVICES.items():
        for mount in bind_mounts(service):
            assert mount.source.exists(), f"{name} mounts {mount.source}, which is not in the repo"
            assert ROOT in mount.source.parents, f"{name} mounts {mount.source} outside the repo"
            mounts += 1
        if "build" in service:
            context = ROOT / (service["build"] if isinstance(service["build"], str) else ".")
            assert (context / "Dockerfile").is_file(), name
    assert mounts >= 6


def test_container_paths_are_in_mounts() -> None:
    """A path a command or variable names under a mounted folder is a file the repo has."""
    for name, service in SERVICES.items():
        mounts = list(bind_mounts(service))
        words = [*argv(service, []), *map(str, (service.get("environment") or {}).values())]
        for path in (p for w in words for p in re.findall(r"(?<![\w:])(/[\w./-]+)", w)):
            for m in mounts:
                if path == m.target or path.startswith(m.target.rstrip("/") + "/"):
                    host = m.source / Path(path).relative_to(m.target)
                    assert host.exists(), f"{name}: {path} is {host}, which does not exist"


def test_gpu_workers_run_what_sglang_args_prints() -> None:
    specs = {s.name: s for s in launch_specs(load_cluster(CLUSTER_FILE), str(CLUSTER_FILE))}
    seen = set()
    for name, service in SERVICES.items():
        if not str(service.get("image", "")).startswith(SGLANG_IMAGE):
            continue
        (worker,) = aliases(name, service) & set(specs)
        spec = specs[worker]
        hint = f"{name}: run `dualpath sglang-args --config deploy/cluster.yaml --format json`"
        assert argv(service, []) == list(spec.argv), hint
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        assert {k: env.get(k) for k, _ in spec.env} == dict(spec.env), hint
        assert in_profile(service, "gpu") and not in_profile(service, "sim")
        seen.add(worker)
    assert seen == set(specs), "every worker of deploy/cluster.yaml has a gpu service"


def _option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def test_sim_workers_match_the_cluster_file() -> None:
    sim = {
        alias: argv(s, ["dualpath"])
        for n, s in SERVICES.items()
        if in_profile(s, "sim") and _ours(n) and "worker" in s.get("command", [])
        for alias in aliases(n, s)
    }
    for w in load_cluster(CLUSTER_FILE).workers:
        url = urlsplit(w.url)
        args = sim[url.hostname or ""]
        assert _option(args, "--role") == w.role
        assert _option(args, "--port") == str(url.port)
        if w.role == "prefill":
            assert _option(args, "--bootstrap-port") == str(w.bootstrap_port or 8998)


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_serves_the_cluster_file(profile: str) -> None:
    (service,) = (
        s for n, s in SERVICES.items() if in_profile(s, profile) and "gateway" in aliases(n, s)
    )
    args = argv(service, ["dualpath"])
    assert _option(args, "--config") == "/deploy/cluster.yaml"
    assert any(m.source == CLUSTER_FILE for m in bind_mounts(service))
    assert _option(args, "--port") == "8000"
    env = service["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["OTEL_SERVICE_NAME"] == "dualpath-gateway"


def test_prometheus_scrapes_gateway_and_workers() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in config["scrape_configs"]
    }
    workers = {urlsplit(w.url).netloc for w in load_cluster(CLUSTER_FILE).workers}
    assert jobs["workers"] == workers
    assert jobs["dualpath-gateway"] == {"gateway:8000"}
    assert jobs["mooncake-master"] == {"mooncake-master:9003"}
    assert _option(argv(SERVICES["mooncake-master"], []), "--metrics_port") == "9003"


def test_otel_collector_forwards_traces_to_jaeger() -> None:
    config = yaml.safe_load((ROOT / "deploy/otel-collector.yaml").read_text())
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    exporters = [config["exporters"][e] for e in pipeline["exporters"]]
    assert any(e.get("endpoint") == "jaeger:4317" for e in exporters)


def test_grafana_dashboard_is_provisioned() -> None:
    grafana = SERVICES["grafana"]
    targets = {m.target: m.source for m in bind_mounts(grafana)}
    provisioning = targets["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources/datasources.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    (provider,) = yaml.safe_load((provisioning / "dashboards/dashboards.yml").read_text())[
        "providers"
    ]
    folder = targets[provider["options"]["path"]]
    dashboards = sorted(folder.glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert {p["datasource"]["uid"] for p in dashboard["panels"]} <= uids
        used = {m.removesuffix("_bucket") for e in exprs for m in re.findall(r"dualpath_\w+", e)}
        assert used == DASHBOARD_METRICS, path


def test_dockerfile_installs_every_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\S*$", dockerfile, re.MULTILINE))
    assert packages <= copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not (copied | {"pyproject.toml", "README.md"}) & ignored
    (extras,) = re.findall(r'pip install --no-cache-dir "\.\[([\w,-]+)\]"', dockerfile)
    assert set(extras.split(",")) <= set(project["project"]["optional-dependencies"])
    assert COMPOSE_FILE.name in ignored
