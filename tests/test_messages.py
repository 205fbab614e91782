"""Anthropic Messages through the gateway, with the official anthropic SDK as the client.

Two fake runtimes answer the same scripted model output: one serves chat completions only
(the translated path), one serves /v1/messages itself (the native path).
"""

from __future__ import annotations

import asyncio
import json
import logging

import anthropic
import pytest

from gateway.app import create_app
from gateway.config import (ApiKey, Fallback, RetryConfig, RouteConfig, ServerConfig,
                            backend)
from gateway.translate.anthropic import SIGNATURE
from gateway.typedefs import GATEWAY
from tests.conftest import bearer, make_config, samples, value
from bench.fake_runtime.formats_messages import INPUT_TOKENS, Answer
from bench.fake_runtime.formats_messages import ToolCall as Call

RUNTIME_ID = "org/Model-8B"
HELLO = [{"role": "user", "content": "Hello there"}]
WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}
CALL = Call("call_1", "get_weather", '{"city": "Paris"}')
KEY = ApiKey(name="team", key="sk-team-0123456789", models=("*",), tpm=60)


NATIVE = ("/v1/messages", "/v1/messages/count_tokens")   # what a runtime without them lacks


@pytest.fixture
async def fakes(start_runtime):
    """Start fake runtimes that say `Answer()` unless told otherwise:
    `await fakes(native=..., kind=..., ...)` -> (fake, base url)."""
    async def start(native: bool = False, **kw):
        kw.setdefault("answer", Answer())
        fake, server = await start_runtime(missing=() if native else NATIVE, **kw)
        return fake, server.url("/v1")
    return start


@pytest.fixture
async def gateway(aiohttp_client):
    """A gateway for these backends: (raw test client, anthropic SDK client)."""
    sdks: list[anthropic.AsyncAnthropic] = []

    async def start(*backends, api_key="unused", **sections):
        client = await aiohttp_client(create_app(make_config(*backends, **sections)))
        sdk = anthropic.AsyncAnthropic(base_url=str(client.server.make_url("")),
                                       api_key=api_key, max_retries=0)
        sdks.append(sdk)
        return client, sdk
    yield start
    for sdk in sdks:
        await sdk.close()


async def one(fakes, gateway, kind="sglang", native=False, capabilities=None, **kw):
    """One backend of `kind` serving model "m"; sglang serves chat only (translated)."""
    fake, url = await fakes(kind=kind, native=native, **kw)
    client, sdk = await gateway(backend("rt", kind, url, models={"m": RUNTIME_ID},
                                        capabilities=capabilities))
    return fake, client, sdk


def sse_names(raw: bytes) -> list[str]:
    return [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]


# -- the translated path ------------------------------------------------------------------

async def test_text_whole_and_streamed_through_the_translation(fakes, gateway):
    fake, client, sdk = await one(fakes, gateway)
    raw = await sdk.messages.with_raw_response.create(model="m", max_tokens=64,
                                                      messages=HELLO, system="Be brief.")
    assert raw.headers["x-gateway-backend"] == "rt"
    done = await raw.parse()
    assert done.model == "m" and done.stop_reason == "end_turn"
    assert [b.text for b in done.content] == ["Hello from the runtime"]
    assert (done.usage.input_tokens, done.usage.output_tokens) == (INPUT_TOKENS, 4)
    path, sent = fake.posts()[0]
    assert path == "/v1/chat/completions" and sent["model"] == RUNTIME_ID
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hello there"}]
    async with sdk.messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces == ["Hello", " from", " the", " runtime"]
    assert final.model == "m" and final.usage.output_tokens == 4
    assert fake.requests[1]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_reaches_the_client_and_its_result_the_runtime(fakes, gateway,
                                                                          stream):
    fake, client, sdk = await one(fakes, gateway, answer=Answer(text="", calls=[CALL],
                                                                finish_reason="tool_calls"))
    ask = dict(model="m", max_tokens=64, tools=[WEATHER_TOOL],
               tool_choice={"type": "auto"}, messages=[
                   {"role": "user", "content": "Weather in Paris?"}])
    if stream:
        async with sdk.messages.stream(**ask) as events:
            kinds = [event.type async for event in events]
            done = await events.get_final_message()
        assert "input_json" in kinds
    else:
        done = await sdk.messages.create(**ask)
    assert done.stop_reason == "tool_use"
    [use] = done.content
    assert (use.type, use.id, use.name, use.input) == ("tool_use", "call_1", "get_weather",
                                                        {"city": "Paris"})
    sent = fake.requests[0]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER_TOOL["input_schema"],
        "description": "The weather in a city"}}]
    assert sent["tool_choice"] == "auto"

    # The other way: the client sends the call and its result back in the history.
    fake.answer = Answer(text="It is sunny")
    history = [*ask["messages"], {"role": "assistant", "content": done.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                             "content": "sunny, 21 C"}]}]
    ask["messages"] = history
    if stream:
        async with sdk.messages.stream(**ask) as events:
            after = await events.get_final_message()
    else:
        after = await sdk.messages.create(**ask)
    assert after.content[0].text == "It is sunny"
    back = fake.requests[1]["messages"]
    assert back[1]["role"] == "assistant" and back[1]["content"] == ""
    assert back[1]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert back[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}


@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_becomes_a_signed_thinking_block(fakes, gateway, stream):
    fake, client, sdk = await one(fakes, gateway, answer=Answer(
        text="Yes.", reasoning="The user greets me, so I greet back."))
    ask = dict(model="m", max_tokens=64, messages=HELLO)
    if stream:
        async with sdk.messages.stream(**ask) as events:
            thoughts = [e.thinking async for e in events if e.type == "thinking"]
            done = await events.get_final_message()
        assert "".join(thoughts) == "The user greets me, so I greet back."
    else:
        done = await sdk.messages.create(**ask)
    thinking, text = done.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE
    assert thinking.thinking == "The user greets me, so I greet back."
    assert text.text == "Yes."
    # Sent back in the history, the thinking goes to the runtime as reasoning_content.
    await sdk.messages.create(model="m", max_tokens=8, messages=[
        *HELLO, {"role": "assistant", "content": done.content},
        {"role": "user", "content": "And?"}])
    assert fake.requests[1]["messages"][1]["reasoning_content"] == thinking.thinking


# -- the native path ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
async def test_a_runtime_serving_messages_gets_the_body_as_is(fakes, gateway, kind):
    answer = Answer(text="Native hello", reasoning="hmm", calls=[CALL])
    # llama-server calls tools only when started with --jinja: its backends say so.
    fake, client, sdk = await one(fakes, gateway, kind=kind, native=True, answer=answer,
                                  capabilities={"tools": True})
    ask = dict(model="m", max_tokens=64, messages=HELLO, tools=[WEATHER_TOOL],
               extra_headers={"anthropic-version": "2023-06-01",
                              "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"})
    done = await sdk.messages.create(**ask)
    path, sent = fake.posts()[0]
    assert path == "/v1/messages"
    assert sent == {"model": RUNTIME_ID, "max_tokens": 64, "messages": HELLO,
                    "tools": [WEATHER_TOOL]}
    seen = fake.headers_seen[0]
    assert seen["anthropic-version"] == "2023-06-01"
    assert seen["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"
    assert "x-api-key" not in seen
    assert done.model == "m" and done.id == "msg_native1"
    assert [b.type for b in done.content] == ["thinking", "text", "tool_use"]
    async with sdk.messages.stream(**ask) as events:
        final = await events.get_final_message()
    assert final.model == "m" and final.content[2].input == {"city": "Paris"}
    assert final.usage.output_tokens == answer.output_tokens
    metrics = await samples(client)
    assert value(metrics, "gateway_tokens_total", model="m", backend="rt",
                 type="prompt") == 2 * INPUT_TOKENS
    assert value(metrics, "gateway_tokens_total", model="m", backend="rt",
                 type="completion") == 2 * answer.output_tokens


# Claude Code's mid-conversation-system beta: a system message after the first user turn.
MID_SYSTEM = [{"role": "user", "content": "Hello there"},
              {"role": "assistant", "content": "Hi"},
              {"role": "system", "content": "The user's time zone is UTC."},
              {"role": "user", "content": "What time is it?"}]


@pytest.mark.parametrize("stream", [False, True])
async def test_system_messages_anywhere_reach_a_native_runtime_as_they_are(fakes, gateway,
                                                                           stream):
    fake, client, _ = await one(fakes, gateway, kind="llamacpp", native=True)
    headers = {"anthropic-beta": "mid-conversation-system-2026-04-07"}
    body = {"model": "m", "max_tokens": 16, "messages": MID_SYSTEM, "stream": stream}
    resp = await client.post("/v1/messages", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    path, sent = fake.posts()[-1]
    assert path == "/v1/messages" and sent == {**body, "model": RUNTIME_ID}
    assert fake.headers_seen[-1]["anthropic-beta"] == "mid-conversation-system-2026-04-07"
    # Never stricter than the runtime: what only the translation needs is its to judge.
    odd = {"model": "m", "messages": [{"role": "developer", "content": 5}], "x": 1}
    resp = await client.post("/v1/messages", json=odd)
    assert resp.status == 200 and fake.posts()[-1][1] == {**odd, "model": RUNTIME_ID}
    resp = await client.post("/v1/messages/count_tokens", json=odd)
    assert resp.status == 200 and fake.posts()[-1][0] == "/v1/messages/count_tokens"
    # What routing needs is still the gateway's to check.
    resp = await client.post("/v1/messages", json={**odd, "model": 7})
    assert resp.status == 400 and (await resp.json())["error"]["message"].startswith("model:")


@pytest.mark.parametrize("stream", [False, True])
async def test_system_messages_anywhere_are_translated_for_chat_templates(fakes, gateway,
                                                                          stream):
    fake, client, _ = await one(fakes, gateway)
    resp = await client.post("/v1/messages", json={
        "model": "m", "max_tokens": 16, "system": "Be brief.", "stream": stream,
        "messages": [{"role": "system", "content": "Use UTC."}, *MID_SYSTEM]})
    assert resp.status == 200, await resp.text()
    await resp.read()
    path, sent = fake.posts()[-1]
    assert path == "/v1/chat/completions"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief.\nUse UTC."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "<system-reminder>\nThe user's time zone is UTC.\n"
                                    "</system-reminder>\nWhat time is it?"}]
    # The translation still checks the whole request: it must understand what it rewrites.
    resp = await client.post("/v1/messages", json={
        "model": "m", "max_tokens": 16, "messages": [{"role": "developer", "content": "x"}]})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith("messages.0.role:")


async def test_count_tokens_counts_system_messages_anywhere(gateway):
    client, sdk = await gateway(backend("echo", "echo", models=["echo-1"]))
    plain = [m for m in MID_SYSTEM if m["role"] != "system"]
    resp = await client.post("/v1/messages/count_tokens",
                             json={"model": "echo-1", "messages": MID_SYSTEM})
    assert resp.status == 200, await resp.text()
    without = await sdk.messages.count_tokens(model="echo-1", messages=plain)
    # echo counts words: the system message's six, each tag a word of its own.
    assert (await resp.json())["input_tokens"] == without.input_tokens + 6 + 2
    done = await sdk.messages.create(model="echo-1", max_tokens=16, messages=MID_SYSTEM)
    assert done.usage.input_tokens == without.input_tokens + 6 + 2


async def test_the_native_stream_is_relayed_event_by_event(fakes, gateway):
    fake, client, _ = await one(fakes, gateway, kind="vllm", native=True)
    resp = await client.post("/v1/messages", json={
        "model": "m", "max_tokens": 64, "messages": HELLO, "stream": True})
    raw = await resp.read()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert sse_names(raw) == ["message_start"] + ["content_block_start"] + [
        "content_block_delta"] * 4 + ["content_block_stop", "message_delta", "message_stop"]
    assert RUNTIME_ID.encode() not in raw and b'"model":"m"' in raw


async def test_each_try_takes_the_way_its_backend_needs(fakes, gateway):
    native, native_url = await fakes(kind="vllm", native=True, status=503)
    chat, chat_url = await fakes(kind="sglang")
    client, sdk = await gateway(
        backend("a-native", "vllm", native_url, models={"m": RUNTIME_ID}, weight=1000),
        backend("b-chat", "sglang", chat_url, models={"m": RUNTIME_ID}, weight=1))
    raw = await sdk.messages.with_raw_response.create(model="m", max_tokens=8,
                                                      messages=HELLO)
    assert raw.headers["x-gateway-backend"] == "b-chat"
    assert (await raw.parse()).content[0].text == "Hello from the runtime"
    assert native.paths() == ["/v1/messages"] and chat.paths() == ["/v1/chat/completions"]
    # Streamed, and the other way round: the chat-only backend fails, the native one answers.
    native.status, chat.status = 200, 503
    _, sdk = await gateway(
        backend("a-native", "vllm", native_url, models={"m": RUNTIME_ID}, weight=1),
        backend("b-chat", "sglang", chat_url, models={"m": RUNTIME_ID}, weight=1000))
    async with sdk.messages.stream(model="m", max_tokens=8, messages=HELLO) as events:
        assert (await events.get_final_message()).content[0].text == "Hello from the runtime"
    assert chat.paths() == ["/v1/chat/completions"] * 2
    assert native.paths() == ["/v1/messages"] * 2 and native.requests[1]["stream"] is True


async def test_a_native_stream_opening_with_an_error_event_is_retried(fakes, gateway):
    native, native_url = await fakes(kind="vllm", native=True, first_event_error=True)
    chat, chat_url = await fakes(kind="sglang")
    client, sdk = await gateway(
        backend("a-native", "vllm", native_url, models={"m": RUNTIME_ID}, weight=1000),
        backend("b-chat", "sglang", chat_url, models={"m": RUNTIME_ID}, weight=1))
    async with sdk.messages.stream(model="m", max_tokens=8, messages=HELLO) as events:
        done = await events.get_final_message()
    assert done.content[0].text == "Hello from the runtime"
    assert native.paths() == ["/v1/messages"] and chat.paths() == ["/v1/chat/completions"]
    metrics = await samples(client)
    assert value(metrics, "gateway_retries_total", backend="a-native",
                 reason="stream_error") == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_pool_falls_back_to_another_model(fakes, gateway, stream):
    down, down_url = await fakes(kind="sglang", status=503)
    spare, spare_url = await fakes(kind="vllm", native=True)
    client, sdk = await gateway(
        backend("rt", "sglang", down_url, models={"m": RUNTIME_ID}),
        backend("spare", "vllm", spare_url, models={"small": "org/Small-1B"}),
        routes={"m": RouteConfig(fallbacks=(Fallback(model="small"),))},
        retries=RetryConfig(attempts=0))
    ask = dict(model="m", max_tokens=8, messages=HELLO)
    if stream:
        async with sdk.messages.stream(**ask) as events:
            done = await events.get_final_message()
    else:
        done = await sdk.messages.create(**ask)
    assert done.content[0].text == "Hello from the runtime" and done.model == "small"
    assert down.paths() == ["/v1/chat/completions"]
    assert spare.paths()[0] == "/v1/messages"
    assert spare.requests[0]["model"] == "org/Small-1B"
    assert value(await samples(client), "gateway_fallbacks_total", model="m",
                 to="small") == 1


# -- count_tokens ---------------------------------------------------------------------------

async def test_count_tokens_is_passed_to_runtimes_that_serve_it(fakes, gateway):
    fake, client, sdk = await one(fakes, gateway, kind="vllm", native=True)
    count = await sdk.messages.count_tokens(model="m", messages=HELLO, system="Be brief.")
    assert count.input_tokens == INPUT_TOKENS + 1
    assert fake.posts() == [("/v1/messages/count_tokens", {
        "model": RUNTIME_ID, "messages": HELLO, "system": "Be brief."})]


@pytest.mark.parametrize(("kind", "tokenizer", "expected"),
                         [("vllm", "vllm", 4), ("llamacpp", "llamacpp", 4)])
async def test_count_tokens_from_the_runtimes_tokenizer(fakes, gateway, kind, tokenizer,
                                                        expected):
    fake, url = await fakes(kind=kind, tokenizer=tokenizer)
    client, sdk = await gateway(backend("rt", kind, url, models={"m": RUNTIME_ID},
                                        capabilities={"messages": False}))
    count = await sdk.messages.count_tokens(model="m", system="Be brief.", messages=HELLO)
    assert count.input_tokens == expected
    path, sent = fake.posts()[0]
    assert path == "/tokenize"
    if tokenizer == "vllm":
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["model"] == RUNTIME_ID and sent["add_generation_prompt"] is True
    else:
        assert sent["content"] == "Be brief.\nHello there"


async def test_count_tokens_without_any_way_to_count_is_a_clear_error(fakes, gateway):
    _, client, sdk = await one(fakes, gateway, kind="ollama", native=True)
    with pytest.raises(anthropic.APIStatusError) as info:
        await sdk.messages.count_tokens(model="m", messages=HELLO)
    assert info.value.status_code == 501
    assert info.value.body["error"]["type"] == "api_error"
    assert "count_tokens" in info.value.body["error"]["message"]


async def test_echo_answers_messages_and_count_tokens(gateway):
    _, sdk = await gateway(backend("echo", "echo", models=["echo-1"]))
    done = await sdk.messages.create(model="echo-1", max_tokens=16, messages=[
        {"role": "user", "content": "one two three"}])
    assert done.content[0].text == "one two three" and done.usage.output_tokens == 3
    async with sdk.messages.stream(model="echo-1", max_tokens=2, messages=[
            {"role": "user", "content": "one two three"}]) as events:
        pieces = [t async for t in events.text_stream]
        final = await events.get_final_message()
    assert pieces == ["one", " two"] and final.stop_reason == "max_tokens"
    count = await sdk.messages.count_tokens(model="echo-1", messages=[
        {"role": "user", "content": "one two three"}])
    assert count.input_tokens == 3


# -- keys, limits and errors ------------------------------------------------------------

async def test_the_key_comes_as_x_api_key_or_bearer(fakes, gateway):
    fake, url = await fakes()
    cfg = (backend("rt", "sglang", url, models={"m": RUNTIME_ID}),)
    client, sdk = await gateway(*cfg, api_key=KEY.key, auth_keys=(KEY,))
    raw = await sdk.messages.with_raw_response.create(model="m", max_tokens=8,
                                                      messages=HELLO)
    assert (await raw.parse()).content[0].text == "Hello from the runtime"
    # tpm is charged from the answer's usage: 11 prompt + 4 completion tokens.
    after = await sdk.messages.with_raw_response.create(model="m", max_tokens=8,
                                                        messages=HELLO)
    assert int(after.headers["x-ratelimit-remaining-tokens"]) <= KEY.tpm - 15 + 1   # refill: 1/s
    bearer = anthropic.AsyncAnthropic(base_url=str(client.server.make_url("")),
                                      auth_token=KEY.key, max_retries=0)
    try:
        assert (await bearer.messages.create(model="m", max_tokens=8, messages=HELLO)).content
    finally:
        await bearer.close()
    assert all("x-api-key" not in h and "sk-team" not in json.dumps(dict(h))
               for h in fake.headers_seen)
    _, wrong = await gateway(*cfg, api_key="sk-wrong", auth_keys=(KEY,))
    with pytest.raises(anthropic.AuthenticationError) as info:
        await wrong.messages.create(model="m", max_tokens=8, messages=HELLO)
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error",
        "message": "Missing or invalid API key. Send it as 'x-api-key: <key>' or "
                   "'Authorization: Bearer <key>'."}}


async def test_the_gateways_own_errors_are_anthropic_shaped(fakes, gateway):
    _, url = await fakes()
    narrow = ApiKey(name="narrow", key="sk-narrow-0123456789", models=("other",), rpm=1)
    client, _ = await gateway(backend("rt", "sglang", url, models={"m": RUNTIME_ID}),
                              auth_keys=(narrow,))
    headers = {"x-api-key": narrow.key}
    body = {"model": "m", "max_tokens": 8, "messages": HELLO}

    async def error(resp):
        return resp.status, (await resp.json())["error"]["type"]

    assert await error(await client.post("/v1/messages", json=body, headers=headers)) == (
        403, "permission_error")
    resp = await client.post("/v1/messages", json=body, headers=headers)
    assert await error(resp) == (429, "rate_limit_error") and "Retry-After" in resp.headers
    assert await error(await client.get("/v1/messages", headers=headers)) == (
        405, "invalid_request_error")
    assert await error(await client.post("/v1/messages", json=body)) == (
        401, "authentication_error")


async def test_too_large_unknown_model_and_no_backend(fakes, gateway):
    fake, url = await fakes(kind="sglang", status=503)
    client, _ = await gateway(backend("rt", "sglang", url, models={"m": RUNTIME_ID}),
                              retries=RetryConfig(attempts=0),
                              server=ServerConfig(max_body_mb=0.001))
    big = {"model": "m", "max_tokens": 8, "messages": [
        {"role": "user", "content": "x" * 2000}]}
    resp = await client.post("/v1/messages", json=big)
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "request_too_large"
    resp = await client.post("/v1/messages", json={**big, "model": "nope", "messages": HELLO})
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found_error"
    resp = await client.post("/v1/messages", json={**big, "messages": HELLO})
    assert resp.status == 502 and (await resp.json())["error"]["type"] == "api_error"


@pytest.mark.parametrize("native", [False, True])
async def test_a_runtimes_own_4xx_is_passed_through_in_anthropic_shape(fakes, gateway, native):
    fake, client, sdk = await one(fakes, gateway, kind="vllm" if native else "sglang",
                                  native=native, status=400)
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(model="m", max_tokens=8, messages=HELLO)
    assert info.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "fake failure 400"}}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": HELLO}, "max_tokens"),
    ({"model": "m", "max_tokens": 8, "messages": [{"role": "robot", "content": "x"}]},
     "messages.0.role"),
    ({"model": "m", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
    ({"max_tokens": 8, "messages": HELLO}, "model"),
    ({"model": "m", "max_tokens": 8, "messages": HELLO, "stream": "yes"}, "stream"),
])
async def test_a_malformed_body_is_a_400_naming_the_field(fakes, gateway, caplog, body, param):
    caplog.set_level(logging.DEBUG)
    fake, client, _ = await one(fakes, gateway)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        if path.endswith("count_tokens") and param == "max_tokens":
            continue
        resp = await client.post(path, json=body)
        assert resp.status == 400
        error = await resp.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"].startswith(param + ":")
    resp = await client.post("/v1/messages", data=b"{not json",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"
    assert fake.requests == []
    assert "Traceback" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_request_the_translation_cannot_express_is_a_400(fakes, gateway):
    fake, client, _ = await one(fakes, gateway)
    resp = await client.post("/v1/messages", json={
        "model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "x"}}]}]})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith("messages.0.content.0.type:")
    assert fake.requests == []


async def test_no_backend_that_can_chat_or_call_tools_is_a_501(fakes, gateway):
    _, url = await fakes()
    client, _ = await gateway(backend("rt", "sglang", url, models={"m": RUNTIME_ID},
                                      capabilities={"chat": False}),
                              backend("rt2", "sglang", url, models={"m2": RUNTIME_ID},
                                      capabilities={"tools": False}))
    resp = await client.post("/v1/messages", json={"model": "m", "max_tokens": 8,
                                                   "messages": HELLO})
    assert resp.status == 501 and (await resp.json())["type"] == "error"
    # As on /v1/chat/completions: tools need a backend with the `tools` capability.
    resp = await client.post("/v1/messages", json={"model": "m2", "max_tokens": 8,
                                                   "messages": HELLO, "tools": [WEATHER_TOOL]})
    assert resp.status == 501
    assert "supports tools" in (await resp.json())["error"]["message"]


# -- streams that break --------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "native"), [("sglang", False), ("vllm", True)])
async def test_a_stream_broken_mid_way_ends_with_an_error_event(fakes, gateway, kind, native):
    fake, client, sdk = await one(fakes, gateway, kind=kind, native=native, close_after=3,
                                  answer=Answer(text="one two three four five six"))
    resp = await client.post("/v1/messages", json={
        "model": "m", "max_tokens": 64, "messages": HELLO, "stream": True})
    raw = await resp.read()
    names = sse_names(raw)
    assert resp.status == 200 and names[0] == "message_start"
    assert names[-1] == "error" and "message_stop" not in names
    last = json.loads(raw.decode().strip().split("\n")[-1][6:])
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError):
        async with sdk.messages.stream(model="m", max_tokens=64, messages=HELLO) as events:
            async for _ in events:
                pass
    metrics = await samples(client)
    assert value(metrics, "gateway_stream_aborts_total", backend="rt",
                 reason="upstream_closed") == 2


async def test_metrics_ttft_and_the_log_line(fakes, gateway, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    _, client, sdk = await one(fakes, gateway)
    async with sdk.messages.stream(model="m", max_tokens=8, messages=HELLO) as events:
        await events.get_final_message()
    metrics = await samples(client)
    assert value(metrics, "gateway_requests_total", model="m", backend="rt",
                 endpoint="messages", status="200") == 1
    assert value(metrics, "gateway_time_to_first_token_seconds_count", model="m",
                 backend="rt") == 1
    assert value(metrics, "gateway_tokens_total", model="m", backend="rt",
                 type="completion") == 4
    [line] = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "gateway.access" and '"endpoint":"messages"' in r.getMessage()]
    assert line["endpoint"] == "messages" and line["stream"] is True
    assert line["prompt_tokens"] == INPUT_TOKENS and line["completion_tokens"] == 4
    assert line["ttft_s"] is not None and line["status"] == 200


async def test_a_request_refused_by_validation_is_logged_with_what_it_named(fakes, gateway,
                                                                           caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    _, url = await fakes()
    client, _ = await gateway(backend("rt", "sglang", url, models={"m": RUNTIME_ID}),
                              auth_keys=(KEY,))
    bad = {"model": "m", "stream": True, "max_tokens": 8,
           "messages": [{"role": "robot", "content": "x"}]}
    for path, body in [("/v1/messages", bad), ("/v1/chat/completions",
                                               {**bad, "stream_options": 5})]:
        resp = await client.post(path, headers={"x-api-key": KEY.key, **bearer(KEY)},
                                 json=body)
        assert resp.status == 400
    resp = await client.post("/v1/messages", headers={"x-api-key": KEY.key}, json={
        "model": "not-configured", "stream": "yes", "messages": HELLO})
    assert resp.status == 400
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["endpoint"], line["model"], line["stream"], line["key"], line["status"])
            for line in lines] == [("messages", "m", True, "team", 400),
                                   ("chat", "m", True, "team", 400),
                                   # metric labels take configured names only
                                   ("messages", "", False, "team", 400)]
    metrics = await samples(client)
    assert value(metrics, "gateway_requests_total", model="m", backend="",
                 endpoint="messages", status="400") == 1


async def test_a_stream_cut_by_the_drain_deadline_ends_with_an_error_event(gateway):
    client, _ = await gateway(backend("echo", "echo", models=["echo-1"]))
    resp = await client.post("/v1/messages", json={
        "model": "echo-1", "max_tokens": 500, "stream": True,
        "messages": [{"role": "user", "content": " ".join(["w"] * 200)}]})   # 4 s of words
    assert resp.status == 200
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"event: message_start")
    await client.app[GATEWAY].drain.run(0.1)
    rest = await asyncio.wait_for(resp.read(), 5)
    names = sse_names(first + rest)
    assert names[-1] == "error" and "message_stop" not in names
    assert b'"type":"overloaded_error"' in rest
