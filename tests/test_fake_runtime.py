"""The fake runtime the other tests and the benchmark stand on: real formats, working switches.

Every test that checks what the gateway does with a runtime's answer is only as good as
the fake's answers: here the official SDK parses them straight from the fake, and each
switch is seen to do what it says.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import openai
import pytest

from bench.fake_runtime import FakeRuntime
from bench.fake_runtime.formats import HEALTH
from bench.procs import Proc, free_port
from tests.conftest import StartRuntime, eventually

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def sse_data(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


async def test_the_openai_sdk_reads_every_answer(start_runtime: StartRuntime):
    fake, server = await start_runtime(words=3, models=("m",))
    client = openai.AsyncOpenAI(base_url=server.url("/v1"), api_key="k", max_retries=0)
    try:
        done = await client.chat.completions.create(**CHAT)
        assert done.choices[0].message.content == "w0 w1 w2"
        assert done.choices[0].finish_reason == "stop"
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 3)
        stream = await client.chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            "w0 w1 w2 "
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
        text = await client.completions.create(model="m", prompt="Once")
        assert text.choices[0].text == "w0 w1 w2" and text.object == "text_completion"
        pieces = [c.choices[0].text async for c in await client.completions.create(
            model="m", prompt="Once", stream=True)]
        assert "".join(pieces) == "w0 w1 w2 "
        vectors = await client.embeddings.create(model="m", input=["a", "b"])
        assert [d.index for d in vectors.data] == [0, 1]
        assert [m.id for m in (await client.models.list()).data] == ["m"]
    finally:
        await client.close()
    assert fake.answered == 5 and len(fake.requests) == 5
    assert fake.headers_seen[0]["Authorization"] == "Bearer k"
    assert fake.streams == 2 and fake.usage_events == 1 and fake.events == 10


@pytest.mark.parametrize("kind", sorted(HEALTH))
async def test_each_kind_answers_health_on_its_path(start_runtime: StartRuntime, kind):
    fake, server = await start_runtime(kind=kind, models=("a", "b"))
    path = HEALTH[kind][0]
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url(path)) as resp:
            assert resp.status == 200
            body = await resp.read()
        if kind == "ollama":
            assert [m["name"] for m in json.loads(body)["models"]] == ["a", "b"]
        assert fake.health_checks == 1
        fake.health_status = 503
        async with session.get(server.url(path)) as resp:
            assert resp.status == 503
        async with session.post(server.url("/v1/embeddings"),
                                json={"model": "a", "input": "x"}) as resp:
            assert resp.status == (404 if kind == "tgi" else 200)


async def test_failure_switches_for_the_runtime_and_for_one_model(start_runtime: StartRuntime):
    fake, server = await start_runtime(status=503, fail_times=1, retry_after="7",
                                       by_model={"sick": {"status": 500}})
    async with aiohttp.ClientSession() as session:
        statuses = []
        for model in ("m", "m", "sick", "sick"):
            async with session.post(server.url("/v1/chat/completions"),
                                    json={**CHAT, "model": model}) as resp:
                statuses.append((resp.status, resp.headers.get("Retry-After")))
                error = (await resp.json()).get("error")
                if resp.status != 200:
                    assert error["message"] == f"fake failure {resp.status}"
    assert statuses == [(503, "7"), (200, None), (500, None), (500, None)]
    assert fake.answered == 4


async def test_a_leaky_runtime_quotes_credentials_and_sends_its_own_headers(
        start_runtime: StartRuntime):
    _, server = await start_runtime(status=401, echo_credentials=True,
                                    extra_headers={"X-Hop-Secret": "1", "Set-Cookie": "a=b"})
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url("/v1/chat/completions"), json=CHAT,
                                headers={"Authorization": "Bearer sk-x", "api-key": "k2"}) as r:
            body = await r.json()
            assert r.status == 401 and body["error"]["code"] == "invalid_api_key"
            assert body["error"]["message"].endswith("Bearer sk-x k2")
            assert "sk-x" in body["error"]["escaped"] and "sk-x" in r.headers["WWW-Authenticate"]
            assert r.headers["X-Hop-Secret"] == "1" and r.headers["Set-Cookie"] == "a=b"


async def test_stream_switches(start_runtime: StartRuntime):
    fake, server = await start_runtime(words=4, close_after=2)
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url("/v1/chat/completions"),
                                json={**CHAT, "stream": True}) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        fake.close_after, fake.first_event_error = None, True
        async with session.post(server.url("/v1/chat/completions"),
                                json={**CHAT, "stream": True}) as resp:
            events = sse_data(await resp.read())
    assert len(events) == 1 and json.loads(events[0])["error"]["message"] == "model overloaded"
    assert fake.events == 2 and fake.in_flight == 0


@pytest.mark.parametrize("switches", [{"hang_s": 5}, {"chunk_delay": 0.5, "words": 20}])
async def test_a_caller_leaving_cancels_the_answer(start_runtime: StartRuntime, switches):
    fake, server = await start_runtime(**switches)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps({**CHAT, "stream": True}).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                 % len(body) + body)
    await writer.drain()
    assert await eventually(lambda: fake.answered)
    writer.close()
    await eventually(lambda: fake.cancelled)
    assert fake.cancelled == 1 and fake.in_flight == 0


async def test_requests_on_one_connection_are_answered_in_order(start_runtime: StartRuntime):
    fake, server = await start_runtime(words=2, chunk_delay=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        stream = json.dumps({**CHAT, "stream": True}).encode()
        plain = json.dumps(CHAT).encode()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % len(stream) + stream + head % len(plain) + plain
                     + b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            raw = b""
            while raw.count(b"HTTP/1.1 200 OK") < 3 or not raw.endswith(b"}"):
                raw += await reader.read(65536)
    finally:
        writer.close()
    first, second, third = raw.split(b"HTTP/1.1 200 OK")[1:]
    assert b"text/event-stream" in first and first.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert b'"chat.completion"' in second
    assert json.loads(third.split(b"\r\n\r\n", 1)[1])["answered"] == 2


async def test_a_body_without_content_length_is_refused(start_runtime: StartRuntime):
    fake, server = await start_runtime()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    async with asyncio.timeout(5):
        raw = await reader.read()         # answered, then closed
    writer.close()
    assert raw.startswith(b"HTTP/1.1 411 ") and fake.answered == 0


def _http(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
        return resp.read()


def test_the_program_the_benchmark_runs(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.fake_runtime", "--port", str(port), "--tokens", "4",
            "--chunk-ms", "1", "--switches", '{"models": ["bench"]}']
    with Proc("fake runtime", argv, tmp_path / "fake.log", cwd=ROOT) as proc:
        proc.start().wait_ready(url + "/health", 20)
        plain = json.loads(_http(url + "/v1/chat/completions", CHAT))
        streamed = _http(url + "/v1/chat/completions", {
            **CHAT, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}})
        stats = json.loads(_http(url + "/stats"))
        models = json.loads(_http(url + "/v1/models"))
        assert proc.stop() == -signal.SIGTERM
    assert plain["usage"]["completion_tokens"] == 4         # --tokens
    assert len(sse_data(streamed)) == 3 + 3                 # max_tokens, finish, usage, [DONE]
    assert [m["id"] for m in models["data"]] == ["bench"]
    assert {k: v for k, v in stats.items() if k != "health_checks"} == {
        "answered": 2, "in_flight": 0, "streams": 1, "events": 5, "usage_events": 1,
        "cancelled": 0}
    bad = subprocess.run([sys.executable, "-m", "bench.fake_runtime", "--port", "1",
                          "--switches", '{"nonsense": 1}'], capture_output=True, text=True,
                         cwd=ROOT, timeout=30)
    assert bad.returncode == 2 and "nonsense" in bad.stderr


def test_switches_arrive_as_json_too():
    fake = FakeRuntime(words=3, models=["a"], by_model={"a": {"status": 503}})
    assert fake.models == ("a",) and fake.by_model["a"].failing()
    assert fake.by_model["a"].words == 5          # its own switches, not the runtime's
