"""The tracer of one app: provider, sampler, batch span processor and OTLP/HTTP exporter.

Nothing global: no tracer provider is registered with the OpenTelemetry API and no
exit hook is installed; the app's cleanup context starts this and shuts it down,
which flushes the spans still queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter

from ..config import TracingConfig, url_without_password
from .export import GuardedExporter
from .spans import RequestTrace

if TYPE_CHECKING:
    from aiohttp import web

    from ..metrics import Metrics
    from ..record import RequestRecord

TRACER_NAME = "llm-edge-gateway"


class Tracing:
    """What requests start their spans from (`Gateway.tracing` while tracing is on)."""

    __slots__ = ("provider", "tracer", "propagator")

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        self.propagator = TraceContextTextMapPropagator()

    def start_request(self, request: web.Request, rec: RequestRecord) -> RequestTrace:
        return RequestTrace(self, request, rec)

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout), then stop."""
        self.provider.shutdown()


class HashedOnce(Resource):
    """The span encoder groups every span of a batch by its resource, hashing it each
    time, and a Resource hashes by JSON-dumping its attributes: ~15 us per span. A
    resource never changes once made, so this one hashes once."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def start_tracing(config: TracingConfig, metrics: Metrics) -> Tracing:
    dropped = Counter("gateway_trace_spans_dropped",
                      "Spans not delivered to the trace collector, by why.",
                      ["reason"], registry=metrics.registry)
    for reason in ("export_failed", "collector_down"):
        dropped.labels(reason)   # present from the start, so rate() sees the first drop
    exporter = GuardedExporter(
        OTLPSpanExporter(endpoint=config.traces_url, timeout=config.export_timeout_s),
        url_without_password(config.traces_url), dropped)
    # A client's sampled flag is followed either way; sample_ratio decides new traces.
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
                              resource=HashedOnce(Resource.create({SERVICE_NAME: config.service_name})),
                              shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(
        exporter, schedule_delay_millis=config.export_delay_s * 1000))
    return Tracing(provider)
