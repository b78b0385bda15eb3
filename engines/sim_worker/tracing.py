"""Traces of a simulated worker's requests: the worker's half of the gateway's trace.

Off unless the same `OTEL_*` variables as the gateway's ask for it (`engines.otel`). On, each
generation request is a SERVER span, the child of the `traceparent` the gateway's leg sent (or a
new trace), with a child per modelled phase:

    sim_worker.prefill | sim_worker.decode | sim_worker.null   SERVER
    ├── kv.read           prefill: hit blocks loaded along the read path (or the prefix cache)
    ├── prefill.compute   prefill: the modelled forward pass over the append tokens
    ├── kv.persist        prefill: the new blocks written through to the store
    ├── kv.stage          decode, read paths `de`/`split`: hit blocks read and staged for the PE
    ├── pd.wait           decode: waiting for the prefill's room (its first token)
    ├── kv.transfer       decode: the KV it lacks, over the compute network
    └── decode            the decode steps, first token to finish

Spans are passed explicitly (never made "current"), because one request's generator runs in
several tasks. No prompt or completion text is ever recorded here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engines.otel import provider_from_env
from engines.sim_worker.config import SimWorkerConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from engines.sim_worker.inputs import GenRequest
    from engines.sim_worker.worker import ReqState

SERVICE = "dualpath-sim-worker"
TRACER = "dualpath.sim_worker"
_PROPAGATOR = TraceContextTextMapPropagator()
T = TypeVar("T")


class WorkerTracing:
    """A worker's tracer provider, owned by the app's lifespan."""

    def __init__(self, provider: TracerProvider, config: SimWorkerConfig) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER)
        self._role = config.role
        self._model = config.served_model_name

    @classmethod
    def from_env(cls, config: SimWorkerConfig) -> WorkerTracing | None:
        resource = {
            "dualpath.role": config.role,
            "service.instance.id": f"{config.role}@{config.host}:{config.port}",
        }
        provider = provider_from_env(SERVICE, resource)
        return None if provider is None else cls(provider, config)

    def parent(self, headers: Mapping[str, str]) -> Context:
        """The caller's trace context from its `traceparent` (empty when it sent none)."""
        return _PROPAGATOR.extract(headers)

    def begin(self, req: GenRequest, parent: Context | None) -> Span:
        attrs: dict[str, Any] = {
            "dualpath.role": self._role,
            "dualpath.rid": req.rid,
            "gen_ai.request.model": self._model,
            "gen_ai.request.max_tokens": req.max_new_tokens,
            "dualpath.prompt_tokens": len(req.prompt_ids),
        }
        if req.bootstrap is not None:
            attrs["dualpath.bootstrap_room"] = req.bootstrap.room
        if req.kv is not None:
            attrs["dualpath.read_path"] = req.kv.read_path
            if req.kv.expected_hit_tokens is not None:
                attrs["dualpath.expected_hit_tokens"] = req.kv.expected_hit_tokens
        return self.tracer.start_span(
            f"sim_worker.{self._role}", context=parent, kind=SpanKind.SERVER, attributes=attrs
        )

    def end(self, span: Span, state: ReqState) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.usage.input_tokens": state.prompt_tokens,
            "gen_ai.usage.output_tokens": len(state.output_ids),
            "dualpath.cached_tokens": state.cached_tokens,
        }
        reason = state.finish_reason or {}
        if reason.get("type"):
            attrs["gen_ai.response.finish_reasons"] = (str(reason["type"]),)
        span.set_attributes(attrs)
        if state.error is not None:
            span.set_attribute("error.type", state.error.err_type)
            span.set_status(Status(StatusCode.ERROR, state.error.message[:512]))
        span.end()

    @contextmanager
    def stage(self, parent: Span, name: str) -> Iterator[Span]:
        span = self.tracer.start_span(name, context=set_span_in_context(parent))
        try:
            yield span
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:512]))
            raise
        except GeneratorExit:  # the stream's consumer closed it: its end, or a client gone
            raise
        except BaseException:  # cancelled (aborted)
            span.set_attribute("dualpath.cancelled", True)
            raise
        finally:
            span.end()

    async def within(self, parent: Span, name: str, work: Awaitable[T]) -> T:
        """`await work` inside a child span of `parent` named `name`."""
        with self.stage(parent, name):
            return await work

    def shutdown(self) -> None:
        """Flush what is queued (bounded by `OTEL_BSP_EXPORT_TIMEOUT`) and stop exporting."""
        self.provider.shutdown()
