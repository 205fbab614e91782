"""The official openai SDK as the client, through the gateway, against a fake vLLM and echo."""

from __future__ import annotations

import openai
import pytest
from pytest_aiohttp import AiohttpServer

from gateway.app import create_app
from gateway.config import backend
from tests.conftest import StartRuntime, make_config, runtime_backend


@pytest.fixture
async def sdk(aiohttp_server: AiohttpServer, start_runtime: StartRuntime):
    fake, runtime = await start_runtime(models=("meta-llama/Llama-3.1-8B-Instruct",))
    cfg = make_config(
        runtime_backend("gpu-a", runtime, models={"llama": "meta-llama/Llama-3.1-8B-Instruct"}),
        backend("echo", "echo", models=["echo-1"]))
    server = await aiohttp_server(create_app(cfg))
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused",
                                max_retries=0)
    yield client
    await client.close()


async def test_chat(sdk):
    raw = await sdk.chat.completions.with_raw_response.create(
        model="llama", messages=[{"role": "user", "content": "hello"}])
    assert raw.headers["x-gateway-backend"] == "gpu-a"
    done = raw.parse()
    assert done.model == "llama"
    assert done.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert done.usage.completion_tokens == 5


async def test_streamed_chat_with_usage(sdk):
    stream = await sdk.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "one two three"}],
        stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        assert chunk.model == "echo-1"
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert pieces == ["one", " two", " three"]
    assert usage.completion_tokens == 3


async def test_completions(sdk):
    done = await sdk.completions.create(model="llama", prompt="Once upon")
    assert done.choices[0].text == "w0 w1 w2 w3 w4"
    assert done.model == "llama"


async def test_embeddings(sdk):
    done = await sdk.embeddings.create(model="echo-1", input=["a", "b"])
    assert len(done.data) == 2 and len(done.data[0].embedding) == 64
    again = await sdk.embeddings.create(model="echo-1", input=["a"])
    assert again.data[0].embedding == done.data[0].embedding


async def test_models(sdk):
    page = await sdk.models.list()
    assert sorted(m.id for m in page.data) == ["echo-1", "llama"]


async def test_unknown_model_raises_not_found(sdk):
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="gpt-9",
                                          messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
