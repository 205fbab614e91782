"""Nothing leaks, nothing is smuggled, nobody can hold the gateway up.

Client credentials never reach a runtime; hop-by-hop headers stay on their hop;
a backend's key never shows up anywhere a client or operator could read it;
request fields never pick the upstream; CORS answers only configured origins;
slow, malformed and oversized requests are cut off before anything goes upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import RATE_LIMIT_HEADERS, create_app
from gateway.config import ApiKey, RetryConfig, ServerConfig, Timeouts, load_config
from tests.conftest import (CHAT, RUNTIME_ID, StartRuntime, bearer, eventually, make_config,
                            runtime_backend)

CANARY = "sk-canary-7f3c9a1e5b2d4f60"          # a backend's api_key
HEADER_CANARY = "hk-canary-0e9d8c7b6a5f4e3d"   # a backend's secret extra header
ADMIN = "adm-hardening-0123456789"
CLIENT = ApiKey(name="web", key="sk-client-key-abcdef", models=("*",), rpm=1000)


# --- a runtime that misbehaves on purpose -------------------------------------------

# Headers that must stay on the runtime's hop, sent with every answer.
HOP_HEADERS = {"Connection": "X-Hop-Secret", "X-Hop-Secret": "1", "Keep-Alive": "timeout=99",
               "Proxy-Authenticate": "Basic realm=x", "Upgrade": "h2c", "Trailer": "X-Trailer",
               "Set-Cookie": "session=runtime", "X-Runtime-Internal": "gpu-7"}
# A runtime that quotes the credentials it was sent in its errors, and sends HOP_HEADERS.
LEAKY = {"echo_credentials": True, "extra_headers": HOP_HEADERS}
MODES = {"ok": {}, "echo_401": {"status": 401}, "echo_500": {"status": 500},
         "hang": {"hang_s": 5}, "first_event_error": {"first_event_error": True}}


async def leaky_gateway(start_runtime: StartRuntime, aiohttp_client: AiohttpClient,
                        mode: str = "ok", **cfg_kw):
    runtime, server = await start_runtime(**LEAKY, **MODES[mode])
    cfg = make_config(
        runtime_backend("gpu-a", server, models={"llama": RUNTIME_ID}, api_key=CANARY,
                        headers={"api-key": HEADER_CANARY, "X-Org": "infra"},
                        timeouts=Timeouts(connect_s=1, first_byte_s=0.3, idle_s=1)),
        retries=RetryConfig(attempts=0), auth_keys=(CLIENT,),
        server=ServerConfig(admin_key=ADMIN), **cfg_kw)
    client = await aiohttp_client(create_app(cfg))
    return runtime, server, client


def assert_no_secret(text: str, where: str) -> None:
    for secret in (CANARY, HEADER_CANARY):
        assert secret not in text, f"{where} leaks a backend secret"


async def everything_an_operator_sees(client) -> str:
    parts = [await (await client.get("/metrics")).text()]
    for path in ("/admin/backends", "/admin/config"):
        resp = await client.get(path, headers=bearer(ADMIN))
        assert resp.status == 200
        parts.append(await resp.text())
    return "\n".join(parts)


def response_text(resp, body: bytes) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
    return headers + "\n" + body.decode(errors="replace")


# --- credentials and hop-by-hop headers ----------------------------------------------------

async def test_client_credentials_never_reach_the_runtime(start_runtime: StartRuntime,
                                                          aiohttp_client: AiohttpClient):
    runtime, _, client = await leaky_gateway(start_runtime, aiohttp_client)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={
        **bearer(CLIENT.key), "api-key": "client-azure-key", "x-api-key": "client-anthropic",
        "Proxy-Authorization": "Basic Y2xpZW50", "Proxy-Connection": "keep-alive",
        "Cookie": "session=client", "Connection": "keep-alive, X-Client-Hop",
        "X-Client-Hop": "1", "TE": "trailers", "Upgrade": "websocket"})
    assert resp.status == 200
    seen = {k.lower(): v for k, v in runtime.headers_seen[0].items()}
    assert seen["authorization"] == f"Bearer {CANARY}"
    assert seen["api-key"] == HEADER_CANARY                 # the backend's own, configured
    for name in ("x-api-key", "proxy-authorization", "proxy-connection", "cookie",
                 "x-client-hop", "te", "upgrade"):
        assert name not in seen
    assert "client" not in json.dumps(seen).lower()


@pytest.mark.parametrize("stream", [False, True])
async def test_runtime_hop_by_hop_headers_never_reach_the_client(
        start_runtime: StartRuntime, aiohttp_client: AiohttpClient, stream):
    _, _, client = await leaky_gateway(start_runtime, aiohttp_client)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream},
                             headers=bearer(CLIENT.key))
    assert resp.status == 200
    await resp.read()
    assert_runtime_headers_dropped(resp)


async def test_passed_through_4xx_keeps_only_the_body(start_runtime: StartRuntime,
                                                      aiohttp_client: AiohttpClient):
    _, _, client = await leaky_gateway(start_runtime, aiohttp_client, "echo_401")
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT.key))
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert_runtime_headers_dropped(resp)
    assert "WWW-Authenticate" not in resp.headers


def assert_runtime_headers_dropped(resp) -> None:
    for name in HOP_HEADERS:
        if name == "Connection":
            assert "x-hop-secret" not in resp.headers.get("Connection", "").lower()
        else:
            assert name not in resp.headers, name


# --- a backend's key never leaks ---------------------------------------------------------

@pytest.mark.parametrize("mode,status", [
    ("refused", 502), ("echo_401", 401), ("echo_500", 502), ("hang", 504),
    ("first_event_error", 502),
])
async def test_backend_key_never_leaks_on_error_paths(start_runtime: StartRuntime,
                                                      aiohttp_client: AiohttpClient, caplog,
                                                      mode, status):
    caplog.set_level(logging.DEBUG)
    runtime, server, client = await leaky_gateway(start_runtime, aiohttp_client,
                                                  "ok" if mode == "refused" else mode)
    if mode == "refused":
        await server.close()      # healthy at start, then the port is closed
    stream = mode == "first_event_error"
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream},
                             headers=bearer(CLIENT.key))
    body = await resp.read()
    assert resp.status == status
    assert "error" in json.loads(body)
    if mode in ("echo_401", "first_event_error"):
        assert runtime.requests                             # the runtime did echo the key...
        assert b"***" in body or mode == "first_event_error"
    assert_no_secret(response_text(resp, body), "the response")
    assert_no_secret(await everything_an_operator_sees(client), "metrics or admin output")
    assert_no_secret(caplog.text, "the log")


async def test_runtime_error_message_is_scrubbed_in_502(start_runtime: StartRuntime,
                                                        aiohttp_client: AiohttpClient):
    _, _, client = await leaky_gateway(start_runtime, aiohttp_client, "first_event_error")
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                             headers=bearer(CLIENT.key))
    message = (await resp.json())["error"]["message"]
    assert "model overloaded (key Bearer ***" in message   # the runtime's words kept, its key not


async def test_backend_key_never_leaks_from_a_failed_reload(aiohttp_client: AiohttpClient,
                                                            tmp_path,
                                                            caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HARDENING_CANARY", CANARY)
    path = tmp_path / "gateway.yaml"
    valid = f"""
server: {{admin_key: {ADMIN}}}
backends:
  gpu-a:
    kind: echo
    models: [llama]
    api_key: ${{HARDENING_CANARY}}
    headers: {{api-key: {HEADER_CANARY}}}
"""
    path.write_text(valid)
    client = await aiohttp_client(create_app(load_config(str(path)), str(path)))
    # Invalid in other places, with the secrets right next to the mistakes.
    path.write_text(valid.replace("models: [llama]", "models: [llama]\n    weight: heavy\n"
                                  "    bogus: 1") + f"\nauth: {{keys: [{{name: x, key: {CANARY},"
                                                  f" rpm: lots}}]}}\n")
    resp = await client.post("/admin/reload", headers=bearer(ADMIN))
    body = await resp.read()
    assert resp.status == 400
    assert json.loads(body)["problems"]                  # refused, with reasons
    assert_no_secret(response_text(resp, body), "the reload answer")
    assert_no_secret(await everything_an_operator_sees(client), "metrics or admin output")
    assert_no_secret(caplog.text, "the log")


# --- request fields never pick the upstream --------------------------------------------

async def test_request_fields_never_change_where_a_request_goes(start_runtime: StartRuntime,
                                                                aiohttp_client: AiohttpClient):
    runtime, _, client = await leaky_gateway(start_runtime, aiohttp_client)
    decoy, decoy_server = await start_runtime()
    elsewhere = decoy_server.url("/v1")
    resp = await client.post("/v1/chat/completions", json={
        **CHAT, "api_base": elsewhere, "base_url": elsewhere, "url": elsewhere,
        "api_key": "sk-attacker", "extra_headers": {"Host": "decoy"}},
        headers={**bearer(CLIENT.key), "X-Forwarded-Host": f"127.0.0.1:{decoy_server.port}",
                 "Forwarded": f"host=127.0.0.1:{decoy_server.port}",
                 "X-Original-URL": elsewhere, "X-Gateway-Backend": "decoy"})
    assert resp.status == 200
    assert resp.headers["X-Gateway-Backend"] == "gpu-a"
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": elsewhere},
                             headers=bearer(CLIENT.key))
    assert resp.status == 404
    assert len(runtime.requests) == 1 and decoy.requests == []
    assert runtime.headers_seen[0]["Authorization"] == f"Bearer {CANARY}"


# --- CORS ----------------------------------------------------------------------------------

APP_ORIGIN = "https://app.example.com"


async def cors_gateway(start_runtime: StartRuntime, aiohttp_client: AiohttpClient,
                       origins: tuple[str, ...]):
    _, server = await start_runtime(**LEAKY)
    cfg = make_config(runtime_backend("gpu-a", server, models={"llama": RUNTIME_ID}),
                      server=ServerConfig(cors_origins=origins), auth_keys=(CLIENT,))
    return await aiohttp_client(create_app(cfg))


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type"}


async def test_cors_answers_configured_origins_only(start_runtime: StartRuntime,
                                                    aiohttp_client: AiohttpClient):
    client = await cors_gateway(start_runtime, aiohttp_client, (APP_ORIGIN,))
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        resp = await client.options(path, headers=preflight(APP_ORIGIN))
        assert resp.status == 200, path
        assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert resp.headers["Access-Control-Allow-Methods"] == "POST"
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert "Origin" in resp.headers.getall("Vary", [])
    resp = await client.options("/v1/models", headers=preflight(APP_ORIGIN, "GET"))
    assert resp.status == 200
    # The preflight needs no key and is not an API request.
    metrics = await (await client.get("/metrics")).text()
    assert 'endpoint="chat"' not in metrics

    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"Origin": APP_ORIGIN, **bearer(CLIENT.key)})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    exposed = resp.headers["Access-Control-Expose-Headers"].lower()
    for name in ("x-request-id", "x-gateway-backend", "x-gateway-route", "retry-after",
                 *RATE_LIMIT_HEADERS):
        assert name in exposed
    # Errors reach the page too, so it can show them.
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP_ORIGIN})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN

    evil = "https://evil.example.com"
    resp = await client.options("/v1/chat/completions", headers=preflight(evil))
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "error" in await resp.json()
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"Origin": evil, **bearer(CLIENT.key)})
    assert "Access-Control-Allow-Origin" not in resp.headers
    # Routes outside /v1 never take part in CORS.
    resp = await client.get("/metrics", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_wildcard_is_never_combined_with_credentials(
        start_runtime: StartRuntime, aiohttp_client: AiohttpClient):
    client = await cors_gateway(start_runtime, aiohttp_client, ("*",))
    for origin in (APP_ORIGIN, "https://other.example.org"):
        resp = await client.options("/v1/chat/completions", headers=preflight(origin))
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] in (origin, "*")
        assert "Access-Control-Allow-Credentials" not in resp.headers
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"Origin": origin, "Cookie": "a=b",
                                          **bearer(CLIENT.key)})
        assert resp.status == 200
        assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_no_cors_headers_when_no_origin_is_configured(start_runtime: StartRuntime,
                                                            aiohttp_client: AiohttpClient):
    client = await cors_gateway(start_runtime, aiohttp_client, ())
    resp = await client.options("/v1/chat/completions", headers=preflight(APP_ORIGIN))
    assert resp.status == 405
    assert "error" in await resp.json()
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"Origin": APP_ORIGIN, **bearer(CLIENT.key)})
    assert resp.status == 200
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


# --- slow, malformed and oversized requests --------------------------------------------

async def read_http_response(reader: asyncio.StreamReader, timeout: float = 5
                             ) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, headers, body); (0, {}, b"") when the server just closed."""
    async with asyncio.timeout(timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return 0, {}, b""
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return status, headers, body


async def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_http_response(reader)
    finally:
        writer.close()


async def plain_gateway(start_runtime: StartRuntime, **kw):
    runtime, server = await start_runtime()
    cfg = make_config(runtime_backend("gpu-a", server, models={"llama": RUNTIME_ID}), **kw)
    return runtime, cfg


async def test_slowloris_is_cut_off_without_slowing_others(start_runtime: StartRuntime,
                                                            aiohttp_server: AiohttpServer):
    runtime, cfg = await plain_gateway(start_runtime)
    # The runner gets run_app's keep-alive default: handler_args must win over it.
    gateway = await aiohttp_server(create_app(cfg, header_timeout_s=1.0), keepalive_timeout=75)
    opened: list[int] = []   # one entry per slow connection made

    async def trickle() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        opened.append(1)
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            for _ in range(50):                       # at most 5 s
                if reader.at_eof():
                    break
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.1)             # a fixed pace: one byte each 0.1 s
            assert await reader.read() == b""            # closed, no answer
        except ConnectionResetError:
            pass
        finally:
            writer.close()
        return time.monotonic() - started

    async def silent() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        opened.append(1)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        return time.monotonic() - started

    slow = [asyncio.create_task(trickle()) for _ in range(20)] + [asyncio.create_task(silent())]
    assert await eventually(lambda: len(opened) == 21, timeout=5), f"{len(opened)} of 21 open"
    body = json.dumps(CHAT).encode()
    for _ in range(3):                                    # others are served at full speed
        started = time.monotonic()
        status, _, _ = await raw_exchange(gateway.port, (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body)
        assert status == 200
        assert time.monotonic() - started < 0.5
    durations = await asyncio.gather(*slow)
    assert all(0.9 <= d < 2.5 for d in durations), durations
    assert len(runtime.requests) == 3


@pytest.mark.parametrize("name,data,statuses", [
    ("content-length and transfer-encoding",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (400,)),
    ("two content-lengths",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Content-Length: 3\r\n\r\n{}", (400,)),
    ("obfuscated transfer-encoding",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n"
     b"Content-Length: 2\r\n\r\n{}", (400, 501)),
    ("oversized header line",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000
     + b"\r\nContent-Length: 2\r\n\r\n{}", (400, 431)),
    ("too many headers",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-H%d: 1\r\n" % i for i in range(300)) + b"Content-Length: 2\r\n\r\n{}",
     (400, 431)),
    ("oversized request line",
     b"POST /v1/chat/completions?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     (400, 414, 431)),
    ("header without a colon",
     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nBroken header\r\n\r\n", (400,)),
])
async def test_malformed_http_is_refused_and_never_forwarded(start_runtime: StartRuntime,
                                                             aiohttp_server: AiohttpServer,
                                                             caplog, name, data, statuses):
    runtime, cfg = await plain_gateway(start_runtime)
    gateway = await aiohttp_server(create_app(cfg))
    status, _, body = await raw_exchange(gateway.port, data)
    assert status in statuses, (name, status, body)
    assert b"Traceback" not in body
    # The client's fault: one WARNING line with the reason, not an ERROR with a traceback.
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records), caplog.text
    assert all(r.getMessage().startswith("Error handling request from ")
               and len(r.getMessage().split(": ", 1)) == 2 for r in records), caplog.text
    good = json.dumps(CHAT).encode()
    status, _, _ = await raw_exchange(gateway.port, (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % len(good)) + good)
    assert status == 200                                  # and the gateway still serves
    assert len(runtime.requests) == 1


async def test_undecodable_credentials_are_401_not_500(start_runtime: StartRuntime,
                                                       aiohttp_server: AiohttpServer):
    _, cfg = await plain_gateway(start_runtime, auth_keys=(CLIENT,),
                                 server=ServerConfig(admin_key=ADMIN))
    gateway = await aiohttp_server(create_app(cfg))
    for path, method in (("/admin/backends", b"GET"), ("/v1/models", b"GET")):
        status, _, body = await raw_exchange(gateway.port, method + b" " + path.encode()
                                             + b" HTTP/1.1\r\nHost: x\r\n"
                                             b"Authorization: Bearer \xff\xfe\x80\r\n\r\n")
        assert status == 401, body


async def test_fifty_megabyte_body_is_413_and_never_forwarded(start_runtime: StartRuntime,
                                                              aiohttp_server: AiohttpServer):
    runtime, cfg = await plain_gateway(start_runtime)     # max_body_mb: 16 (the default)
    gateway = await aiohttp_server(create_app(cfg))
    fifty_mb = 50 * 1024 * 1024
    # Declared up front: refused before a byte of the body is read.
    started = time.monotonic()
    status, _, body = await raw_exchange(gateway.port, (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % fifty_mb) + b'{"model": "llama", "messages": [')
    assert status == 413 and time.monotonic() - started < 2
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # Chunked, so its size is unknown until it has been read: cut off at the limit.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b" " * 1024 * 1024)
        sent = 0
        answer = asyncio.create_task(read_http_response(reader, timeout=30))
        while sent < 50 and not answer.done():
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
        status, _, body = await answer
    finally:
        writer.close()
    assert status == 413
    assert 16 <= sent < 50                 # cut off at the limit, not at the end
    assert runtime.requests == []


def _compressors():
    import gzip

    import brotli
    try:
        from compression import zstd   # Python 3.14+
    except ImportError:
        from backports import zstd
    return {"gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress}


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_compressed_bodies_are_bounded_and_checked(start_runtime: StartRuntime,
                                                         aiohttp_client: AiohttpClient, coding):
    # Every coding aiohttp can decode is installed with the gateway: without its module,
    # aiohttp answers a plain-text 400 ("Please install ...") before any handler runs.
    compress = _compressors()[coding]
    runtime, cfg = await plain_gateway(start_runtime)
    client = await aiohttp_client(create_app(cfg))
    headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
    resp = await client.post("/v1/chat/completions", data=b"not compressed at all",
                             headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    # A small bomb: 50 MB of JSON in at most 100 kB. The limit counts what it inflates to.
    bomb = compress(b'{"model": "llama", "pad": "' + b" " * (50 * 1024 * 1024) + b'"}')
    assert len(bomb) < 100_000
    resp = await client.post("/v1/chat/completions", data=bomb, headers=headers)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] is not None
    resp = await client.post("/v1/chat/completions", data=compress(
        json.dumps(CHAT).encode()), headers=headers)
    assert resp.status == 200
    assert len(runtime.requests) == 1


async def test_a_body_that_fails_to_decode_midway_is_a_400_without_a_traceback(
        start_runtime: StartRuntime, aiohttp_server: AiohttpServer, caplog):
    runtime, cfg = await plain_gateway(start_runtime)
    gateway = await aiohttp_server(create_app(cfg))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Encoding: deflate\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        # Valid deflate at first, so the handler is already reading when the rest breaks.
        start = zlib.compress(b'{"model": "llama", "messages": [')[:-4]
        writer.write(b"%x\r\n%s\r\n" % (len(start), start))
        await writer.drain()
        await asyncio.sleep(0.2)   # a fixed wait: nothing public shows the handler reading
        writer.write(b"6\r\n\xff\xfe\xfd\xfc\xfb\xfa\r\n0\r\n\r\n")
        await writer.drain()
        status, _, body = await read_http_response(reader)
    finally:
        writer.close()
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_request"
    # A fixed wait, the absence is the check: aiohttp would log after the answer, as it
    # reads on.
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert runtime.requests == []


async def test_header_deadline_never_cuts_a_long_answer_or_a_kept_alive_client(
        start_runtime: StartRuntime, aiohttp_client: AiohttpClient):
    fake, server = await start_runtime(chunk_delay=0.4, words=5)    # a 2 s stream
    cfg = make_config(runtime_backend("gpu-a", server, models={"llama": RUNTIME_ID}))
    client = await aiohttp_client(create_app(cfg, header_timeout_s=1.0))
    for _ in range(2):      # the second one reuses the connection after the first ended
        started = time.monotonic()
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        body = await resp.read()
        assert resp.status == 200 and body.endswith(b"data: [DONE]\n\n")
        assert time.monotonic() - started > 1.5
        await asyncio.sleep(0.5)   # a fixed wait: the kept-alive client idles between requests
    assert len(fake.requests) == 2
