"""`routes.<model>.max_output_tokens`: sent upstream when a request asks for no limit, and
the ceiling when it asks for more, in each API's own field."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from gateway.config import RouteConfig, backend
from tests.conftest import RUNTIME_ID, make_config, runtime_backend

CAP = 8
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def capped(start_runtime, aiohttp_client):
    """A fake vLLM (chat, completions, Responses, Messages) behind model "m", capped at 8,
    and model "free" on the same runtime without a cap."""
    fake, server = await start_runtime(models=(RUNTIME_ID,))
    cfg = make_config(runtime_backend("rt", server, models={"m": RUNTIME_ID,
                                                            "free": RUNTIME_ID}),
                      routes={"m": RouteConfig(max_output_tokens=CAP)})
    return fake, await aiohttp_client(create_app(cfg))


@pytest.mark.parametrize(("path", "body", "sent"), [
    ("/v1/chat/completions", {"messages": HELLO}, {"max_tokens": CAP}),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 100}, {"max_tokens": CAP}),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": None}, {"max_tokens": CAP}),
    ("/v1/chat/completions", {"messages": HELLO, "max_completion_tokens": 32000},
     {"max_completion_tokens": CAP}),
    ("/v1/chat/completions", {"messages": HELLO, "max_completion_tokens": 3},
     {"max_completion_tokens": 3}),
    ("/v1/completions", {"prompt": "hi"}, {"max_tokens": CAP}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 5}, {"max_tokens": 5}),
    ("/v1/responses", {"input": "hi"}, {"max_output_tokens": CAP}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 9}, {"max_output_tokens": CAP}),
    ("/v1/messages", {"messages": HELLO, "max_tokens": 32000}, {"max_tokens": CAP}),
    ("/v1/messages", {"messages": HELLO, "max_tokens": 2}, {"max_tokens": 2}),
    # Not an integer: the runtime's to refuse, in its own words (the fake takes anything).
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": "many"},
     {"max_tokens": "many"}),
])
async def test_the_cap_is_sent_or_lowers_the_ask(capped, path, body, sent):
    fake, client = capped
    for stream in (False, True):
        resp = await client.post(path, json={"model": "m", **body, "stream": stream})
        assert resp.status == 200, await resp.text()
        await resp.read()
        seen_path, seen = fake.posts()[-1]
        assert seen_path == path
        assert {k: seen.get(k) for k in sent} == sent
        others = {"max_tokens", "max_completion_tokens", "max_output_tokens"} - set(sent)
        assert {k: seen[k] for k in others if k in seen} == {
            k: body[k] for k in others if k in body}
    # Another model of the same runtime, without a cap: nothing is added.
    resp = await client.post(path, json={"model": "free", **body})
    assert resp.status == 200
    seen = fake.posts()[-1][1]
    assert {k: seen.get(k) for k in sent} == {k: body.get(k) for k in sent}


async def test_the_cap_reaches_a_translated_messages_request(start_runtime, aiohttp_client):
    fake, server = await start_runtime(models=(RUNTIME_ID,),
                                       missing=("/v1/messages", "/v1/messages/count_tokens"))
    cfg = make_config(runtime_backend("rt", server, models={"m": RUNTIME_ID},
                                      capabilities={"messages": False}),
                      routes={"m": RouteConfig(max_output_tokens=CAP)})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post("/v1/messages", json={"model": "m", "max_tokens": 32000,
                                                   "messages": HELLO})
    assert resp.status == 200
    assert fake.posts()[-1] == ("/v1/chat/completions", {
        "model": RUNTIME_ID, "messages": HELLO, "max_tokens": CAP})
    resp = await client.post("/v1/messages/count_tokens", json={"model": "m",
                                                                "messages": HELLO})
    assert resp.status == 200
    path, sent = fake.posts()[-1]
    assert path == "/tokenize" and "max_tokens" not in sent


async def test_echo_stops_at_the_cap(aiohttp_client):
    cfg = make_config(backend("e", "echo", models=["echo-1"]),
                      routes={"echo-1": RouteConfig(max_output_tokens=2)})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post("/v1/chat/completions", json={
        "model": "echo-1", "messages": [{"role": "user", "content": "one two three four"}]})
    done = await resp.json()
    assert done["choices"][0]["message"]["content"] == "one two"
    assert done["choices"][0]["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 2
