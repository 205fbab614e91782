"""The core proxy: rewriting, streaming, headers, timeouts, disconnects and error paths."""

from __future__ import annotations

import json
import uuid

import pytest

from gateway.config import RetryConfig, ServerConfig, Timeouts, backend
from tests.conftest import CHAT, RUNTIME_ID, eventually, make_config, runtime_backend


def sse_events(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


async def one_backend(start_runtime, gateway_client, kind="vllm", timeouts=None,
                      retries=None, **fake_kw):
    fake, server = await start_runtime(kind=kind, **fake_kw)
    extra = {"timeouts": timeouts} if timeouts else {}
    cfg = make_config(runtime_backend("gpu-a", server, kind, models={"llama": RUNTIME_ID},
                                      api_key="sk-upstream", headers={"X-Org": "infra"},
                                      **extra),
                      **({"retries": retries} if retries else {}))
    return fake, await gateway_client(cfg)


async def test_chat_rewrites_model_both_ways(start_runtime, gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client)
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"X-Request-ID": "req-123"})
    assert resp.status == 200
    body = await resp.json()
    assert body["model"] == "llama"
    assert body["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4"
    assert fake.requests[0]["model"] == RUNTIME_ID
    assert resp.headers["X-Gateway-Backend"] == "gpu-a"
    assert resp.headers["X-Request-ID"] == "req-123"
    # Runtimes get a UUID, the one form every runtime accepts (llama-cpp-python: 400 otherwise).
    sent = fake.headers_seen[0]["X-Request-ID"]
    assert str(uuid.UUID(sent)) == sent and uuid.UUID(sent).version == 4


async def test_a_uuid_request_id_reaches_the_runtime_unchanged(start_runtime, gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client)
    given = str(uuid.uuid4())
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": given})
    assert resp.status == 200 and resp.headers["X-Request-ID"] == given
    assert fake.headers_seen[0]["X-Request-ID"] == given
    resp = await client.post("/v1/chat/completions", json=CHAT)
    generated = resp.headers["X-Request-ID"]
    assert uuid.UUID(generated).version == 4 and fake.headers_seen[1]["X-Request-ID"] == generated


async def test_request_id_is_generated_when_absent(start_runtime, gateway_client):
    _, client = await one_backend(start_runtime, gateway_client)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    generated = resp.headers["X-Request-ID"]
    assert str(uuid.UUID(generated)) == generated
    other = await client.post("/v1/chat/completions", json=CHAT)
    assert other.headers["X-Request-ID"] != generated


async def test_upstream_headers_carry_backend_key_not_the_clients(start_runtime,
                                                                   gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client)
    await client.post("/v1/chat/completions", json=CHAT, headers={
        "Authorization": "Bearer client-secret", "Proxy-Authorization": "Basic x",
        "api-key": "client-2", "x-api-key": "client-3", "Connection": "keep-alive, X-Drop",
        "X-Drop": "1", "Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "h2c"})
    seen = {k.lower(): v for k, v in fake.headers_seen[0].items()}
    assert seen["authorization"] == "Bearer sk-upstream"
    assert seen["x-org"] == "infra"
    for name in ("proxy-authorization", "api-key", "x-api-key", "x-drop", "keep-alive",
                 "te", "upgrade"):
        assert name not in seen


async def test_answers_one_after_another_reuse_one_runtime_connection(start_runtime,
                                                                     gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client)
    for i in range(20):
        body = {**CHAT, "stream": True} if i % 4 == 3 else CHAT
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 200
        await resp.read()
    assert len(fake.peers) == 20 and len(set(fake.peers)) == 1


def test_backend_headers_keep_their_own_user_agent_but_not_the_fixed_ones():
    plain = backend("a", "vllm", "http://127.0.0.1:1").request_headers
    assert plain["User-Agent"] == "llm-edge-gateway"
    assert plain["Accept-Encoding"] == "identity"   # bodies are rewritten as bytes
    own = backend("b", "openai", "http://127.0.0.1:1", api_key="sk-b", headers={
        "user-agent": "my-agent", "X-Org": "infra", "accept-encoding": "gzip",
        "content-type": "text/plain", "Authorization": "Bearer other"}).request_headers
    assert {k.lower(): v for k, v in own.items()} == {
        "user-agent": "my-agent", "x-org": "infra", "accept-encoding": "identity",
        "content-type": "application/json", "accept": "application/json, text/event-stream",
        "authorization": "Bearer sk-b"}


@pytest.mark.parametrize("spaced", [False, True])
async def test_stream_is_relayed_chunk_by_chunk_with_model_rewritten(
        start_runtime, gateway_client, spaced):
    fake, client = await one_backend(start_runtime, gateway_client, chunk_delay=0.2,
                                     words=4, spaced_json=spaced)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await resp.content.readuntil(b"\n\n")
    # The runtime is still generating when the first chunk reaches the client.
    assert fake.in_flight == 1
    rest = await resp.content.read()
    events = sse_events(first + rest)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"llama"}
    assert RUNTIME_ID not in (first + rest).decode()
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        "w0 w1 w2 w3 "


async def test_stream_usage_chunk_hidden_unless_asked(start_runtime, gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client)
    raw = await (await client.post("/v1/chat/completions",
                                   json={**CHAT, "stream": True})).read()
    assert fake.requests[0]["stream_options"] == {"include_usage": True}
    assert "usage" not in raw.decode()
    asked = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    raw = await (await client.post("/v1/chat/completions", json=asked)).read()
    usage = [json.loads(e) for e in sse_events(raw) if '"usage"' in e]
    assert usage[0]["usage"]["completion_tokens"] == 5
    assert usage[0]["model"] == "llama"


async def test_completions_and_embeddings(start_runtime, gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client)
    resp = await client.post("/v1/completions", json={"model": "llama", "prompt": "Once"})
    assert (await resp.json())["choices"][0]["text"] == "w0 w1 w2 w3 w4"
    raw = await (await client.post("/v1/completions", json={
        "model": "llama", "prompt": "Once", "stream": True})).read()
    assert sse_events(raw)[-1] == "[DONE]"
    resp = await client.post("/v1/embeddings", json={"model": "llama", "input": ["a", "b"]})
    body = await resp.json()
    assert resp.status == 200 and body["model"] == "llama" and len(body["data"]) == 2
    assert fake.requests[-1]["model"] == RUNTIME_ID


async def test_first_byte_timeout_is_504(start_runtime, gateway_client):
    _, client = await one_backend(start_runtime, gateway_client, hang_s=2,
                                  timeouts=Timeouts(first_byte_s=0.3),
                                  retries=RetryConfig(attempts=0))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_idle_timeout_mid_stream_ends_with_error_event(start_runtime, gateway_client):
    _, client = await one_backend(start_runtime, gateway_client, chunk_delay=1.0, words=3,
                                  timeouts=Timeouts(idle_s=0.3))
    raw = await (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).read()
    events = sse_events(raw)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"


async def test_runtime_closing_mid_stream_ends_with_error_event(start_runtime, gateway_client):
    _, client = await one_backend(start_runtime, gateway_client, close_after=2, words=5)
    raw = await (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).read()
    events = sse_events(raw)
    assert "[DONE]" not in events
    assert len(events) == 3     # two chunks, then the error
    assert json.loads(events[-1])["error"]["type"] == "server_error"


async def test_client_disconnect_cancels_upstream(start_runtime, gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client, chunk_delay=0.1, words=100)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await eventually(lambda: fake.cancelled)
    assert fake.cancelled == 1 and fake.in_flight == 0


async def test_refused_connection_is_502(start_runtime, gateway_client):
    _, server = await start_runtime()
    cfg = make_config(runtime_backend("dead", server, models=["llama"]),
                      retries=RetryConfig(attempts=0))
    client = await gateway_client(cfg)
    await server.close()       # healthy at start, then gone
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    body = await resp.json()
    assert body["error"]["code"] == "upstream_error"
    assert resp.headers["X-Gateway-Backend"] == "dead"


async def test_runtime_4xx_is_passed_through(start_runtime, gateway_client):
    fake, client = await one_backend(start_runtime, gateway_client, status=400)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "fake failure 400"
    assert len(fake.requests) == 1   # a client error is never retried


async def test_capability_missing_is_501(start_runtime, gateway_client):
    _, client = await one_backend(start_runtime, gateway_client, kind="tgi")
    resp = await client.post("/v1/embeddings", json={"model": "llama", "input": "x"})
    assert resp.status == 501
    assert "embeddings" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": 5, "messages": []}', 400, "model"),
    (b'{"model": "llama"}', 400, "messages"),
    (b'{"model": "llama", "messages": "hi"}', 400, "messages"),
    (b'{"model": "llama", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     400, "stream"),
    (b'{"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
])
async def test_bad_requests_get_openai_errors(start_runtime, gateway_client, body, status,
                                              param):
    fake, client = await one_backend(start_runtime, gateway_client)
    resp = await client.post("/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fake.requests == []


async def test_body_over_limit_is_413_before_reading(start_runtime, gateway_client):
    fake, server = await start_runtime()
    cfg = make_config(runtime_backend("gpu-a", server, models=["llama"]),
                      server=ServerConfig(max_body_mb=0.001))
    client = await gateway_client(cfg)
    big = json.dumps({**CHAT, "pad": "x" * 5000}).encode()
    resp = await client.post("/v1/chat/completions", data=big)
    assert resp.status == 413

    async def chunked():
        for _ in range(10):
            yield b"x" * 1000
    resp = await client.post("/v1/chat/completions", data=chunked())
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"
    assert fake.requests == []


async def test_unknown_route_and_method_are_openai_shaped(start_runtime, gateway_client):
    _, client = await one_backend(start_runtime, gateway_client)
    resp = await client.get("/v1/nothing")
    assert resp.status == 404 and "error" in await resp.json()
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405 and "error" in await resp.json()


async def test_models_lists_configured_and_discovered(start_runtime, gateway_client):
    _, listed = await start_runtime()
    _, discovering = await start_runtime(models=("qwen2.5-7b", "phi-4"))
    cfg = make_config(runtime_backend("a", listed, models={"llama": RUNTIME_ID}),
                      runtime_backend("b", discovering))
    client = await gateway_client(cfg)
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llama", "phi-4", "qwen2.5-7b"]
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "phi-4"})
    assert resp.headers["X-Gateway-Backend"] == "b"


@pytest.mark.parametrize("kind", ["ollama", "tgi", "vllm", "llamacpp", "localai", "lmstudio"])
async def test_each_kind_is_health_checked_on_its_path(start_runtime, gateway_client, kind):
    fake, server = await start_runtime(kind=kind)
    client = await gateway_client(make_config(runtime_backend("x", server, kind,
                                                              models=["llama"])))
    assert fake.health_checks >= 1
    assert (await client.get("/ready")).status == 200


async def test_ready_is_503_when_no_backend_is_healthy(start_runtime, gateway_client):
    _, server = await start_runtime(health_status=503)
    client = await gateway_client(make_config(runtime_backend("x", server, models=["llama"])))
    assert (await client.get("/health")).status == 200
    assert (await client.get("/ready")).status == 503
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "no_healthy_backend"


async def test_a_token_saying_done_does_not_end_the_stream(gateway_client):
    client = await gateway_client(make_config(backend("e", "echo", models=["llama"])))
    words = "data: [DONE] is only text here"
    raw = await (await client.post("/v1/chat/completions", json={
        **CHAT, "stream": True, "messages": [{"role": "user", "content": words}]})).read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                   for e in events[:-1])
    assert text == words


def test_usage_null_on_every_chunk_is_not_taken_for_usage():
    from gateway.relay.chat import StreamRewriter
    rewriter = StreamRewriter((), drop_usage=True)
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
    # The client did not ask for usage: the null the gateway's include_usage caused goes.
    assert rewriter.feed(chunk) == b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    assert rewriter.usage is None
    asked = StreamRewriter((), drop_usage=False)
    assert asked.feed(chunk) == chunk and asked.usage is None
    last = b'data: {"choices":[],"usage":{"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    assert rewriter.feed(last) == b"data: [DONE]\n\n"
    assert rewriter.usage == {"completion_tokens": 1} and rewriter.saw_done
