"""The tracing of one app: sampler, ids, resource, batch span processor, OTLP exporter.

Nothing global: no tracer provider is registered with the OpenTelemetry API and no
exit hook is installed; the app's cleanup context starts this and shuts it down,
which flushes the spans still queued.

The spans themselves are made by `spans.py` from what the request did, as the SDK's
`ReadableSpan`s, and handed to the SDK's `BatchSpanProcessor`: the SDK's live spans
(a lock, validated attributes, processor calls on start and end) cost ~60 us per
request of two spans on the bench machine, these ~7 us. The sampler, the ids, the
batching thread and the exporter's HTTP client are the SDK's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler,
                                              TraceIdRatioBased)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter

from ..config import TracingConfig, url_without_password
from .export import GuardedExporter
from .spans import RequestTrace

if TYPE_CHECKING:
    from aiohttp import web

    from ..metrics import Metrics
    from ..record import RequestRecord

SCOPE = "llm-edge-gateway"
EXPORT_BATCH = 512   # spans per export: the SDK's default


class Tracing:
    """What requests make their spans with (`Gateway.tracing` while tracing is on)."""

    __slots__ = ("sampler", "root_always", "ids", "resource", "scope", "processor", "propagator",
                 "route_cache", "_exporter", "_queue_size", "_emitted")

    def __init__(self, config: TracingConfig, exporter: GuardedExporter) -> None:
        # A client's sampled flag is followed either way; sample_ratio decides new traces.
        self.sampler = ParentBased(root_sampler(config.sample_ratio))
        # What that sampler answers for every new trace at ratio 1 or 0 (None: it decides).
        ratio = config.sample_ratio
        self.root_always = True if ratio >= 1 else False if ratio <= 0 else None
        self.ids = RandomIdGenerator()
        self.resource = HashedOnce(Resource.create({SERVICE_NAME: config.service_name}))
        self.scope = InstrumentationScope(SCOPE)
        self.processor = BatchSpanProcessor(
            exporter, max_queue_size=config.queue_size,
            max_export_batch_size=min(EXPORT_BATCH, config.queue_size),
            schedule_delay_millis=config.export_delay_s * 1000)
        self._exporter = exporter
        self._queue_size = config.queue_size
        self._emitted = 0
        self.propagator = TraceContextTextMapPropagator()
        self.route_cache: dict[tuple, tuple[str, ...]] = {}   # decision.py: per candidate set

    def start_request(self, request: web.Request, rec: RequestRecord) -> RequestTrace:
        return RequestTrace(self, request, rec)

    def emit(self, span: ReadableSpan) -> None:
        """Queue a sampled span for the batch thread. Spans queued minus spans the exporter
        took is at least the queue's length (the thread takes a batch, then exports it),
        so a full queue is seen here first: the drop is counted instead of silent."""
        if self._emitted - self._exporter.received >= self._queue_size:
            self._exporter.queue_full()
            return
        self._emitted += 1
        self.processor.on_end(span)

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout), then stop."""
        self.processor.shutdown()


def root_sampler(ratio: float) -> Sampler:
    """The SDK's sampler for new traces; its constant ones at 0 and 1 skip the hash test."""
    if ratio >= 1:
        return ALWAYS_ON
    if ratio <= 0:
        return ALWAYS_OFF
    return TraceIdRatioBased(ratio)


class HashedOnce(Resource):
    """The SDK's span encoder groups every span of a batch by its resource, hashing it each
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
    for reason in ("export_failed", "collector_down", "queue_full"):
        dropped.labels(reason)   # present from the start, so rate() sees the first drop
    exporter = GuardedExporter(
        OTLPSpanExporter(endpoint=config.traces_url, timeout=config.export_timeout_s),
        url_without_password(config.traces_url), dropped)
    return Tracing(config, exporter)
