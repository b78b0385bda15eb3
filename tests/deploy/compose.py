"""Reading docker-compose.yml as Compose would, without a Docker engine (test helpers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CLUSTER_FILE = ROOT / "deploy" / "cluster.yaml"
PROFILES = ("gpu", "sim")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The file as Compose sees it before interpolation (YAML anchors and `<<` merges applied)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by the check-jsonschema package."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


@dataclass(frozen=True, slots=True)
class Mount:
    source: Path
    """On the host, resolved against the compose file's folder."""
    target: str


def bind_mounts(service: dict[str, Any], base: Path = ROOT) -> Iterator[Mount]:
    """The service's bind mounts of repository paths (relative sources); named volumes and
    host paths such as `${HF_HOME}` are not the repository's to provide."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":", 1)[0]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith("."):
            yield Mount((base / source).resolve(), target)


def argv(service: dict[str, Any], default_entrypoint: list[str]) -> list[str]:
    """What the container runs: entrypoint (the image's unless overridden) + command."""
    entrypoint = service.get("entrypoint", default_entrypoint)
    command = service.get("command", [])
    assert isinstance(entrypoint, list) and isinstance(command, list), "use the list forms"
    return [str(a) for a in [*entrypoint, *command]]


def aliases(name: str, service: dict[str, Any]) -> set[str]:
    """Names the service answers to on the default network."""
    networks = service.get("networks") or {}
    default = networks.get("default") or {} if isinstance(networks, dict) else {}
    return {name, *default.get("aliases", [])}


def in_profile(service: dict[str, Any], profile: str) -> bool:
    return profile in service.get("profiles", [])
