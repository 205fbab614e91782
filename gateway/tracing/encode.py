"""Spans to the bytes of an OTLP `ExportTraceServiceRequest`, written directly.

The exporter package's encoder makes a protobuf message for every span, attribute
and value and hands each to its parent's constructor, which copies it again: ~90 us
per span on the bench machine, more than the gateway's whole work on a request. This
writes the same wire format (opentelemetry-proto's trace.proto, checked field for
field against that encoder in tests/test_tracing.py), and keeps the bytes of the
attributes that repeat, such as `gen_ai.operation.name = chat`, so most of a span is
joined, not encoded. The gateway's spans have no events or links.

One `Encoder` per exporter; it runs on the batch processor's thread only.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan

MAX_CACHED = 4096            # repeated (key, value) pairs kept as bytes
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200   # SpanFlags: the parent's is_remote is known / set


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF   # int64 negatives: two's complement, ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


SMALL = tuple(bytes((n,)) for n in range(128))   # one-byte varints, the usual lengths


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    n = len(payload)
    return tag + (SMALL[n] if n < 128 else _varint(n)) + payload


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
# ExportTraceServiceRequest.resource_spans; ResourceSpans / ScopeSpans fields.
RESOURCE_SPANS = _tag(1, LEN)
RS_RESOURCE, RS_SCOPE_SPANS, RS_SCHEMA = _tag(1, LEN), _tag(2, LEN), _tag(3, LEN)
SS_SCOPE, SS_SPANS, SS_SCHEMA = _tag(1, LEN), _tag(2, LEN), _tag(3, LEN)
RESOURCE_ATTRIBUTE = _tag(1, LEN)
SCOPE_NAME, SCOPE_VERSION = _tag(1, LEN), _tag(2, LEN)
# Span fields.
TRACE_ID, SPAN_ID, TRACE_STATE, PARENT_ID = (_tag(1, LEN), _tag(2, LEN), _tag(3, LEN),
                                             _tag(4, LEN))
NAME, KIND, START, END = _tag(5, LEN), _tag(6, VARINT), _tag(7, FIXED64), _tag(8, FIXED64)
ATTRIBUTE, STATUS, FLAGS = _tag(9, LEN), _tag(15, LEN), _tag(16, FIXED32)
STATUS_MESSAGE, STATUS_CODE = _tag(2, LEN), _tag(3, VARINT)
# KeyValue and AnyValue fields.
KEY, VALUE = _tag(1, LEN), _tag(2, LEN)
STRING, BOOL, INT, DOUBLE, ARRAY = (_tag(1, LEN), _tag(2, VARINT), _tag(3, VARINT),
                                    _tag(4, FIXED64), _tag(5, LEN))
ARRAY_VALUE = _tag(1, LEN)


def any_value(value: Any) -> bytes:
    """An AnyValue message."""
    if isinstance(value, str):
        return _field(STRING, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bool):
        return BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return INT + _varint(value)
    if isinstance(value, float):
        return DOUBLE + struct.pack("<d", value)
    if isinstance(value, (tuple, list)):
        return _field(ARRAY, b"".join(_field(ARRAY_VALUE, any_value(v)) for v in value))
    return any_value(str(value))


def key_value(key: str, value: Any) -> bytes:
    """A KeyValue message."""
    return _field(KEY, key.encode("utf-8", "surrogatepass")) + _field(VALUE, any_value(value))


class Encoder:
    def __init__(self) -> None:
        self._pairs: dict[tuple[str, Any], bytes] = {}   # (key, value) -> Span.attributes field
        self._heads: dict[tuple[int, Any], bytes] = {}   # (resource, scope) -> their fields

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        groups: dict[tuple[int, Any], list[bytes]] = {}
        resources: dict[int, Any] = {}
        for span in spans:
            key = (id(span.resource), span.instrumentation_scope)
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
                resources[key[0]] = span.resource
            group.append(self._span(span))
        by_resource: dict[int, list[bytes]] = {}
        for (resource, scope), encoded in groups.items():
            scope_spans = self._scope(scope) + b"".join(_field(SS_SPANS, s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _field(SS_SCHEMA, scope.schema_url.encode())
            by_resource.setdefault(resource, []).append(_field(RS_SCOPE_SPANS, scope_spans))
        out = []
        for rid, scope_spans in by_resource.items():
            resource = resources[rid]
            body = _field(RS_RESOURCE, b"".join(
                _field(RESOURCE_ATTRIBUTE, key_value(k, v))
                for k, v in resource.attributes.items())) + b"".join(scope_spans)
            if resource.schema_url:
                body += _field(RS_SCHEMA, resource.schema_url.encode())
            out.append(_field(RESOURCE_SPANS, body))
        return b"".join(out)

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return _field(SS_SCOPE, b"")   # present though empty, as the exporter's encoder has it
        field = _field(SCOPE_NAME, scope.name.encode())
        if scope.version:
            field += _field(SCOPE_VERSION, scope.version.encode())
        return _field(SS_SCOPE, field)

    def _span(self, span: ReadableSpan) -> bytes:
        ctx = span.context
        parts = [TRACE_ID, b"\x10", ctx.trace_id.to_bytes(16, "big"),
                 SPAN_ID, b"\x08", ctx.span_id.to_bytes(8, "big")]
        if ctx.trace_state:
            parts.append(_field(TRACE_STATE, ctx.trace_state.to_header().encode()))
        flags = HAS_IS_REMOTE
        parent = span.parent
        if parent is not None:
            parts += (PARENT_ID, b"\x08", parent.span_id.to_bytes(8, "big"))
            if parent.is_remote:
                flags |= IS_REMOTE
        parts += (_field(NAME, span.name.encode("utf-8", "surrogatepass")),
                  KIND, _varint(span.kind.value + 1),   # OTLP counts from UNSPECIFIED = 0
                  START, span.start_time.to_bytes(8, "little"),
                  END, span.end_time.to_bytes(8, "little"))
        pairs = self._pairs
        for item in (span.attributes or {}).items():
            try:
                encoded, cacheable = pairs.get(item), True
            except TypeError:    # an unhashable value (a list): encoded each time
                encoded, cacheable = None, False
            if encoded is None:
                encoded = _field(ATTRIBUTE, key_value(*item))
                value = item[1]
                if cacheable and (isinstance(value, (str, tuple)) or isinstance(value, int)
                                  and -1 < value < 1000):
                    if len(pairs) >= MAX_CACHED:
                        pairs.clear()
                    pairs[item] = encoded
            parts.append(encoded)
        status = span.status
        code = status.status_code.value
        payload = b""
        if status.description:
            payload += _field(STATUS_MESSAGE, status.description.encode())
        if code:
            payload += STATUS_CODE + _varint(code)
        parts += (_field(STATUS, payload), FLAGS, flags.to_bytes(4, "little"))
        return b"".join(parts)
