"""Streams under runtime faults: the first-event deadline, keep-alives before the first
event, the `[DONE]` terminator, slow readers, hung-but-healthy runtimes, the idle pool
and `"usage": null` (issue 19). Fake runtimes are real servers on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any

import aiohttp
import pytest

from gateway.config import (HealthConfig, RetryConfig, ServerConfig, Timeouts, backend, check,
                            load_config)
from gateway.dispatch import BackendState, ejection
from gateway.health.checks import apply_result
from gateway.log import access_logger
from gateway.runtimes import make_runtime
from bench.fake_runtime import FakeRuntime
from tests.conftest import (CHAT, RUNTIME_ID, eventually, make_config, runtime_backend, samples,
                            value)

STREAM = {**CHAT, "stream": True}


@pytest.fixture
def start_faulty(start_runtime):
    """A fake runtime with stream faults, its every stream byte kept: (switches, server)."""
    async def start(**kwargs: Any):
        return await start_runtime(keep_sent=True, **kwargs)
    return start


def data_events(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


async def bad_then_good(start_faulty, gateway_client, timeouts: Timeouts, **bad_kw):
    """A misbehaving backend picked first (weight 10), then a good one."""
    bad, s1 = await start_faulty(**bad_kw)
    good, s2 = await start_faulty()
    cfg = make_config(
        runtime_backend("bad", s1, models={"llama": RUNTIME_ID}, weight=10, timeouts=timeouts),
        runtime_backend("good", s2, models={"llama": RUNTIME_ID}, timeouts=timeouts))
    return bad, good, await gateway_client(cfg)


# --- 1. first_byte_s bounds the first data event -------------------------------------------

@pytest.mark.parametrize("fault", [{"ttft_s": 10},
                                   {"keepalives": 200, "keepalive_every_s": 0.05}],
                         ids=["headers-then-silence", "keepalives-only"])
async def test_first_byte_s_bounds_the_first_data_event(start_faulty, gateway_client, fault):
    bad, good, client = await bad_then_good(
        start_faulty, gateway_client, Timeouts(first_byte_s=0.5, idle_s=6), **fault)
    started = time.monotonic()
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", json=STREAM), 8)
    raw = await asyncio.wait_for(resp.read(), 8)
    took = time.monotonic() - started
    assert len(bad.requests) == 1 and len(good.requests) == 1
    assert resp.headers["X-Gateway-Backend"] == "good"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert 0.45 < took < 2.5          # first_byte_s, not idle_s (6 s)
    found = await samples(client)
    assert value(found, "gateway_upstream_errors_total", backend="bad", reason="timeout") == 1


async def test_first_byte_s_without_another_backend_is_a_504(start_faulty, gateway_client):
    fake, server = await start_faulty(ttft_s=10)
    cfg = make_config(runtime_backend("only", server, models={"llama": RUNTIME_ID},
                                      timeouts=Timeouts(first_byte_s=0.3, idle_s=6)),
                      retries=RetryConfig(attempts=0))
    client = await gateway_client(cfg)
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", json=STREAM), 5)
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_keepalives_before_the_first_event_reach_the_client(start_faulty, gateway_client):
    fake, server = await start_faulty(keepalives=3)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID},
                                      timeouts=Timeouts(first_byte_s=2, idle_s=2)))
    client = await gateway_client(cfg)
    raw = await asyncio.wait_for((await client.post(
        "/v1/chat/completions", json=STREAM)).read(), 5)
    assert raw.startswith(b": keepalive\n\n: keepalive\n\n: keepalive\n\ndata: {")
    assert raw.endswith(b"data: [DONE]\n\n")


# --- 2. an error after a keep-alive is retried ---------------------------------------------

async def test_an_error_after_a_keepalive_is_retried(start_faulty, gateway_client):
    bad, good, client = await bad_then_good(
        start_faulty, gateway_client, Timeouts(first_byte_s=2, idle_s=2),
        keepalives=2, first_event_error=True)
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", json=STREAM), 5)
    raw = await asyncio.wait_for(resp.read(), 5)
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "good"
    assert b'"error"' not in raw and raw.endswith(b"data: [DONE]\n\n")
    assert len(bad.requests) == 1


async def test_an_error_after_a_keepalive_with_no_retry_left_is_a_502(start_faulty,
                                                                      gateway_client):
    fake, server = await start_faulty(keepalives=1, first_event_error=True)
    cfg = make_config(runtime_backend("only", server, models={"llama": RUNTIME_ID}),
                      retries=RetryConfig(attempts=0))
    client = await gateway_client(cfg)
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", json=STREAM), 5)
    assert resp.status == 502
    assert "model overloaded" in (await resp.json())["error"]["message"]


# --- 3. `[DONE]` keeps its terminator, every byte as the runtime sent it ---------------------

@pytest.mark.parametrize("fault", ["split_done", "plain"])
async def test_the_stream_is_relayed_byte_for_byte(start_faulty, gateway_client, fault):
    fake, server = await start_faulty(split_done=fault == "split_done", words=4,
                                      null_usage=True)
    # Public name = runtime id and usage asked for: the gateway changes nothing.
    cfg = make_config(runtime_backend("gpu", server, models=[RUNTIME_ID]))
    client = await gateway_client(cfg)
    body = {**STREAM, "model": RUNTIME_ID, "stream_options": {"include_usage": True}}
    raw = await asyncio.wait_for((await client.post("/v1/chat/completions", json=body)).read(), 5)
    assert raw == bytes(fake.sent)
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_an_unterminated_done_is_terminated(start_faulty, gateway_client):
    fake, server = await start_faulty(done_unterminated=True)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID}))
    client = await gateway_client(cfg)
    raw = await asyncio.wait_for((await client.post(
        "/v1/chat/completions", json=STREAM)).read(), 5)
    assert raw.endswith(b"}\n\ndata: [DONE]\n\n")


# --- 4. a slow reader: idle_s is the runtime's silence only; server.client_idle_s ----------

async def slow_reader(start_faulty, gateway_client, *, idle_s: float, client_idle_s: float,
                      pause_s: float) -> tuple[FakeRuntime, Any, bytes, bool]:
    """A long stream of ~16 KiB chunks whose client pauses reading after its first event."""
    fake, server = await start_faulty(words=1500, chunk_bytes=16384)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID},
                                      timeouts=Timeouts(first_byte_s=2, idle_s=idle_s)),
                      server=ServerConfig(client_idle_s=client_idle_s))
    client = await gateway_client(cfg)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    first = await resp.content.readuntil(b"\n\n")
    await asyncio.sleep(pause_s - 1)   # fixed waits: the client pausing is the behaviour
    before = fake.events
    await asyncio.sleep(1)             # the absence is the check: no runtime write for 1 s
    held = fake.events == before   # the runtime's writes wait too: nothing piles up
    rest = await asyncio.wait_for(resp.read(), 20)
    return fake, client, first + rest, held


async def test_a_slow_reader_within_client_idle_s_gets_the_whole_stream(start_faulty,
                                                                        gateway_client):
    fake, client, raw, held = await slow_reader(
        start_faulty, gateway_client, idle_s=1, client_idle_s=10, pause_s=2.5)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert len(data_events(raw)) == 1500 + 2
    # Backpressure held the runtime back while the client paused: memory stays bounded.
    assert held and fake.events > 1500


async def test_a_reader_stalled_past_client_idle_s_is_cut_with_an_error_event(start_faulty,
                                                                              gateway_client,
                                                                              caplog):
    caplog.set_level(logging.INFO, logger=access_logger.name)
    fake, client, raw, _ = await slow_reader(
        start_faulty, gateway_client, idle_s=10, client_idle_s=1.2, pause_s=2)
    events = data_events(raw)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "client_too_slow" and "server.client_idle_s" in error["message"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == access_logger.name]
    [line] = [entry for entry in lines if entry["stream"]]
    assert (line["status"], line["aborted"]) == (200, "client_slow")
    found = await samples(client)
    assert value(found, "gateway_stream_aborts_total", backend="gpu", reason="client_slow") == 1
    assert value(found, "gateway_stream_aborts_total", backend="gpu", reason="client_left") == 0
    # The runtime's stream was dropped, not left to run on.
    assert await eventually(lambda: fake.in_flight == 0, timeout=5), fake.in_flight


async def test_a_client_that_never_reads_again_is_dropped(start_faulty, gateway_client):
    fake, server = await start_faulty(words=1500, chunk_bytes=16384)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID}),
                      server=ServerConfig(client_idle_s=0.5))
    client = await gateway_client(cfg)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    await resp.content.readuntil(b"\n\n")
    server = client.server.runner.server
    assert len(server.connections) == 1
    # Cut after 0.5 s of waiting, dropped 0.5 s after that.
    assert await eventually(lambda: not server.connections, timeout=10), server.connections
    assert fake.in_flight == 0
    resp.close()


# --- 5. hung-but-healthy: a passive ejection stands for its cooldown ------------------------

def new_state(config) -> BackendState:
    return BackendState(config, make_runtime(config, None))


def test_a_passing_health_check_does_not_end_a_passive_ejection():
    health = HealthConfig(unhealthy_after=1, healthy_after=1, cooldown_s=10)
    state = new_state(backend("x", "vllm", "http://127.0.0.1:1"))
    apply_result(state, True, health)
    now = time.monotonic()
    assert ejection.record_failure(state, health, now)
    ejection.start_trial(state, health, now + 11)
    ejection.judge(state, TimeoutError(), health, now + 11)   # not a verdict: no change
    assert ejection.record_failure(state, health, now + 12)   # the trial failed: 20 s
    for _ in range(5):
        apply_result(state, True, health)
    assert state.ejections == 2 and state.ejected_until == now + 12 + 20
    assert not state.available(now + 30)
    ejection.judge(state, None, health, now + 33)   # a real request succeeded
    assert state.ejections == 0 and state.consecutive_failures == 0 and state.available()


def test_a_passing_health_check_ends_what_health_checks_caused():
    health = HealthConfig(unhealthy_after=2, healthy_after=2)
    state = new_state(backend("x", "vllm", "http://127.0.0.1:1"))
    apply_result(state, True, health)
    apply_result(state, False, health)
    apply_result(state, False, health)
    assert not state.healthy
    apply_result(state, True, health)
    apply_result(state, True, health)
    assert state.healthy and state.available()


async def test_a_hung_but_healthy_backend_backs_off(start_runtime, gateway_client):
    """/health says 200 every 0.1 s while completions hang: the cooldown still doubles
    (0.4, 0.8, 1.6 s after 0.2 s tries), so 3 s of sequential requests reach it 3 times."""
    hung, s1 = await start_runtime(hang_s=30)
    good, s2 = await start_runtime()
    t = Timeouts(first_byte_s=0.2)
    cfg = make_config(runtime_backend("hung", s1, models={"llama": RUNTIME_ID}, weight=10,
                                      timeouts=t),
                      runtime_backend("good", s2, models={"llama": RUNTIME_ID}, timeouts=t),
                      health=HealthConfig(interval_s=0.1, unhealthy_after=1, healthy_after=1,
                                          cooldown_s=0.4, max_cooldown_s=30))
    client = await gateway_client(cfg)
    end = time.monotonic() + 3
    for _ in range(1000):
        if time.monotonic() >= end:
            break
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        await asyncio.sleep(0.02)   # a fixed pace for 3 s of sequential requests
    assert hung.health_checks >= 10
    assert 2 <= len(hung.requests) <= 4


# --- 6. the idle pool is bounded; `"usage": null` only for clients that asked ----------------

async def test_the_idle_upstream_pool_is_bounded_per_backend(start_runtime, gateway_client):
    from gateway.runtimes.http import MAX_IDLE_PER_BACKEND
    # Streams long enough (3 s) that the whole burst is open at once on a busy machine.
    fake, server = await start_runtime(words=3, chunk_delay=1.0)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID}))
    client = await gateway_client(cfg)
    burst = MAX_IDLE_PER_BACKEND + 150
    url = client.make_url("/v1/chat/completions")

    async def one(session: aiohttp.ClientSession) -> bytes:
        async with session.post(url, json=STREAM) as resp:
            return await resp.read()

    # The test client's own pool stops at 100 connections: a session without that cap.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        bodies = await asyncio.wait_for(
            asyncio.gather(*(one(session) for _ in range(burst))), 30)
    assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
    assert len(set(fake.peers)) > MAX_IDLE_PER_BACKEND + 50   # many streams at once
    assert await eventually(lambda: server.connections <= MAX_IDLE_PER_BACKEND, timeout=5), \
        server.connections
    # The kept ones are reused.
    assert (await (await client.post("/v1/chat/completions", json=STREAM)).read()).endswith(
        b"data: [DONE]\n\n")
    assert fake.peers[-1] in fake.peers[:-1]


@pytest.mark.parametrize("spaced", [False, True])
async def test_usage_null_is_stripped_when_the_client_did_not_ask(start_faulty, gateway_client,
                                                                  spaced):
    fake, server = await start_faulty(null_usage=True, spaced_json=spaced)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID}))
    client = await gateway_client(cfg)
    raw = await (await client.post("/v1/chat/completions", json=STREAM)).read()
    chunks = [json.loads(e) for e in data_events(raw)[:-1]]
    assert len(chunks) == 6 and all("usage" not in c for c in chunks)
    assert chunks[0]["model"] == "llama"
    asked = {**STREAM, "stream_options": {"include_usage": True}}
    raw = await (await client.post("/v1/chat/completions", json=asked)).read()
    chunks = [json.loads(e) for e in data_events(raw)[:-1]]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 6
    assert chunks[-1]["usage"]["total_tokens"] == 12


def test_gateway_check_names_a_bad_client_idle_s(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("server: {client_idle_s: -1}\nbackends: {e: {kind: echo}}\n")
    out = io.StringIO()
    assert check(str(path), out) == 1
    assert out.getvalue() == "server.client_idle_s: must be greater than 0\n"
    path.write_text("server: {client_idle_s: 2.5}\nbackends: {e: {kind: echo}}\n")
    assert load_config(str(path)).server.client_idle_s == 2.5
    assert ServerConfig().client_idle_s == 30


# --- the relay's byte handling, without servers -----------------------------------------------

@pytest.mark.parametrize("writes", [
    [b"data: {}\n\ndata: [DONE]\n", b"\n"],
    [b"data: {}\n\ndata: [DONE]", b"\n", b"\n"],
    [b"data: {}\n\ndata: [DO", b"NE]\n\n"],
    [b"data: {}\n\ndata: [DONE]\n", b"\n", b"data: after\n\n"],
], ids=["blank-apart", "newlines-apart", "done-split", "more-after"])
def test_done_is_finished_by_its_blank_line(writes):
    from gateway.relay.chat import StreamRewriter
    rewriter = StreamRewriter((), drop_usage=False)
    out = b""
    for data in writes:
        out += rewriter.feed(data)
        if rewriter.finished:
            break
    assert out == b"data: {}\n\ndata: [DONE]\n\n" and rewriter.finished


def test_done_keeps_crlf_and_an_unterminated_done_is_terminated_at_eof():
    from gateway.relay.chat import StreamRewriter
    rewriter = StreamRewriter((), drop_usage=False)
    assert rewriter.feed(b"data: [DONE]\r\n\r\n") == b"data: [DONE]\r\n\r\n"
    assert rewriter.finished
    rewriter = StreamRewriter((), drop_usage=False)
    assert rewriter.feed(b"data: [DONE]\n") == b"data: [DONE]\n" and not rewriter.finished
    assert rewriter.flush() == b"\n" and rewriter.finished
    rewriter = StreamRewriter((), drop_usage=False)
    assert rewriter.feed(b"data: [DONE]") == b""
    assert rewriter.flush() == b"data: [DONE]\n\n" and rewriter.finished


@pytest.mark.parametrize(("chunk", "stripped"), [
    (b'{"id":"a","usage":null}', b'{"id":"a"}'),
    (b'{"usage":null,"id":"a"}', b'{"id":"a"}'),
    (b'{"id": "a", "usage": null}', b'{"id": "a"}'),
    (b'{"usage": null, "id": "a"}', b'{"id": "a"}'),
    (b'{"id":"a","choices":[{"delta":{"content":"\\"usage\\":null"}}]}',
     b'{"id":"a","choices":[{"delta":{"content":"\\"usage\\":null"}}]}'),
])
def test_strip_null_usage_keeps_json_whole(chunk, stripped):
    from gateway.relay.chat import strip_null_usage
    assert strip_null_usage(chunk) == stripped
    json.loads(strip_null_usage(chunk))


def test_a_data_line_is_the_first_event_a_comment_is_not():
    from gateway.relay.wire import has_data_line
    assert not has_data_line(b": keepalive\n\n")
    assert not has_data_line(b": keepalive\n\ndata: {\"ch")          # not whole yet
    assert not has_data_line(b": data: in a comment\n\n")
    assert has_data_line(b": keepalive\n\ndata: {}\n")
    assert has_data_line(b"data: {}\n")
    assert has_data_line(b"event: x\r\ndata: {}\r\n")


# --- 4b. server.client_idle_s holds for every streamed API -----------------------------------

SLOW_READS = {
    "chat": ("/v1/chat/completions", STREAM, {}),
    "responses": ("/v1/responses", {"model": "llama", "input": "hi", "stream": True}, {}),
    "messages-native": ("/v1/messages", {"model": "llama", "max_tokens": 100, "stream": True,
                                         "messages": [{"role": "user", "content": "hi"}]}, {}),
    "messages-translated": ("/v1/messages", {
        "model": "llama", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}, {"capabilities": {"messages": False}}),
    "speech": ("/v1/audio/speech", {"model": "llama", "input": "hi"}, {}),
}


@pytest.mark.parametrize("api", list(SLOW_READS))
async def test_every_streamed_api_cuts_a_client_that_stops_reading(start_faulty, gateway_client,
                                                                   caplog, api):
    """A client that reads the start of a stream, then nothing: cut within client_idle_s
    (plus the grace for the error event), logged as client_slow, the runtime let go."""
    caplog.set_level(logging.INFO, logger=access_logger.name)
    path, body, backend_kw = SLOW_READS[api]
    fake, server = await start_faulty(words=4096, chunk_bytes=16384)
    cfg = make_config(runtime_backend("gpu", server, models={"llama": RUNTIME_ID},
                                      **backend_kw),
                      server=ServerConfig(client_idle_s=0.5))
    client = await gateway_client(cfg)
    resp = await client.post(path, json=body)
    assert resp.status == 200
    await resp.content.readexactly(1000)
    started = time.monotonic()

    def logged():
        return [json.loads(r.getMessage()) for r in caplog.records
                if r.name == access_logger.name]
    lines = await eventually(logged, timeout=10)
    took = time.monotonic() - started
    assert [(line["status"], line["aborted"]) for line in lines] == [(200, "client_slow")]
    assert took < 5, took   # 0.5 s of waiting, 1 s of grace, and a busy machine
    assert await eventually(lambda: fake.in_flight == 0, timeout=5), "the runtime still streams"
    found = await samples(client)
    assert value(found, "gateway_stream_aborts_total", backend="gpu", reason="client_slow") == 1
    assert value(found, "gateway_in_flight_requests", backend="gpu") == 0
    resp.close()
