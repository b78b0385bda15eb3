"""`engines.otel`: the provider each process builds from the `OTEL_*` environment."""

from __future__ import annotations

import pytest

from engines.otel import TracingConfigError, provider_from_env


def _exporters(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for key, value in env.items():  # the exporters read the process environment themselves
        monkeypatch.setenv(key, value)
    provider = provider_from_env("svc", env=env)
    assert provider is not None
    try:
        processors = provider._active_span_processor._span_processors  # no public view
        return [type(p.span_exporter).__module__ for p in processors]  # type: ignore[attr-defined]
    finally:
        provider.shutdown()


def test_off_builds_nothing() -> None:
    assert provider_from_env("svc", env={}) is None
    assert provider_from_env("svc", env={"OTEL_TRACES_EXPORTER": "none"}) is None


def test_each_exporter_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    modules = _exporters(env, monkeypatch)
    assert modules[0].startswith("opentelemetry.exporter.otlp.proto.grpc")
    assert modules[1] == "opentelemetry.sdk.trace.export"
    http = _exporters({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}, monkeypatch)
    assert http[0].startswith("opentelemetry.exporter.otlp.proto.http")


def test_service_name_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    env = {"OTEL_TRACES_EXPORTER": "console"}
    provider = provider_from_env("dualpath-x", {"dualpath.role": "decode"}, env=env)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "dualpath-x"
    assert provider.resource.attributes["dualpath.role"] == "decode"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
    provider = provider_from_env("dualpath-x", env=env)
    assert provider is not None and provider.resource.attributes["service.name"] == "mine"
    provider.shutdown()


def test_an_unknown_exporter_stops_the_start() -> None:
    with pytest.raises(TracingConfigError, match="unknown trace exporter 'zipkinx'"):
        provider_from_env("svc", env={"OTEL_TRACES_EXPORTER": "zipkinx"})
