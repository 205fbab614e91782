"""Traces: spans exported over OTLP/HTTP to a real receiver started by each test.

The receiver is a small aiohttp app on 127.0.0.1 that decodes each export with
`opentelemetry-proto`, as a collector would; the runtimes are the fake ones.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

from gateway.log import AccessLog
from gateway.app import create_app
from gateway.config import (ApiKey, Fallback, RetryConfig, RouteConfig, TracingConfig, backend,
                            check)
from tests.conftest import (CHAT, RUNTIME_ID, bearer, eventually, make_config, runtime_backend,
                            samples, value)

SERVER, CLIENT = PbSpan.SPAN_KIND_SERVER, PbSpan.SPAN_KIND_CLIENT
ERROR = PbStatus.STATUS_CODE_ERROR
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int
    service: str


def _value(v) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


def _attributes(kvs) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces with a protobuf body."""

    bodies: list[bytes] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    delay_s: float = 0.0              # a slow collector: each export waits this long

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)   # a fixed wait: the slowness is the behaviour
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            service = _attributes(rs.resource.attributes).get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(Span(s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                           s.parent_span_id.hex(), _attributes(s.attributes),
                                           s.status.code, service))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Span]:
        assert await eventually(lambda: len(self.spans) >= count, timeout), self.spans
        return self.spans

    def of_trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


class ListLog(AccessLog):
    def __init__(self) -> None:
        self.lines: list[dict] = []

    def enabled(self) -> bool:
        return True

    def write(self, fields: dict[str, Any]) -> None:
        self.lines.append(fields)


@pytest.fixture
async def collector(aiohttp_server):
    c = Collector()
    server = await aiohttp_server(c.app())
    c.url = str(server.make_url(""))
    return c


def traced(url: str, **kw) -> TracingConfig:
    return TracingConfig(otlp_endpoint=url, export_delay_s=0.02, export_timeout_s=2, **kw)


@pytest.fixture
def traced_client(aiohttp_client):
    async def start(config, log: AccessLog | None = None):
        return await aiohttp_client(create_app(config, access_log=log))
    return start


def traceparent(headers: dict[str, str]) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of the W3C traceparent a runtime received.
    The SDK may also set the level-2 "random" flag (0x02): only the sampled bit counts."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    return trace_id, span_id, bool(int(flags, 16) & 1)


def one(spans: list[Span], kind: int) -> Span:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, spans
    return found[0]


async def test_non_streamed_request_has_a_server_span_and_a_client_span(
        start_runtime, collector, traced_client):
    fake_a, a = await start_runtime()
    _, b = await start_runtime()
    log = ListLog()
    cfg = make_config(runtime_backend("gpu-a", a, models={"llama": RUNTIME_ID}, weight=3),
                      runtime_backend("gpu-b", b, models={"llama": RUNTIME_ID}),
                      tracing=traced(collector.url, service_name="gw-test"))
    client = await traced_client(cfg, log)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "gpu-a"
    spans = await collector.wait_for(2)
    server, try_ = one(spans, SERVER), one(spans, CLIENT)
    assert server.service == try_.service == "gw-test"
    assert try_.trace_id == server.trace_id and try_.parent_id == server.span_id
    assert server.parent_id == ""
    assert server.name == "chat llama"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "llama"
    assert attrs["gen_ai.usage.input_tokens"] == 7 and attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert "gen_ai.response.time_to_first_chunk" not in attrs
    assert attrs["http.response.status_code"] == 200
    assert attrs["gateway.route.strategy"] == "weighted"
    assert attrs["gateway.route.candidates"] == ("gpu-a", "gpu-b")
    assert attrs["gateway.route.chosen"] == "gpu-a"
    assert attrs["gateway.route.reason"] == "weight"
    assert attrs["gateway.route.weights"] == ("gpu-a=3", "gpu-b=1")
    assert "gateway.route.stage" not in attrs and "gateway.retries" not in attrs
    assert server.status != ERROR
    t = try_.attributes
    assert try_.name == f"chat {RUNTIME_ID}"
    assert t["gen_ai.request.model"] == RUNTIME_ID and t["gen_ai.provider.name"] == "vllm"
    assert t["server.address"] == "127.0.0.1" and t["server.port"] == a.port
    assert t["gateway.backend"] == "gpu-a" and t["gen_ai.operation.name"] == "chat"
    assert try_.status != ERROR
    # The runtime got the try span's own context; the log line names the trace.
    assert traceparent(fake_a.headers_seen[0]) == (server.trace_id, try_.span_id, True)
    assert log.lines[-1]["trace_id"] == server.trace_id


async def test_streamed_request_spans_carry_ttft_usage_and_finish_reason(
        start_runtime, collector, traced_client):
    fake, server_ = await start_runtime(words=4, chunk_delay=0.01, spaced_json=True)
    cfg = make_config(runtime_backend("gpu-a", server_, models={"llama": RUNTIME_ID}),
                      routes={"llama": RouteConfig(strategy="least_busy")},
                      tracing=traced(collector.url))
    client = await traced_client(cfg)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    spans = await collector.wait_for(2)
    server, try_ = one(spans, SERVER), one(spans, CLIENT)
    assert try_.parent_id == server.span_id and try_.trace_id == server.trace_id
    attrs = server.attributes
    assert attrs["gen_ai.usage.input_tokens"] == 7 and attrs["gen_ai.usage.output_tokens"] == 4
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < 2
    assert attrs["gateway.route.strategy"] == "least_busy"
    assert attrs["gateway.route.reason"] == "only_candidate"
    assert try_.attributes["gen_ai.provider.name"] == "vllm"
    assert traceparent(fake.headers_seen[0]) == (server.trace_id, try_.span_id, True)


async def test_a_retry_then_a_fallback_is_one_client_span_per_try(
        start_runtime, collector, traced_client):
    _, a = await start_runtime(status=503)
    _, b = await start_runtime(status=503)
    _, c = await start_runtime()
    cfg = make_config(
        runtime_backend("a", a, models={"llama": RUNTIME_ID}, weight=5),
        runtime_backend("b", b, models={"llama": RUNTIME_ID}),
        runtime_backend("cloud", c, "openai", models={"llama": "gpt-4o-mini"}),
        routes={"llama": RouteConfig(fallbacks=(Fallback(backend="cloud"),))},
        retries=RetryConfig(attempts=1), tracing=traced(collector.url))
    client = await traced_client(cfg)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "cloud"
    spans = await collector.wait_for(4)
    server = one(spans, SERVER)
    tries = [s for s in spans if s.kind == CLIENT]
    assert len(tries) == 3 and {t.parent_id for t in tries} == {server.span_id}
    first, second, last = sorted(tries, key=lambda t: (t.attributes.get("gateway.route.stage", 0),
                                                       t.attributes["gateway.backend"] != "a"))
    for failed in (first, second):
        assert failed.status == ERROR and failed.attributes["error.type"] == "503"
        assert "gateway.route.stage" not in failed.attributes
    assert [first.attributes["gateway.backend"], second.attributes["gateway.backend"]] == ["a", "b"]
    assert last.status != ERROR and "error.type" not in last.attributes
    assert last.attributes["gateway.route.stage"] == 1
    assert last.attributes["gateway.route.fallback"] == "cloud"
    assert last.attributes["gen_ai.provider.name"] == "openai"
    assert last.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    attrs = server.attributes
    assert attrs["gateway.retries"] == 2 and attrs["gateway.fallback"] == "cloud"
    assert attrs["gateway.route.chosen"] == "cloud" and attrs["gateway.route.stage"] == 1
    assert attrs["gateway.route.fallback"] == "cloud"
    assert attrs["gateway.route.candidates"] == ("cloud",)
    assert attrs["gen_ai.response.model"] == "llama" and server.status != ERROR


async def test_incoming_traceparent_is_continued_and_its_flag_respected(
        start_runtime, collector, traced_client):
    fake, s = await start_runtime()
    cfg = make_config(runtime_backend("gpu-a", s, models={"llama": RUNTIME_ID}),
                      tracing=traced(collector.url, sample_ratio=0.0))
    client = await traced_client(cfg, log := ListLog())
    sampled_trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    unsampled_trace = "0af7651916cd43dd8448eb211c80319c"
    # Not sampled by the client: no span, but the runtime still joins the trace.
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={
        "traceparent": f"00-{unsampled_trace}-b7ad6b7169203331-00"})
    assert resp.status == 200
    trace_id, span_id, sampled = traceparent(fake.headers_seen[-1])
    assert trace_id == unsampled_trace and not sampled and span_id != "b7ad6b7169203331"
    assert log.lines[-1]["trace_id"] == unsampled_trace
    # No traceparent and sample_ratio 0: not sampled, still a context upstream.
    resp = await client.post("/v1/chat/completions", json=CHAT)
    trace_id, _, sampled = traceparent(fake.headers_seen[-1])
    assert not sampled and trace_id not in (sampled_trace, unsampled_trace)
    # A traceparent that is not one starts a trace of the gateway's own.
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"traceparent": "00-not-a-trace-01"})
    assert resp.status == 200
    trace_id, _, sampled = traceparent(fake.headers_seen[-1])
    assert not sampled and log.lines[-1]["trace_id"] == trace_id
    # Sampled by the client: recorded although sample_ratio is 0.
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={
        "traceparent": f"00-{sampled_trace}-{parent}-01"})
    assert resp.status == 200
    spans = await collector.wait_for(2)
    # A fixed wait, the absence is the check: anything else exported would be there by now.
    await asyncio.sleep(0.1)
    assert {sp.trace_id for sp in collector.spans} == {sampled_trace}
    server, try_ = one(spans, SERVER), one(spans, CLIENT)
    assert server.parent_id == parent and try_.parent_id == server.span_id
    assert traceparent(fake.headers_seen[-1]) == (sampled_trace, try_.span_id, True)


CANARY = "sk-canary-7f3c9a1e5b2d4f60"            # a backend's api_key
CLIENT_CANARY = "ck-canary-2b4d6f8a0c1e3a5b"     # a client's key
HEADER_CANARY = "hk-canary-0e9d8c7b6a5f4e3d"     # a backend's secret header
PROMPT_CANARY = "promptcanary91d3e7"             # echoed back as the completion
SESSION_CANARY = "session-canary-5c7e9a1b"


async def test_no_secret_prompt_or_completion_reaches_a_span(start_runtime, collector,
                                                            traced_client):
    _, s = await start_runtime()
    key = ApiKey(name="team-a", key=CLIENT_CANARY)
    cfg = make_config(
        runtime_backend("gpu-a", s, models={"llama": RUNTIME_ID}, api_key=CANARY,
                        headers={"api-key": HEADER_CANARY}),
        backend("e1", "echo", models=["echo"]), backend("e2", "echo", models=["echo"]),
        routes={"echo": RouteConfig(strategy="session_affinity")},
        auth_keys=(key,), tracing=traced(collector.url))
    client = await traced_client(cfg)
    chat = {"model": "llama", "messages": [{"role": "user", "content": PROMPT_CANARY}]}
    assert (await client.post("/v1/chat/completions", json=chat, headers=bearer(key))).status == 200
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", headers={
            **bearer(key), "X-Session-ID": SESSION_CANARY},
            json={**chat, "model": "echo", "stream": stream})
        assert PROMPT_CANARY in await resp.text()
    spans = await collector.wait_for(6)
    affinity = [s.attributes for s in spans if s.kind == SERVER
                and s.attributes.get("gen_ai.request.model") == "echo"]
    assert all(a["gateway.route.reason"] == "affinity_key_hash" for a in affinity)
    assert len({a["gateway.route.affinity_key_hash"] for a in affinity}) == 1
    exported = b"".join(collector.bodies)
    for secret in (CANARY, CLIENT_CANARY, HEADER_CANARY, PROMPT_CANARY, SESSION_CANARY):
        assert secret.encode() not in exported


async def test_collector_down_costs_nothing_and_is_logged_once(start_runtime, traced_client,
                                                               caplog):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()   # nothing listens there now
    _, s = await start_runtime()
    cfg = make_config(runtime_backend("gpu-a", s, models={"llama": RUNTIME_ID}),
                      tracing=traced(f"http://127.0.0.1:{port}"))
    client = await traced_client(cfg)
    caplog.set_level(logging.INFO)
    slowest = 0.0
    for burst in range(3):
        for _ in range(10):
            started = time.perf_counter()
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 200
            await resp.read()
            slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.3)   # several batches, each meeting the outage
    assert slowest < 0.5

    async def dropped_while_down() -> bool:
        found = await samples(client)
        return value(found, "gateway_trace_spans_dropped_total", reason="collector_down") > 0
    await eventually(dropped_while_down, timeout=5, interval=0.05)   # asserted below
    found = await samples(client)
    failed = value(found, "gateway_trace_spans_dropped_total", reason="export_failed")
    down = value(found, "gateway_trace_spans_dropped_total", reason="collector_down")
    assert failed > 0 and down > 0 and failed + down <= 60
    outage = [r for r in caplog.records if r.name == "gateway.tracing"]
    assert len(outage) == 1 and "cannot export spans" in outage[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")
                and r.levelno >= logging.WARNING]


def test_tracing_off_imports_nothing_of_opentelemetry():
    """A whole request, in a fresh interpreter, with no `tracing` section."""
    code = """
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from gateway.app import create_app
from gateway.config import backend
from tests.conftest import make_config

async def main():
    app = create_app(make_config(backend("e", "echo", models=["m"])))
    async with TestClient(TestServer(app)) as client:
        for stream in (False, True):
            resp = await client.post("/v1/chat/completions", json={
                "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status == 200, resp.status
            await resp.read()
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    print(",".join(loaded) or "none")

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"


@pytest.mark.parametrize(("section", "problem"), [
    ("{sample_ratio: 1.5}", "tracing.sample_ratio: must be at most 1"),
    ("{sample_ratio: -0.1}", "tracing.sample_ratio: must be at least 0"),
    ("{otlp_endpoint: 'collector:4318'}", "tracing.otlp_endpoint: must be an http:// or "
                                          "https:// URL with a host, got 'collector:4318'"),
    ("{service_name: ''}", "tracing.service_name: must not be empty"),
    ("{headers: {x: y}}", "tracing.headers: unknown key (expected one of: otlp_endpoint, "
                          "sample_ratio, service_name)"),
])
def test_check_names_the_bad_tracing_key(tmp_path, section, problem):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"backends: {{e: {{kind: echo, models: [m]}}}}\ntracing: {section}\n")
    out = io.StringIO()
    assert check(str(path), out) == 1
    assert out.getvalue() == problem + "\n"


def test_check_accepts_the_design_example(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("backends: {e: {kind: echo, models: [m]}}\n"
                    'tracing: {otlp_endpoint: "http://127.0.0.1:4318", sample_ratio: 1.0, '
                    "service_name: llm-gateway}\n")
    assert check(str(path), io.StringIO()) == 0


async def test_a_saturated_backend_skipped_is_named_in_the_decision(start_runtime, collector,
                                                                    traced_client):
    busy, a = await start_runtime(hang_s=0.5)
    _, b = await start_runtime()
    cfg = make_config(
        runtime_backend("a", a, models={"llama": RUNTIME_ID}, weight=10, max_concurrency=1),
        runtime_backend("b", b, models={"llama": RUNTIME_ID}),
        routes={"llama": RouteConfig(strategy="least_busy")}, tracing=traced(collector.url))
    client = await traced_client(cfg)
    first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    assert await eventually(lambda: busy.requests, timeout=5)   # the first is at `a`
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.headers["X-Gateway-Backend"] == "b"
    assert (await first).headers["X-Gateway-Backend"] == "a"
    spans = await collector.wait_for(4)
    (second,) = [s.attributes for s in spans if s.kind == SERVER
                 and s.attributes["gateway.route.chosen"] == "b"]
    assert second["gateway.route.skipped.saturated"] == ("a",)
    assert second["gateway.route.reason"] == "only_candidate"
    assert second["gateway.route.candidates"] == ("a", "b")
    (first_span,) = [s.attributes for s in spans if s.kind == SERVER
                     and s.attributes["gateway.route.chosen"] == "a"]
    assert first_span["gateway.route.reason"] == "lowest_load"
    assert first_span["gateway.route.in_flight"] == ("a=0", "b=0")
    # These fakes serve no /metrics: the load is the gateway's own count, and it says so.
    assert first_span["gateway.route.load"] == ("a=0", "b=0")
    assert first_span["gateway.route.signal"] == ("a=no_reading", "b=no_reading")
    assert first_span["gateway.route.signal_fallback"] == ("no_reading",)


def test_a_tracing_change_needs_a_restart():
    from gateway.config import Config
    from gateway.reload import restart_required
    assert restart_required(Config(), Config(tracing=TracingConfig())) == ["tracing"]
    assert restart_required(Config(tracing=TracingConfig()), Config(tracing=TracingConfig())) == []


def test_admin_config_hides_a_collector_password():
    from gateway.config import Config, redacted
    data = redacted(Config(tracing=TracingConfig(otlp_endpoint="https://u:s3cret@otlp:4318")))
    assert data["tracing"]["otlp_endpoint"] == "https://u:***@otlp:4318"


async def test_a_slow_collector_drops_what_overflows_the_queue_counted(
        start_runtime, collector, traced_client, caplog):
    collector.delay_s = 0.5
    _, s = await start_runtime()
    cfg = make_config(runtime_backend("gpu-a", s, models={"llama": RUNTIME_ID}),
                      tracing=TracingConfig(otlp_endpoint=collector.url, export_delay_s=0.02,
                                            export_timeout_s=2, queue_size=8))
    client = await traced_client(cfg)
    caplog.set_level(logging.INFO)
    started = time.perf_counter()
    for _ in range(30):
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        await resp.read()
    assert time.perf_counter() - started < 3
    found = await samples(client)
    dropped = value(found, "gateway_trace_spans_dropped_total", reason="queue_full")
    assert dropped > 0
    await collector.wait_for(60 - int(dropped), timeout=10)   # the rest did arrive
    full = [r for r in caplog.records if r.name == "gateway.tracing"]
    assert len(full) == 1 and "slower than they come" in full[0].getMessage()


async def test_sample_ratio_decides_new_traces_by_their_trace_id(collector, traced_client):
    log = ListLog()
    cfg = make_config(backend("e", "echo", models=["m"]),
                      tracing=traced(collector.url, sample_ratio=0.5))
    client = await traced_client(cfg, log)
    for _ in range(40):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200
    # TraceIdRatioBased: sampled when the trace id's low 64 bits are below ratio * 2**64.
    expected = {line["trace_id"] for line in log.lines
                if int(line["trace_id"], 16) & (2**64 - 1) < 2**63}
    assert 0 < len(expected) < 40
    await collector.wait_for(2 * len(expected))
    await asyncio.sleep(0.1)   # a fixed wait, the absence is the check: no other trace comes
    assert {s.trace_id for s in collector.spans} == expected
