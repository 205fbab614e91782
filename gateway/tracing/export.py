"""The exporter guard: a collector that is down costs neither the gateway nor its queue.

The OTLP exporter retries a refused connection with backoff for up to its timeout,
holding the batch processor's thread the whole time, while new spans pile up in its
queue. Once an export fails, this guard drops each batch at once (counted) and only
lets one export through every `PROBE_S` to see whether the collector is back. The
outage is logged once when it starts and once when it ends; the exporter's own
per-batch messages are filtered out (`log.quiet_trace_exporter`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..log import trace_logger

PROBE_S = 5.0


class GuardedExporter(SpanExporter):
    """Runs on the batch processor's thread only: its state needs no lock."""

    def __init__(self, inner: SpanExporter, where: str, dropped: Any,
                 probe_s: float = PROBE_S) -> None:
        self._inner = inner
        self._where = where              # the collector's URL, without a password
        self._dropped = dropped          # gateway_trace_spans_dropped_total{reason}
        self._probe_s = probe_s
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._lost = 0
        self.received = 0                # spans handed to export() so far
        self._full_logged = False

    def queue_full(self) -> None:
        """The event loop's thread: a span found the batch queue full and was dropped."""
        self._dropped.labels("queue_full").inc()
        if not self._full_logged:
            self._full_logged = True
            trace_logger.warning("traces: the collector at %s takes spans slower than they "
                                 "come; dropping them while the queue is full (counted in "
                                 "gateway_trace_spans_dropped_total)", self._where)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.received += len(spans)
        now = time.monotonic()
        if self._down_since is not None and now < self._probe_at:
            self._drop("collector_down", len(spans))
            return SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        except Exception:   # an exporter bug must not end the batch thread's loop
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._full_logged = False
            if self._down_since is not None:
                trace_logger.warning("traces: the collector at %s answers again after %.0f s; "
                                     "%d spans were dropped meanwhile", self._where,
                                     now - self._down_since, self._lost)
                self._down_since, self._lost = None, 0
            return result
        self._drop("export_failed", len(spans))
        if self._down_since is None:
            self._down_since = now
            trace_logger.warning("traces: cannot export spans to %s; dropping them until it "
                                 "answers (counted in gateway_trace_spans_dropped_total)",
                                 self._where)
        self._probe_at = time.monotonic() + self._probe_s
        return result

    def _drop(self, reason: str, count: int) -> None:
        self._lost += count
        self._dropped.labels(reason).inc(count)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
