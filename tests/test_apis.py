"""The APIs beyond chat over plain HTTP: where each goes upstream, streams that break,
bytes, capabilities, limits and bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

import aiohttp
import pytest
from aiohttp import FormData

from gateway.app import create_app
from gateway.config import ApiKey, ServerConfig, backend
from gateway.endpoints import BY_ROUTE
from gateway.api.forms import Form
from tests.conftest import RUNTIME_ID, bearer, make_config, runtime_backend, samples, value
from bench.fake_runtime import FakeRuntime
from tests.test_hardening import read_http_response
from tests.test_reload import serve, yaml_text  # noqa: F401  (serve is a fixture)


def fake_vllm(**switches) -> FakeRuntime:
    """A fake vLLM of four-word answers, as these tests expect."""
    return FakeRuntime(**{"words": 4, **switches})


async def start(serve_fake, aiohttp_client, *fakes: FakeRuntime, kind: str = "vllm",
                **cfg_kw):
    servers = [await serve_fake(f) for f in fakes]
    cfg = make_config(*(runtime_backend(f"gpu-{i}", s, kind=kind, models={"llama": RUNTIME_ID})
                        for i, s in enumerate(servers)), **cfg_kw)
    return await aiohttp_client(create_app(cfg))


def events(text: str) -> list[tuple[str, str]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        out.append((lines.get("event", ""), lines.get("data", "")))
    return out


async def test_root_paths_go_to_the_runtimes_root(serve_fake, aiohttp_client):
    fake = fake_vllm()
    client = await start(serve_fake, aiohttp_client, fake)
    for path, body in [("/tokenize", {"prompt": "a b c"}), ("/detokenize", {"tokens": [1, 2]}),
                       ("/v2/rerank", {"query": "q", "documents": ["a", "b"]}),
                       ("/rerank", {"query": "q", "documents": ["a"]}),
                       ("/v1/rerank", {"query": "q", "documents": ["a"]}),
                       ("/v1/score", {"text_1": "a", "text_2": "b"})]:
        resp = await client.post(path, json={"model": "llama", **body})
        assert resp.status == 200, (path, await resp.text())
        assert resp.headers["X-Gateway-Backend"] == "gpu-0"
        seen_path, seen = fake.posts()[-1]
        assert seen_path == path and seen["model"] == RUNTIME_ID
        if path.endswith("rerank"):
            assert (await resp.json())["model"] == "llama"
    got = await samples(client)
    assert value(got, "gateway_requests_total", model="llama", backend="gpu-0",
                 endpoint="tokenize", status="200") == 2
    assert value(got, "gateway_requests_total", model="llama", backend="gpu-0",
                 endpoint="rerank", status="200") == 3
    # rerank's usage is total_tokens only: it counts as prompt tokens.
    assert value(got, "gateway_tokens_total", model="llama", backend="gpu-0",
                 type="prompt") == 3 * 11 + 9
    assert value(got, "gateway_usage_missing_total", model="llama", backend="gpu-0") == 0


async def test_a_capability_no_backend_has_is_501(serve_fake, aiohttp_client):
    client = await start(serve_fake, aiohttp_client, fake_vllm(), kind="tgi")
    for path, body in [("/v1/rerank", {"query": "q", "documents": ["a"]}),
                       ("/v1/responses", {"input": "x"}),
                       ("/v1/images/generations", {"prompt": "a cat"})]:
        resp = await client.post(path, json={"model": "llama", **body})
        assert resp.status == 501, path
        assert (await resp.json())["error"]["code"] == "capability_not_supported"


async def test_a_responses_stream_broken_midway_ends_with_its_error_event(
        serve_fake, aiohttp_client):
    fake = fake_vllm(close_after=5)
    client = await start(serve_fake, aiohttp_client, fake)
    resp = await client.post("/v1/responses", json={"model": "llama", "input": "x",
                                                    "stream": True})
    got = events(await resp.text())
    names = [name for name, _ in got]
    assert names[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert names[-1] == "error" and "response.completed" not in names
    assert '"sequence_number":5' in got[-1][1] and '"type":"error"' in got[-1][1]
    assert "[DONE]" not in await resp.text()
    m = await samples(client)
    assert value(m, "gateway_stream_aborts_total", backend="gpu-0",
                 reason="upstream_closed") == 1


async def test_a_responses_stream_whose_first_event_is_an_error_is_retried(
        serve_fake, aiohttp_client):
    bad, good = fake_vllm(first_event_error=True), fake_vllm()
    client = await start(serve_fake, aiohttp_client, bad, good)
    for _ in range(2):   # whichever the strategy picks first, the answer comes from gpu-1
        resp = await client.post("/v1/responses", json={"model": "llama", "input": "x",
                                                        "stream": True})
        assert resp.headers["X-Gateway-Backend"] == "gpu-1"
        assert [n for n, _ in events(await resp.text())][-1] == "response.completed"


async def test_speech_is_relayed_as_bytes_and_a_break_is_no_clean_end(
        serve_fake, aiohttp_client):
    fake = fake_vllm(words=5, chunk_delay=0.01)
    client = await start(serve_fake, aiohttp_client, fake)
    resp = await client.post("/v1/audio/speech", json={"model": "llama", "input": "hi",
                                                       "voice": "alloy"})
    assert resp.headers["Content-Type"] == "audio/mpeg"
    pieces = [chunk async for chunk in resp.content.iter_any()]
    assert b"".join(pieces) == b"".join(bytes([i]) * 1000 for i in range(5))
    assert len(pieces) > 1
    fake.close_after = 2
    resp = await client.post("/v1/audio/speech", json={"model": "llama", "input": "hi"})
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    m = await samples(client)
    assert value(m, "gateway_stream_aborts_total", backend="gpu-0",
                 reason="upstream_closed") == 1
    assert value(m, "gateway_usage_missing_total", model="llama", backend="gpu-0") == 0


async def test_images_usage_is_charged_to_the_keys_tpm(serve_fake, aiohttp_client):
    key = ApiKey("team", "sk-team", tpm=1000)
    client = await start(serve_fake, aiohttp_client, fake_vllm(), kind="openai",
                         auth_keys=(key,))
    resp = await client.post("/v1/images/generations", headers=bearer(key),
                             json={"model": "llama", "prompt": "a cat"})
    assert resp.status == 200 and len((await resp.json())["data"][0]["b64_json"]) == 8000
    resp = await client.post("/v1/responses", headers=bearer(key),
                             json={"model": "llama", "input": "x"})
    assert resp.status == 200
    # The images answer's 42 tokens were charged; the responses' 11 only after its answer.
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) in range(955, 959)
    resp = await client.get("/v1/models", headers=bearer(key))
    m = await samples(client)
    assert value(m, "gateway_tokens_total", model="llama", backend="gpu-0",
                 type="completion") == 30 + 4


async def test_stored_calls_need_a_key_allowed_on_that_backends_models(
        serve_fake, aiohttp_client):
    allowed, other = ApiKey("a", "sk-a", models=["llama"]), ApiKey("b", "sk-b", models=["x"])
    fake = fake_vllm()
    client = await start(serve_fake, aiohttp_client, fake, auth_keys=(allowed, other))
    made = await (await client.post("/v1/responses", headers=bearer(allowed),
                                    json={"model": "llama", "input": "x"})).json()
    assert (await client.get(f"/v1/responses/{made['id']}", headers=bearer(other))).status == 403
    resp = await client.get(f"/v1/responses/{made['id']}?include=x", headers=bearer(allowed))
    assert resp.status == 200 and (await resp.json())["id"] == made["id"]
    assert fake.stored_calls == [("GET", f"/v1/responses/{fake.created[0]}?include=x")]
    resp = await client.get(f"/v1/responses/{made['id']}?stream=true", headers=bearer(allowed))
    assert resp.headers["Content-Type"] == "text/event-stream"
    replay = events(await resp.text())
    assert replay[-1][0] == "response.completed" and made["id"] in replay[-1][1]
    assert RUNTIME_ID not in replay[0][1] and '"model":"llama"' in replay[0][1]
    assert (await client.get(f"/v1/responses/{made['id']}")).status == 401


# -- bad input ---------------------------------------------------------------------------

BAD_JSON = [
    ("/v1/responses", {"model": "llama", "input": 5}, "input"),
    ("/v1/responses", {"model": "llama", "previous_response_id": 3}, "previous_response_id"),
    ("/v1/responses", {"input": "x"}, "model"),
    ("/v1/responses", {"model": "llama", "stream": "yes"}, "stream"),
    ("/v1/rerank", {"model": "llama", "documents": ["a"]}, "query"),
    ("/v1/rerank", {"model": "llama", "query": "q", "documents": "a"}, "documents"),
    ("/v1/score", {"text_1": "a"}, "model"),
    ("/tokenize", {"prompt": "a"}, "model"),
    ("/detokenize", {"model": "llama", "tokens": "1 2"}, "tokens"),
    ("/v1/audio/speech", {"model": "llama"}, "input"),
    ("/v1/images/generations", {"model": "llama", "prompt": ["a"]}, "prompt"),
    ("/v1/rerank", {"model": "llama", "query": "q", "documents": ["a"], "stream": True},
     "stream"),
]


@pytest.fixture
async def strict(serve_fake, aiohttp_client, caplog):
    caplog.set_level(logging.DEBUG)
    fake = fake_vllm()
    client = await start(serve_fake, aiohttp_client, fake,
                         server=ServerConfig(max_body_mb=1))
    yield client, fake
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "Traceback" not in text and not any(r.exc_info for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


@pytest.mark.parametrize("path,body,param", BAD_JSON)
async def test_a_malformed_body_is_a_400_naming_the_field(strict, path, body, param):
    client, fake = strict
    resp = await client.post(path, json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == param and param in error["message"]
    assert not fake.requests


@pytest.mark.parametrize("path", ["/v1/responses", "/tokenize", "/v1/rerank"])
async def test_a_body_that_is_not_json_is_a_400(strict, path):
    client, _ = strict
    resp = await client.post(path, data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"


def form(**fields) -> FormData:
    data = FormData()
    for name, given in fields.items():
        if name == "file" and isinstance(given, bytes):
            data.add_field("file", given, filename="a.wav", content_type="audio/wav")
        else:
            data.add_field(name, given)
    return data


@pytest.mark.parametrize("fields,param", [
    ({"model": "llama"}, "file"),
    ({"file": b"RIFF"}, "model"),
    ({"model": "", "file": b"RIFF"}, "model"),
    ({"model": "llama", "file": b"RIFF", "stream": "maybe"}, "stream"),
    ({"model": "llama", "file": "not a file part"}, "file"),
])
async def test_a_form_without_file_or_model_is_a_400(strict, fields, param):
    client, fake = strict
    resp = await client.post("/v1/audio/transcriptions", data=form(**fields))
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert not fake.uploads()


async def test_a_refused_form_is_logged_with_the_model_and_stream_it_named(strict, caplog):
    client, _ = strict
    for fields in ({"model": "llama", "stream": "true"},                # no file
                   {"model": "not-configured", "file": "not a file part"}):
        data = FormData(default_to_multipart=True)   # multipart, though it has no file
        for name, given in fields.items():
            data.add_field(name, given)
        resp = await client.post("/v1/audio/transcriptions", data=data)
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "file"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["endpoint"], line["model"], line["stream"], line["status"])
            for line in lines] == [("transcriptions", "llama", True, 400),
                                   # metric labels take configured names only
                                   ("transcriptions", "", False, 400)]


async def test_a_body_that_is_not_a_form_is_a_400(strict):
    client, _ = strict
    for data, ctype in [(b'{"model": "llama"}', "application/json"),
                        (b"--x\r\nbroken", "multipart/form-data; boundary=x")]:
        resp = await client.post("/v1/audio/translations", data=data,
                                 headers={"Content-Type": ctype})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "file"


@pytest.mark.parametrize("path,ctype", [
    ("/v1/audio/transcriptions", "multipart/form-data; boundary=abc"),
    ("/v1/responses", "application/json")])
async def test_a_body_over_max_body_mb_is_a_413_before_it_is_read(strict, path, ctype):
    client, fake = strict
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {10 * 1024 * 1024}\r\n\r\n".encode() + b"x" * 1000)
        await writer.drain()
        status, _, body = await read_http_response(reader, timeout=5)
    finally:
        writer.close()
    assert status == 413 and b"request_too_large" in body
    assert not fake.uploads() and not fake.requests


async def test_a_chunked_upload_over_the_limit_is_a_413(strict):
    client, fake = strict

    async def body():
        for _ in range(40):
            yield b"x" * 64 * 1024

    resp = await client.post("/v1/audio/transcriptions", data=body(),
                             headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert resp.status == 413 and not fake.uploads()


async def test_a_stored_call_with_a_method_not_served_is_405(strict):
    client, _ = strict
    resp = await client.put("/v1/responses/resp_x")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"


def test_the_upload_goes_out_as_slices_of_the_one_buffer():
    raw = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama\r\n"
           b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
           b"Content-Type: audio/wav\r\n\r\n" + b"\x00" * 1000 + b"\r\n--b--\r\n")
    from gateway.api.forms import _parse
    got = Form(bytearray(raw), "multipart/form-data; boundary=b")
    _parse(got, b"b")
    assert got["model"] == "llama" and got.files == ["file"]
    upload = got.for_model(RUNTIME_ID)
    assert all(s.obj is got.buffer for s in (upload.slices[0], upload.slices[2]))
    assert b"".join(upload.slices) == raw.replace(b"\r\n\r\nllama", b"\r\n\r\n" +
                                                  RUNTIME_ID.encode())
    same = got.for_model("llama")
    assert len(same.slices) == 1 and same.slices[0].obj is got.buffer


def test_every_row_has_a_unique_route():
    assert len(BY_ROUTE) == sum(len(e.paths) for e in set(BY_ROUTE.values()))
    assert {e.name for e in BY_ROUTE.values()} == {
        "chat", "completions", "embeddings", "responses", "rerank", "score", "tokenize",
        "transcriptions", "translations", "speech", "images", "messages"}


async def test_echo_backends_answer_the_new_apis(aiohttp_client):
    client = await aiohttp_client(create_app(make_config(
        backend("e", "echo", models=["echo-1"]))))
    tokens = await (await client.post("/tokenize", json={"model": "echo-1",
                                                         "prompt": "to be or not to be"})).json()
    assert tokens["count"] == 6 and tokens["tokens"][:2] == tokens["tokens"][4:]
    text = await (await client.post("/detokenize", json={"model": "echo-1",
                                                         "tokens": tokens["tokens"]})).json()
    assert text == {"prompt": "to be or not to be"}
    ranked = await (await client.post("/v1/rerank", json={
        "model": "echo-1", "query": "red fox", "documents": ["blue sky", "a red fox"]})).json()
    assert [r["index"] for r in ranked["results"]] == [1, 0]
    scores = await (await client.post("/score", json={
        "model": "echo-1", "text_1": "red fox", "text_2": ["red fox", "sky"]})).json()
    assert [d["score"] for d in scores["data"]] == [1.0, 0.0]


@pytest.mark.parametrize("done_event", [True, False])
async def test_a_streamed_transcription_ends_as_its_runtime_ends_it(
        serve_fake, aiohttp_client, done_event):
    fake = fake_vllm(transcript_done_event=done_event)
    client = await start(serve_fake, aiohttp_client, fake)
    resp = await client.post("/v1/audio/transcriptions",
                             data=form(model="llama", file=b"RIFF", stream="true"))
    text = await resp.text()
    assert resp.status == 200 and '"error"' not in text
    assert text.rstrip().endswith("[DONE]") != done_event
    if not done_event:   # vLLM's chunks name the model: the client sees the public name
        assert '"model": "llama"' in text and RUNTIME_ID not in text
    fake.close_after = 2
    resp = await client.post("/v1/audio/transcriptions",
                             data=form(model="llama", file=b"RIFF", stream="true"))
    last = (await resp.text()).strip().split("\n\n")[-1]
    assert last.startswith('data: {"error"')


async def test_echo_serves_audio_and_images(aiohttp_client):
    import base64
    client = await aiohttp_client(create_app(make_config(
        backend("e", "echo", models=["echo-1"]))))
    resp = await client.post("/v1/audio/transcriptions",
                             data=form(model="echo-1", file=b"x" * 1234))
    assert (await resp.json())["text"] == "echo heard 1234 bytes of audio"
    resp = await client.post("/v1/audio/translations",
                             data=form(model="echo-1", file=b"x" * 10, stream="true"))
    assert [n for n, _ in events(await resp.text())] == [""] * 7
    resp = await client.post("/v1/audio/speech", json={"model": "echo-1", "input": "a b c",
                                                       "voice": "alloy"})
    wav = await resp.read()
    assert resp.headers["Content-Type"] == "audio/wav" and wav[:4] == b"RIFF"
    assert len(wav) == 44 + 3 * 400
    resp = await client.post("/v1/images/generations", json={"model": "echo-1",
                                                              "prompt": "a red fox"})
    png = base64.b64decode((await resp.json())["data"][0]["b64_json"])
    assert png.startswith(b"\x89PNG")
    m = await samples(client)
    assert value(m, "gateway_tokens_total", model="echo-1", backend="e", type="prompt") == 3


async def test_a_responses_stream_cut_by_the_drain_ends_with_its_error_event(serve):
    text = yaml_text({"a": 1}).replace("{admin_key: adm}", "{admin_key: adm, drain_s: 1}")
    proc, port, _ = serve(text)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"http://127.0.0.1:{port}/v1/responses", json={
            "model": "m", "stream": True, "input": " ".join(["w"] * 200)})   # 4 s of words
        await resp.content.readuntil(b"response.output_text.delta")
        proc.send_signal(signal.SIGTERM)
        got = events((await asyncio.wait_for(resp.read(), 10)).decode())
    assert got[-1][0] == "error" and '"code":"shutting_down"' in got[-1][1]
    assert "response.completed" not in [name for name, _ in got]
    assert proc.wait(10) == 0


@pytest.mark.parametrize("path,body,tokens", [
    ("/v1/responses", {"input": "x"}, 7 + 4),                 # input_tokens + output_tokens
    ("/v1/responses", {"input": "x", "stream": True}, 7 + 4),  # from response.completed
    ("/v1/rerank", {"query": "q", "documents": ["a"]}, 11),    # total_tokens
    ("/v1/audio/transcriptions", None, 20 + 4),
])
async def test_tpm_is_charged_from_each_apis_own_usage(serve_fake, aiohttp_client,
                                                       path, body, tokens):
    key = ApiKey("team", "sk-team", tpm=600)   # refills 10 a second
    client = await start(serve_fake, aiohttp_client, fake_vllm(), auth_keys=(key,))
    data = form(model="llama", file=b"RIFF") if body is None else None
    resp = await client.post(path, headers=bearer(key), data=data,
                             json=None if body is None else {"model": "llama", **body})
    assert resp.status == 200
    await resp.read()
    resp = await client.get("/v1/models", headers=bearer(key))   # admitted: no tpm taken
    remaining = int(resp.headers["x-ratelimit-remaining-tokens"])
    assert 600 - tokens <= remaining < 600 - tokens + 10   # what refilled in under 1 s


async def test_a_chunked_upload_reaches_the_runtime_whole(serve_fake, aiohttp_client):
    fake = fake_vllm()
    client = await start(serve_fake, aiohttp_client, fake)
    audio = bytes(range(256)) * 300
    raw = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama\r\n"
           b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
           b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--b--\r\n")

    async def pieces():
        for at in range(0, len(raw), 7000):
            yield raw[at:at + 7000]

    resp = await client.post("/v1/audio/translations", data=pieces(),
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status == 200 and (await resp.json())["text"] == "w0 w1 w2 w3"
    assert fake.uploads()[-1]["data"] == audio and fake.uploads()[-1]["model"] == RUNTIME_ID
