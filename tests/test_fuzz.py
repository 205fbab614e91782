"""Random bodies, headers, paths and raw request heads: never a 500, never a traceback.

Hypothesis drives a plain function in a worker thread; each example's request is
run on the test's event loop, where the gateway and its runtimes live.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import ApiKey, HealthConfig, RouteConfig, ServerConfig, backend
from tests.conftest import RUNTIME_ID, StartRuntime, make_config, runtime_backend

KEY = ApiKey(name="fuzz", key="sk-fuzz-0123456789", models=("*",), rpm=10**6, tpm=10**9)
ECHO_ONLY = ApiKey(name="echo-only", key="sk-fuzz-echo-only", models=("echo-*",))
ADMIN = "adm-fuzz-0123456789"
MODELS = ["llama", "echo-model", "echo-embed", "nope", ""]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
             "/health", "/ready", "/metrics", "/admin/backends", "/admin/config",
             "/admin/reload", "/v1/responses", "/v1/responses/resp_x",
             "/v1/responses/resp_x/input_items", "/v1/rerank", "/v2/rerank", "/v1/score",
             "/tokenize", "/detokenize", "/v1/audio/transcriptions", "/v1/audio/speech",
             "/v1/images/generations"]
# Framing headers are the client library's business; random ones would only hang it.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade",
           "te", "keep-alive", "trailer"}
SETTINGS = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
messages = st.lists(st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "system", "assistant", "tool"]) | json_values,
    "content": st.text(max_size=40) | json_values,
    "tool_calls": json_values, "name": json_values}), max_size=3)
shaped_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | json_values},
    optional={"messages": messages | json_values, "prompt": st.text(max_size=30) | json_values,
              "input": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3)
              | json_values,
              "stream": st.booleans() | json_values,
              "stream_options": st.fixed_dictionaries({}, optional={
                  "include_usage": st.booleans() | json_values}) | json_values,
              "max_tokens": json_values, "tools": json_values, "user": json_values,
              "n": json_values, "temperature": json_values, "api_base": json_values})
bodies = (shaped_bodies.map(lambda b: json.dumps(b).encode())
          | json_values.map(lambda v: json.dumps(v).encode())
          | st.binary(max_size=200))
token_chars = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)
random_headers = st.dictionaries(
    st.text(token_chars, min_size=1, max_size=20).filter(lambda n: n.lower() not in FRAMING),
    header_values, max_size=5)
known_headers = st.fixed_dictionaries({}, optional={
    "Authorization": st.sampled_from([f"Bearer {KEY.key}", f"Bearer {ECHO_ONLY.key}",
                                      f"Bearer {ADMIN}", "Bearer", "Basic eDp5"])
    | header_values,
    "X-Request-ID": header_values, "X-Session-ID": header_values,
    "Content-Type": st.sampled_from(["application/json", "text/plain",
                                     "multipart/form-data"]) | header_values,
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "zstd"]) | header_values,
    "Accept-Encoding": st.sampled_from(["gzip", "br", "*"]) | header_values,
    "Origin": st.sampled_from(["https://app.example.com", "null"]) | header_values,
    "Access-Control-Request-Method": st.sampled_from(["POST", "GET", "PUT"]),
})
path_chars = string.ascii_letters + string.digits + "-._~/%?&=+"
# "//x" would be a URL with a host to the test client; raw targets get their own test below.
paths = st.sampled_from(ENDPOINTS) | st.text(path_chars, max_size=30).map(
    lambda p: "/" + p.lstrip("/"))
methods = st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                           "HEAD"])
wild_requests = st.tuples(methods, paths, st.tuples(known_headers, random_headers), bodies)

# Requests a client could mean, with random extras: these reach the runtimes.
extras = st.dictionaries(st.sampled_from(["temperature", "max_tokens", "user", "n", "seed",
                                          "stop", "tools", "stream_options", "api_base",
                                          "response_format", "logprobs"]),
                         json_values, max_size=3)
user_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "system", "assistant"]),
    "content": st.text(max_size=40)}), min_size=1, max_size=3)
valid_bodies = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), st.fixed_dictionaries({
        "model": st.sampled_from(["llama", "echo-model"]), "messages": user_messages,
        "stream": st.booleans()}), extras),
    st.tuples(st.just("/v1/completions"), st.fixed_dictionaries({
        "model": st.sampled_from(["llama", "echo-model"]), "prompt": st.text(max_size=40),
        "stream": st.booleans()}), extras),
    st.tuples(st.just("/v1/embeddings"), st.fixed_dictionaries({
        "model": st.sampled_from(["llama", "echo-embed"]),
        "input": st.text(max_size=40) | st.lists(st.text(max_size=10), min_size=1,
                                                 max_size=3)}), extras),
    st.tuples(st.just("/v1/responses"), st.fixed_dictionaries({
        "model": st.sampled_from(["llama", "echo-model"]), "input": st.text(max_size=40),
        "stream": st.booleans()}), extras),
    st.tuples(st.sampled_from(["/v1/rerank", "/rerank"]), st.fixed_dictionaries({
        "model": st.sampled_from(["llama", "echo-model"]), "query": st.text(max_size=20),
        "documents": st.lists(st.text(max_size=10), min_size=1, max_size=3)}), extras),
    st.tuples(st.just("/tokenize"), st.fixed_dictionaries({
        "model": st.sampled_from(["llama", "echo-model"]), "prompt": st.text(max_size=40)}),
        extras),
)
valid_requests = st.builds(
    lambda shaped, headers: ("POST", shaped[0], headers,
                             json.dumps({**shaped[2], **shaped[1]}).encode()),
    valid_bodies,
    st.tuples(st.fixed_dictionaries({"Authorization": st.just(f"Bearer {KEY.key}")},
                                    optional={"X-Session-ID": header_values,
                                              "X-Request-ID": header_values,
                                              "Content-Encoding": st.sampled_from(
                                                  ["gzip", "deflate", "br", "identity"])}),
              random_headers))


@pytest.fixture
async def fuzz_gateway(start_runtime: StartRuntime, aiohttp_client: AiohttpClient):
    _, server = await start_runtime(words=3)
    cfg = make_config(
        runtime_backend("gpu", server, models={"llama": RUNTIME_ID}),
        backend("echo-b", "echo", models=["echo-model", "echo-embed"]),
        routes={"llama": RouteConfig(strategy="prefix_affinity"),
                "echo-model": RouteConfig(strategy="session_affinity")},
        auth_keys=(KEY, ECHO_ONLY),
        server=ServerConfig(admin_key=ADMIN, cors_origins=("https://app.example.com",)),
        # Health rounds draw jitter from `random`, which Hypothesis (drawing in another
        # thread) would take for a strategy using it: keep them out of the fuzz run.
        health=HealthConfig(interval_s=3600))
    return await aiohttp_client(create_app(cfg, header_timeout_s=2))


def assert_sane(status: int, content_type: str, body: bytes) -> None:
    assert status != 500, body[:500]
    assert 200 <= status < 600
    assert b"Traceback" not in body and b'File "' not in body, body[:500]
    if status >= 400 and content_type == "application/json" and body:   # HEAD: no body
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["type"]


def run_in_thread(loop: asyncio.AbstractEventLoop, coro_fn, timeout: float = 15):
    """Run one coroutine on the test's loop from the Hypothesis thread."""
    return asyncio.run_coroutine_threadsafe(coro_fn(), loop).result(timeout)


def no_gateway_errors(caplog) -> None:
    # aiohttp's own loggers too: its "Unhandled exception" is a traceback in the gateway's log.
    errors = [r for r in caplog.records
              if r.name.startswith(("gateway", "aiohttp")) and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_fuzz_requests_never_break_the_gateway(fuzz_gateway, caplog):
    client = fuzz_gateway
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    @SETTINGS
    @given(request=valid_requests | wild_requests)
    def one(request: tuple[str, str, tuple[dict, dict], bytes]) -> None:
        method, path, headers, body = request

        async def send() -> tuple[int, str, bytes]:
            merged = {**headers[1], **headers[0]}
            async with asyncio.timeout(10):
                async with client.request(method, path, headers=merged,
                                          data=body if method not in ("GET", "HEAD") else None,
                                          skip_auto_headers=("Content-Type",)) as resp:
                    return resp.status, resp.content_type, await resp.read()

        status, content_type, raw = run_in_thread(loop, send)
        seen[status] = seen.get(status, 0) + 1
        assert_sane(status, content_type, raw)

    await loop.run_in_executor(None, one)
    assert seen.get(200, 0) > 10 and len(seen) > 3, seen   # the fuzz did reach the runtimes
    no_gateway_errors(caplog)
    resp = await client.post("/v1/chat/completions",
                             headers={"Authorization": f"Bearer {KEY.key}"},
                             json={"model": "llama",
                                   "messages": [{"role": "user", "content": "still up?"}]})
    assert resp.status == 200


raw_token = st.text(token_chars, min_size=1, max_size=12)
raw_text = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


async def test_fuzz_raw_request_heads(fuzz_gateway, caplog):
    """Bytes no HTTP client would send: the parser refuses them, nothing gets a 500."""
    port = fuzz_gateway.server.port
    loop = asyncio.get_running_loop()

    @settings(SETTINGS, max_examples=150)
    @given(method=st.sampled_from([b"GET", b"POST", b"PRI", b"get"]) | raw_token.map(str.encode),
           target=st.sampled_from([p.encode() for p in ENDPOINTS]) | raw_text,
           version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x"]),
           lines=st.lists(st.tuples(raw_text, raw_text), max_size=6),
           body=bodies)
    def one(method: bytes, target: bytes, version: bytes, lines: list[tuple[bytes, bytes]],
            body: bytes) -> None:
        head = [method + b" " + target + b" " + version, b"Host: x", b"Connection: close",
                b"Authorization: Bearer " + KEY.key.encode(),
                b"Content-Length: %d" % len(body)]
        head += [name + b": " + value for name, value in lines
                 if name.strip().lower() not in {n.encode() for n in FRAMING}]
        request = b"\r\n".join(head) + b"\r\n\r\n" + body

        async def send() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                async with asyncio.timeout(10):
                    return await reader.read()
            except ConnectionResetError:
                return b""
            finally:
                writer.close()

        answer = run_in_thread(loop, send)
        if not answer:
            return                        # closed without a word: fine for garbage
        status_line, _, rest = answer.partition(b"\r\n")
        status = int(status_line.split()[1])
        head_part, _, content = rest.partition(b"\r\n\r\n")
        content_type = b"application/json" if b"application/json" in head_part else b""
        assert_sane(status, content_type.decode(), content)

    await loop.run_in_executor(None, one)
    no_gateway_errors(caplog)
    assert (await fuzz_gateway.get("/health")).status == 200
