"""Metrics and the per-request log line: bounded labels, token accounting, timings."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from gateway.config import backend
from tests.conftest import eventually, make_config, runtime_backend, samples, value

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "secret prompt text"}]}


async def test_unknown_model_names_add_no_series(gateway_client):
    client = await gateway_client(make_config(backend("e", "echo", models=["llama"])))
    before = len(await samples(client))
    for i in range(10_000):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": f"x-{i}"})
        assert resp.status == 404
    after = await samples(client)
    # One {model=""} status-404 series with its histogram buckets, not 10,000 of them.
    assert len(after) - before <= 40
    assert value(after, "gateway_requests_total", model="", backend="", endpoint="chat",
                 status="404") == 10_000
    assert not any("x-1" in str(k) for k in after)


async def test_tokens_ttft_and_tpot_from_streams(start_runtime, gateway_client):
    fake, server = await start_runtime(words=6, chunk_delay=0.02)
    client = await gateway_client(make_config(runtime_backend("gpu", server, models=["llama"])))
    raw = await (await client.post("/v1/chat/completions",
                                   json={**CHAT, "stream": True})).read()
    assert b'"usage"' not in raw
    s = await samples(client)
    assert value(s, "gateway_tokens_total", model="llama", backend="gpu",
                 type="completion") == 6
    assert value(s, "gateway_tokens_total", model="llama", backend="gpu", type="prompt") == 7
    assert value(s, "gateway_time_to_first_token_seconds_count", model="llama",
                 backend="gpu") == 1
    tpot_sum = value(s, "gateway_time_per_output_token_seconds_sum", model="llama",
                     backend="gpu")
    assert 0.01 < tpot_sum < 0.1      # ~20 ms between tokens
    assert value(s, "gateway_overhead_seconds_count", endpoint="chat") == 1


async def test_stream_without_usage_is_counted_apart(start_runtime, gateway_client):
    _, server = await start_runtime(send_usage=False)
    client = await gateway_client(make_config(runtime_backend("gpu", server, models=["llama"])))
    await (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).read()
    s = await samples(client)
    assert value(s, "gateway_usage_missing_total", model="llama", backend="gpu") == 1
    assert value(s, "gateway_tokens_total", model="llama", backend="gpu",
                 type="completion") == 0


async def test_client_leaving_mid_stream_keeps_usage_seen_and_counts_abort(
        start_runtime, gateway_client):
    fake, server = await start_runtime(words=50, chunk_delay=0.02)
    client = await gateway_client(make_config(runtime_backend("gpu", server, models=["llama"])))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await resp.content.readuntil(b"\n\n")
    resp.close()

    async def aborted() -> float:
        return value(await samples(client), "gateway_stream_aborts_total", backend="gpu",
                     reason="client_left")
    assert await eventually(aborted) == 1


async def test_one_json_log_line_per_request_without_secrets(start_runtime, gateway_client,
                                                             caplog):
    _, server = await start_runtime()
    client = await gateway_client(make_config(
        runtime_backend("gpu", server, models=["llama"], api_key="sk-canary-123")))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.post("/v1/chat/completions", json=CHAT,
                          headers={"Authorization": "Bearer client-key-456"})
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    for field in ("request_id", "model", "backend", "status", "duration_s", "ttft_s",
                  "prompt_tokens", "completion_tokens", "retries", "fallback"):
        assert field in entry
    assert entry["model"] == "llama" and entry["backend"] == "gpu" and entry["status"] == 200
    assert entry["completion_tokens"] == 5
    for secret in ("secret prompt", "w0 w1", "sk-canary-123", "client-key-456"):
        assert secret not in lines[0]


async def test_log_line_holds_both_request_ids_when_they_differ(start_runtime, gateway_client,
                                                                caplog):
    fake, server = await start_runtime()
    client = await gateway_client(make_config(runtime_backend("gpu", server, models=["llama"])))
    given = str(uuid.uuid4())
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "req-42"})
        await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": given})
    first, second = [json.loads(r.getMessage()) for r in caplog.records
                     if r.name == "gateway.access"]
    assert first["request_id"] == "req-42"
    assert first["upstream_request_id"] == fake.headers_seen[0]["X-Request-ID"] != "req-42"
    assert second["request_id"] == given == fake.headers_seen[1]["X-Request-ID"]
    assert "upstream_request_id" not in second


async def test_in_flight_gauge_counts_requests_at_a_backend_while_they_run(start_runtime,
                                                                          gateway_client):
    fake, server = await start_runtime(hang_s=0.5)
    client = await gateway_client(make_config(runtime_backend("x", server, models=["llama"])))
    calls = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
             for _ in range(3)]
    await eventually(lambda: len(fake.requests) == 3)     # until the runtime holds all three
    assert value(await samples(client), "gateway_in_flight_requests", backend="x") == 3
    for resp in await asyncio.gather(*calls):
        assert resp.status == 200
    assert value(await samples(client), "gateway_in_flight_requests", backend="x") == 0
