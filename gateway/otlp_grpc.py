"""OTLP/gRPC for pre-encoded requests: the SDK's gRPC span exporter, its request hook returning
bytes that a stub sends unchanged. Imported only when `grpc` is the protocol (grpc's import costs
about 0.2 s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass(frozen=True, slots=True)
class Encoded:
    """One `ExportTraceServiceRequest`'s bytes and how many spans it holds (for the SDK's
    metrics)."""

    request: bytes
    spans: int


class BytesStub:
    """`TraceServiceStub` whose `Export` takes the request's bytes (no serializer)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class PreEncodedExporter(OTLPSpanExporter):
    """Everything the SDK's exporter does (channel, credentials, headers, compression, retries,
    reconnecting on UNAVAILABLE, the timeout), for `Encoded` batches instead of spans."""

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # also on reconnect: replace its stub each time
        self._client: Any = BytesStub(self._channel)

    def _translate_data(self, data: Encoded) -> bytes:  # type: ignore[override]
        return data.request

    def _count_data(self, data: Encoded) -> int:  # type: ignore[override]
        return data.spans


class GrpcSender:
    """Sends each request with the exporter's retry loop (`_export`), within `timeout_s`."""

    def __init__(self, timeout_s: float) -> None:
        self._exporter = PreEncodedExporter(timeout=timeout_s)
        if not isinstance(getattr(self._exporter, "_client", None), BytesStub):
            self._exporter.shutdown()
            raise NotImplementedError("this OTLP/gRPC exporter builds its stub elsewhere")

    def send(self, request: bytes, spans: int) -> bool:
        result = self._exporter._export(Encoded(request, spans))
        return bool(result == SpanExportResult.SUCCESS)

    def shutdown(self) -> None:
        self._exporter.shutdown()
