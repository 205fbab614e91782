"""The official openai SDK against the APIs beyond chat: Responses (streamed, stored,
follow-ups across runtimes and replicas) and audio transcription with a real upload."""

from __future__ import annotations

import openai
import pytest

from gateway.app import create_app
from gateway.config import backend
from gateway.relay.response_ids import public_id, runtime_ref
from tests.conftest import RUNTIME_ID, make_config, runtime_backend, samples, value
from tests.test_apis import fake_vllm


@pytest.fixture
async def pair(serve_fake, aiohttp_server):
    """Two fake vLLMs serving `llama` (only gpu-b serves DELETE), a gateway in front,
    and an SDK client on it."""
    fakes = {"gpu-a": fake_vllm(), "gpu-b": fake_vllm(deletes=True)}
    servers = {name: await serve_fake(f) for name, f in fakes.items()}
    cfg = make_config(*(runtime_backend(name, servers[name], models={"llama": RUNTIME_ID})
                        for name in fakes),
                      backend("echo", "echo", models=["echo-1"]))
    gateway = await aiohttp_server(create_app(cfg))
    client = sdk(gateway)
    yield fakes, cfg, gateway, client
    await client.close()


def sdk(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused",
                              max_retries=0)


async def test_a_response_names_its_backend_and_the_public_model(pair):
    fakes, _, gateway, client = pair
    raw = await client.responses.with_raw_response.create(model="llama", input="hello")
    done = raw.parse()
    backend_name = raw.headers["x-gateway-backend"]
    assert done.model == "llama" and done.output_text == "w0 w1 w2 w3"
    assert runtime_ref(done.id) == (backend_name, fakes[backend_name].created[-1])
    assert fakes[backend_name].requests[-1]["model"] == RUNTIME_ID
    assert done.usage.input_tokens == 7


async def test_usage_and_metrics_come_from_the_responses_fields(pair, aiohttp_client):
    _, _, gateway, client = pair
    await client.responses.create(model="llama", input="hello")
    stream = await client.responses.create(model="llama", input="hi", stream=True)
    async for _ in stream:
        pass
    http = await aiohttp_client(gateway)
    got = await samples(http)
    total = sum(value(got, "gateway_tokens_total", model="llama", backend=b, type="completion")
                for b in ("gpu-a", "gpu-b"))
    assert total == 8
    requests = sum(value(got, "gateway_requests_total", model="llama", backend=b,
                         endpoint="responses", status="200") for b in ("gpu-a", "gpu-b"))
    assert requests == 2
    ttft = sum(value(got, "gateway_time_to_first_token_seconds_count", model="llama",
                     backend=b) for b in ("gpu-a", "gpu-b"))
    assert ttft == 1


async def test_streamed_response_events_in_order_with_public_names(pair):
    fakes, _, _, client = pair
    stream = await client.responses.create(model="llama", input="hello", stream=True)
    kinds, deltas, ids, models = [], [], set(), set()
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        response = getattr(event, "response", None)
        if response is not None:
            ids.add(response.id)
            models.add(response.model)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert deltas == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert models == {"llama"}
    (public,) = ids
    name, runtime_id = runtime_ref(public)
    assert runtime_id == fakes[name].created[-1]


async def test_follow_ups_reach_the_backend_that_stored_them_from_any_replica(
        pair, aiohttp_server):
    fakes, cfg, _, client = pair
    first = [await client.responses.create(model="llama", input=f"q{i}") for i in range(4)]
    assert {runtime_ref(r.id)[0] for r in first} == {"gpu-a", "gpu-b"}
    # Another replica (or this one after a restart): a new app with no memory of the first.
    other = sdk(await aiohttp_server(create_app(cfg)))
    try:
        for i, previous in enumerate(first):
            via = client if i % 2 else other
            follow = await via.responses.create(model="llama", input="more",
                                                previous_response_id=previous.id,
                                                stream=i >= 2)
            if i >= 2:
                async for event in follow:
                    if event.type == "response.completed":
                        assert event.response.previous_response_id == previous.id
            else:
                assert follow.previous_response_id == previous.id
    finally:
        await other.close()
    for name, fake in fakes.items():
        own = {runtime_ref(r.id)[1] for r in first if runtime_ref(r.id)[0] == name}
        assert len(fake.followups) == len(own) and set(fake.followups) == own


async def test_retrieve_and_delete_stored_responses(pair):
    fakes, _, _, client = pair
    made = {}
    while len(made) < 2:
        r = await client.responses.create(model="llama", input="x")
        made.setdefault(runtime_ref(r.id)[0], r)
    for name, r in made.items():
        got = await client.responses.retrieve(r.id)
        assert got.id == r.id and got.model == "llama" and got.output_text == "w0 w1 w2 w3"
        assert fakes[name].stored_calls[-1][0] == "GET"
    cancelled = await client.responses.cancel(made["gpu-a"].id)
    assert cancelled.id == made["gpu-a"].id
    assert fakes["gpu-a"].stored_calls[-1][0] == "POST"
    with pytest.raises(openai.NotFoundError):             # vLLM lists no input items: its 404
        await client.responses.input_items.list(made["gpu-a"].id, limit=2)
    await client.responses.delete(made["gpu-b"].id)      # gpu-b serves DELETE
    assert fakes["gpu-b"].stored_calls[-1][0] == "DELETE"
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made["gpu-b"].id)
    with pytest.raises(openai.APIStatusError) as info:    # vLLM serves no DELETE: its answer
        await client.responses.delete(made["gpu-a"].id)
    assert info.value.status_code == 405
    assert not any(m == "DELETE" for m, _ in fakes["gpu-a"].stored_calls)


@pytest.mark.parametrize("rid", [
    "resp_made-up", public_id("gpu-z", "resp_1"), public_id("gpu-a", "resp_1")[:-2] + "xy",
    "chatcmpl-123"])
async def test_an_id_of_no_configured_backend_is_a_clean_404(pair, rid):
    fakes, _, _, client = pair
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.retrieve(rid)
    assert info.value.body["code"] in ("response_not_found", "not_found")
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.create(model="llama", input="x", previous_response_id=rid)
    assert info.value.body["param"] == "previous_response_id"
    assert not any(f.followups or f.stored_calls for f in fakes.values())


async def test_the_echo_runtime_answers_responses_streamed_and_not(pair):
    _, _, _, client = pair
    done = await client.responses.create(model="echo-1", input="one two three")
    assert done.output_text == "one two three" and done.usage.output_tokens == 3
    stream = await client.responses.create(model="echo-1", input="one two", stream=True,
                                           previous_response_id=done.id)
    kinds = [event.type async for event in stream]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta",
                     "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert (await client.responses.retrieve(done.id)).output_text == "one two three"


async def test_audio_transcription_with_a_real_upload(pair):
    fakes, _, _, client = pair
    audio = bytes(range(256)) * 400
    raw = await client.audio.transcriptions.with_raw_response.create(
        model="llama", file=("clip.wav", audio, "audio/wav"), language="en")
    assert raw.parse().text == "w0 w1 w2 w3"
    upload = fakes[raw.headers["x-gateway-backend"]].uploads()[-1]
    assert upload["model"] == RUNTIME_ID and upload["data"] == audio
    assert upload["filename"] == "clip.wav" and upload["fields"]["language"] == "en"


async def test_streamed_transcription_in_the_runtimes_own_events(pair):
    _, _, _, client = pair
    stream = await client.audio.transcriptions.create(
        model="llama", file=("clip.wav", b"RIFF" + b"\0" * 100), stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == " w0 w1 w2 w3"
