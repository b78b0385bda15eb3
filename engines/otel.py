"""OpenTelemetry bootstrap from the standard `OTEL_*` environment, for every process of ours.

The gateway (`gateway/tracing.py`) and the simulated workers (`engines/sim_worker/tracing.py`)
both start their tracer provider here; `engines` is the lowest package both may import.

Tracing is **off by default**: unlike the SDK's own auto-configuration (whose default exporter is
`otlp`), a process traces only when `OTEL_TRACES_EXPORTER` names an exporter other than `none`,
or an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` / `…_TRACES_ENDPOINT`, which then
means `otlp`); `OTEL_SDK_DISABLED=true` turns it off whatever else is set. Off, nothing of the SDK
is imported or installed and `provider_from_env` returns None.

Exporters (`OTEL_TRACES_EXPORTER`, comma-separated): `otlp` (the protocol from
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the
specification's default, or `grpc`), `otlp_proto_http`, `otlp_proto_grpc`, `console`, or any
name registered in the `opentelemetry_traces_exporter` entry-point group. Everything else is the
SDK's own: the exporters read their endpoint, headers, compression and timeout (10 s by default:
`OTEL_EXPORTER_OTLP_TIMEOUT`) from the environment, the batch processor its bounded queue and
delays (`OTEL_BSP_*`), the provider its sampler (`OTEL_TRACES_SAMPLER`) and the resource its
attributes (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; `service_name` here is only the
default when neither names the service).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

OTLP_HTTP = "otlp_proto_http"
OTLP_GRPC = "otlp_proto_grpc"
_PROTOCOLS = {"http/protobuf": OTLP_HTTP, "grpc": OTLP_GRPC}
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingConfigError(ValueError):
    """An `OTEL_*` variable names something we cannot set up (fails the process's start)."""


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The trace exporters the environment asks for, resolved (`otlp` → by protocol); empty when
    tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw and any(env.get(name, "").strip() for name in _ENDPOINTS):
        raw = "otlp"
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names or [n.lower() for n in names] == ["none"]:
        return []
    return [_resolve(n.lower(), env) for n in names if n.lower() != "none"]


def _resolve(name: str, env: Mapping[str, str]) -> str:
    if name != "otlp":
        return name
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    ) or "http/protobuf"
    resolved = _PROTOCOLS.get(protocol.strip().lower())
    if resolved is None:
        raise TracingConfigError(
            f"OTLP protocol {protocol!r} is not supported: http/protobuf or grpc"
        )
    return resolved


def check_exporters(names: list[str]) -> None:
    """Raise `TracingConfigError` for a name no exporter answers to, without importing any (a
    process that exports elsewhere learns of a typo at its start, not from a dead exporter)."""
    for name in names:
        if name not in (OTLP_HTTP, OTLP_GRPC, "console") and not entry_points(
            group="opentelemetry_traces_exporter", name=name
        ):
            raise TracingConfigError(
                f"unknown trace exporter {name!r} in OTEL_TRACES_EXPORTER: "
                "otlp, otlp_proto_http, otlp_proto_grpc, console or none"
            )


def _exporter(name: str) -> SpanExporter:
    # Our three by import, so they work without entry-point metadata (e.g. a vendored tree).
    if name == OTLP_HTTP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == OTLP_GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise TracingConfigError(
            f"unknown trace exporter {name!r} in OTEL_TRACES_EXPORTER: "
            "otlp, otlp_proto_http, otlp_proto_grpc, console or none"
        )
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def exporters_from_env(env: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """One exporter per name the environment gives (empty when tracing is off)."""
    return [_exporter(n) for n in exporter_names(os.environ if env is None else env)]


def resource_for(service_name: str, attributes: Mapping[str, Any] | None = None) -> Resource:
    """The SDK's resource from `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES` and `attributes`,
    named `service_name` when neither names the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create(dict(attributes or {}))
    named = str(resource.attributes.get(SERVICE_NAME, ""))
    if named.startswith("unknown_service"):  # neither OTEL_SERVICE_NAME nor the attributes
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return resource


def provider_from_env(
    service_name: str,
    resource_attributes: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """A tracer provider with one batch processor per exporter the environment names, or None
    when tracing is off. It is not installed globally: the caller owns it and shuts it down
    (which flushes what is queued, within `OTEL_BSP_EXPORT_TIMEOUT`)."""
    exporters = exporters_from_env(env)
    if not exporters:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = resource_for(service_name, resource_attributes)
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
