"""A request's spans: one SERVER span, a CLIENT child per upstream try, and their attributes.

Each span is made once, when it ends, as the SDK's `ReadableSpan`, from what the
request did (see setup.py for why not the SDK's live spans); sampling is decided
when the request starts, by the SDK's sampler, and a try follows its request.

Attribute names are the constants of the `opentelemetry-semantic-conventions` release
installed (the GenAI ones are in its incubating set). Spans carry names, models,
counts and reasons; never a key, an upstream credential, a header value or any
prompt or completion text. Contexts are passed explicitly, never attached to the
task, so nothing leaks from one request into another.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import (error_attributes, http_attributes,
                                              server_attributes)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import (SpanContext, SpanKind, Status, StatusCode, TraceFlags,
                                 get_current_span)

from ..errors import Reason, UpstreamError, UpstreamStatus
from ..relay.chat import StreamRewriter
from ..dispatch.decision import explain

if TYPE_CHECKING:
    from aiohttp import web

    from ..dispatch.backend import BackendState
    from ..record import RequestRecord
    from .setup import Tracing

_OPS = gen_ai.GenAiOperationNameValues
# gen_ai.operation.name per endpoint; an API the conventions do not name keeps its own.
OPERATIONS = {"chat": _OPS.CHAT.value, "completions": _OPS.TEXT_COMPLETION.value,
              "embeddings": _OPS.EMBEDDINGS.value, "responses": _OPS.CHAT.value,
              "messages": _OPS.CHAT.value}
# `finish_reason` (OpenAI shapes) and `stop_reason` (Anthropic's), when not null.
_FINISH = re.compile(rb'"(?:finish|stop)_reason":\s*"([^"\\]{1,64})"')
MAX_FINISH_REASONS = 8
UNSET, ERROR = Status(StatusCode.UNSET), Status(StatusCode.ERROR)


class RequestTrace:
    """The SERVER span of one API request, from the handler's start to the log line.

    Until it ends it is a few numbers: the SDK's objects are made only for a sampled
    span, once, when it ends."""

    __slots__ = ("sampled", "operation", "parent", "_tracing", "_trace_id", "_span_id",
                 "_flags", "_state", "_prefix", "_suffix", "_method", "_path", "_start",
                 "_context", "_body", "_finish", "_decision")

    def __init__(self, tracing: Tracing, request: web.Request, rec: RequestRecord) -> None:
        self._tracing = tracing
        self.operation = OPERATIONS.get(rec.endpoint, rec.endpoint)
        self._method, self._path = request.method, request.path
        incoming = (tracing.propagator.extract(request.headers)
                    if "traceparent" in request.headers else None)
        parent = get_current_span(incoming).get_span_context() if incoming else None
        if parent is not None and not parent.is_valid:
            parent = incoming = None
        ids = tracing.ids
        trace_id = parent.trace_id if parent is not None else ids.generate_trace_id()
        state = parent.trace_state if parent is not None else None
        if parent is None and tracing.root_always is not None:
            self.sampled = tracing.root_always   # sample_ratio 1 or 0: nothing to decide
        else:
            decided = tracing.sampler.should_sample(incoming, trace_id, self._path,
                                                    SpanKind.SERVER)
            self.sampled, state = decided.decision.is_sampled(), decided.trace_state
        flags = TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT
        if (parent.trace_flags.random_trace_id if parent is not None
                else ids.is_trace_id_random()):
            flags |= TraceFlags.RANDOM_TRACE_ID
        self.parent = parent
        self._trace_id, self._span_id = trace_id, ids.generate_span_id()
        self._flags, self._state = TraceFlags(flags), state
        # What every try's traceparent shares: `00-<trace id>-` and `-<flags>`.
        self._prefix, self._suffix = "00-%032x-" % trace_id, "-%02x" % flags
        # The middleware made the record a few microseconds ago: the span starts there.
        self._start = time.time_ns() - int((time.perf_counter() - rec.started) * 1e9)
        self._context: SpanContext | None = None
        self._body: bytes | None = None
        self._finish: list[str] = []
        self._decision: dict[str, Any] | None = None

    @property
    def trace_id(self) -> str:
        return self._prefix[3:35]

    @property
    def context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(self._trace_id, self._span_id, is_remote=False,
                                        trace_flags=self._flags, trace_state=self._state)
        return self._context

    def headers_for(self, span_id: int) -> dict[str, str]:
        """W3C trace context headers for a child span: what TraceContextTextMapPropagator
        writes, without the Context objects it builds and reads back on every call."""
        headers = {"traceparent": self._prefix + "%016x" % span_id + self._suffix}
        if self._state:
            headers["tracestate"] = self._state.to_header()
        return headers

    def routed(self, stage_index: int, stage: Any, capable: Any, tried: set[str],
               route: Any, chosen: BackendState, engine: Any = None) -> None:
        """The dispatcher picked `chosen`: why, as attributes (only for a sampled span)."""
        if self.sampled:
            self._decision = explain(stage_index, stage, capable, tried, route, chosen,
                                     self._tracing.route_cache, engine)

    def start_try(self, backend: BackendState, model_id: str) -> TrySpan:
        return TrySpan(self, backend, model_id)

    def answered(self, body: bytes) -> None:
        """A whole answer: its finish reasons are read at the end, if the span is sampled."""
        self._body = body

    def stream_rewriter(self, patterns: Any, drop_usage: bool,
                        end_marker: bytes | None = None) -> StreamRewriter:
        return FinishReasonRewriter(patterns, drop_usage, self._finish, end_marker)

    def end(self, rec: RequestRecord) -> None:
        if not self.sampled:
            return
        failed = rec.status >= 500 or (rec.aborted and rec.aborted != Reason.CLIENT_LEFT)
        tracing = self._tracing
        tracing.emit(ReadableSpan(
            f"{self.operation} {rec.model}" if rec.model else f"{self._method} {self._path}",
            self.context, self.parent, tracing.resource, self._attributes(rec),
            kind=SpanKind.SERVER, status=ERROR if failed else UNSET, start_time=self._start,
            end_time=time.time_ns(), instrumentation_scope=tracing.scope))

    def _attributes(self, rec: RequestRecord) -> dict[str, Any]:
        # Every attribute costs on every request, made, queued and encoded: each span
        # carries what answers "where did it go, why, and how did it do", no more.
        out: dict[str, Any] = {gen_ai.GEN_AI_OPERATION_NAME: self.operation,
                               http_attributes.HTTP_RESPONSE_STATUS_CODE: rec.status}
        if rec.model:
            out[gen_ai.GEN_AI_REQUEST_MODEL] = rec.model
            if rec.status == 200:
                out[gen_ai.GEN_AI_RESPONSE_MODEL] = rec.model   # the gateway rewrote it
        if self._decision is not None:
            out.update(self._decision)   # the pick of the try that answered (or failed last)
        if rec.retries:
            out["gateway.retries"] = rec.retries
        if rec.fallback:
            out["gateway.fallback"] = rec.fallback
        usage = rec.usage or {}
        for key, name in (("prompt_tokens", gen_ai.GEN_AI_USAGE_INPUT_TOKENS),
                          ("input_tokens", gen_ai.GEN_AI_USAGE_INPUT_TOKENS),
                          ("completion_tokens", gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS),
                          ("output_tokens", gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS)):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                out[name] = value
        body = self._body
        if body is not None and (b'_reason":"' in body or b'_reason": "' in body):
            finish_reasons(body, self._finish)
        if self._finish:
            out[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(self._finish)
        if rec.stream and rec.first_token_at is not None:
            out[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = rec.first_token_at - rec.started
        failure = rec.aborted or (str(rec.status) if rec.status >= 500 else None)
        if failure:
            out[error_attributes.ERROR_TYPE] = str(failure)
        return out


class TrySpan:
    """The CLIENT span of one upstream try; `headers` carry its context to the runtime."""

    __slots__ = ("headers", "_trace", "_span_id", "_name", "_attributes", "_start")

    def __init__(self, trace: RequestTrace, backend: BackendState, model_id: str) -> None:
        self._span_id = span_id = trace._tracing.ids.generate_span_id()
        # The runtime gets this try's own context, also when the client sent none.
        self.headers = trace.headers_for(span_id)
        self._trace: RequestTrace | None = trace
        self._attributes: dict[str, Any] | None = None
        if trace.sampled:   # a child follows its parent's sampling (ParentBased)
            self._name = f"{trace.operation} {model_id}"
            host, port = host_port(backend.config.url)
            attributes = self._attributes = {
                gen_ai.GEN_AI_OPERATION_NAME: trace.operation,
                gen_ai.GEN_AI_REQUEST_MODEL: model_id,
                gen_ai.GEN_AI_PROVIDER_NAME: backend.config.kind,
                "gateway.backend": backend.name}
            if host:
                attributes[server_attributes.SERVER_ADDRESS] = host
                attributes[server_attributes.SERVER_PORT] = port
            decision = trace._decision
            if decision is not None and "gateway.route.stage" in decision:   # a fallback
                attributes["gateway.route.stage"] = decision["gateway.route.stage"]
                attributes["gateway.route.fallback"] = decision["gateway.route.fallback"]
        self._start = time.time_ns()

    def end(self, error: BaseException | None = None) -> None:
        trace, self._trace = self._trace, None
        if trace is None or self._attributes is None:
            return   # ended already, or not sampled
        attributes = self._attributes
        if error is not None:
            if isinstance(error, UpstreamStatus):
                attributes[http_attributes.HTTP_RESPONSE_STATUS_CODE] = error.status
                kind = str(error.status)
            elif isinstance(error, UpstreamError):
                kind = str(error.reason)
            elif isinstance(error, (ConnectionError, asyncio.CancelledError)):
                kind = str(Reason.CLIENT_LEFT)   # runtime errors come translated: the client's
            else:
                kind = type(error).__qualname__
            attributes[error_attributes.ERROR_TYPE] = kind
        tracing = trace._tracing
        context = SpanContext(trace._trace_id, self._span_id, is_remote=False,
                              trace_flags=trace._flags, trace_state=trace._state)
        tracing.emit(ReadableSpan(
            self._name, context, trace.context, tracing.resource, attributes,
            kind=SpanKind.CLIENT, status=UNSET if error is None else ERROR,
            start_time=self._start, end_time=time.time_ns(),
            instrumentation_scope=tracing.scope))


class FinishReasonRewriter(StreamRewriter):
    """The relay's rewriter, also collecting each choice's finish reason as it passes."""

    __slots__ = ("finish",)

    def __init__(self, patterns: Any, drop_usage: bool, finish: list[str],
                 end_marker: bytes | None = None) -> None:
        super().__init__(patterns, drop_usage, end_marker)
        self.finish = finish

    def feed(self, data: bytes) -> bytes:
        out = super().feed(data)
        # Most chunks say `"finish_reason":null`: only a quoted reason is worth a search.
        if b'_reason":"' in out or b'_reason": "' in out:
            finish_reasons(out, self.finish)
        return out


def finish_reasons(data: bytes, into: list[str]) -> None:
    """Append the distinct non-null finish reasons found in `data` (a few at most)."""
    for found in _FINISH.findall(data):
        reason = found.decode("utf-8", "replace")
        if reason not in into and len(into) < MAX_FINISH_REASONS:
            into.append(reason)


@functools.lru_cache(maxsize=256)
def host_port(url: str) -> tuple[str | None, int | None]:
    """server.address and server.port of a backend URL (parsed once per URL)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return parts.hostname, port
