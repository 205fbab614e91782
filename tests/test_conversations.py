"""Stored conversations for runtimes whose Responses API keeps no state (llama-server,
Ollama): the gateway stores each response, expands `previous_response_id` itself, and
answers GET / DELETE / input_items, within `responses.ttl_s` and `responses.max_stored`;
in memory, in `state.sqlite` (surviving a restart) or in `state.redis`."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.app import create_app
from gateway.config import ResponsesConfig, StateConfig
from gateway.conversations import Conversations
from gateway.conversations.sqlite import SqliteStore
from gateway.conversations.store import MemoryStore
from gateway.relay.events import RESPONSES, EventRewriter, rewrite_stored
from gateway.relay.response_ids import IdRewriter, public_id
from gateway.typedefs import CONVERSATIONS
from tests.conftest import RUNTIME_ID, eventually, make_config, runtime_backend
from tests.server_procs import start as start_gateway
from tests.test_shared_limits import redis_server  # noqa: F401  (a fixture)

ANSWER = "w0 w1 w2 w3"   # what the fake runtime says with words=4


@pytest.fixture
async def stateless(start_runtime):
    """A fake llama-server: Responses answered, nothing stored, thin stream events."""
    async def start(**kw):
        return await start_runtime(kind="llamacpp", words=4, stateless_responses=True, **kw)
    return start


async def gateway_for(aiohttp_client, *servers, kinds=("llamacpp",), caps=None, **sections):
    backends = [runtime_backend(f"b{i}", server, kind=kinds[min(i, len(kinds) - 1)],
                                models={"m": RUNTIME_ID}, capabilities=caps,
                                weight=1000 if i == 0 else 1)
                for i, server in enumerate(servers)]
    return await aiohttp_client(create_app(make_config(*backends, **sections)))


def user(text):
    return {"type": "message", "role": "user", "content": text}


def said(text):
    return {"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": text}]}


async def create(client, **body):
    resp = await client.post("/v1/responses", json={"model": "m", **body})
    if body.get("stream"):
        text = await resp.text()
        assert resp.status == 200, text
        return text
    done = await resp.json()
    assert resp.status == 200, done
    return done


@pytest.mark.parametrize("stream", [False, True])
async def test_follow_ups_are_expanded_by_the_gateway(stateless, aiohttp_client, stream):
    fake, server = await stateless()
    client = await gateway_for(aiohttp_client, server)
    first = await create(client, input="hello there")
    follow = await create(client, input="and then?", previous_response_id=first["id"],
                          stream=stream)
    body = fake.posts()[-1][1]
    assert "previous_response_id" not in body
    assert body["input"] == [user("hello there"), said(ANSWER), user("and then?")]
    if stream:   # thin events: the output is put together from output_item.done
        second_id = follow.split('"response.completed"')[1].split('"id":"')[1].split('"')[0]
    else:
        second_id = follow["id"]
        assert second_id.startswith("resp_") and second_id != first["id"]
    third = await create(client, input=[user("last")], previous_response_id=second_id)
    assert fake.posts()[-1][1]["input"] == [user("hello there"), said(ANSWER),
                                            user("and then?"), said(ANSWER), user("last")]
    got = await (await client.get(f"/v1/responses/{second_id}")).json()
    assert got["id"] == second_id and got["previous_response_id"] == first["id"]
    assert got["output"][0]["content"][0]["text"] == ANSWER and got["model"] == "m"
    items = await (await client.get(f"/v1/responses/{third['id']}/input_items",
                                    params={"order": "asc"})).json()
    assert [i["role"] for i in items["data"]] == ["user", "assistant", "user", "assistant",
                                                  "user"]
    assert fake.stored_calls == []   # nothing asked of the runtime, which keeps nothing


def events_of(stream: str) -> list[dict]:
    return [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_answer_says_the_clients_previous_response_id(
        stateless, aiohttp_client, stream):
    """The runtime was sent the whole conversation and no id (its answer says null): the
    client still gets the previous_response_id it sent, as OpenAI's API answers, whole and
    in every streamed event that carries the response; also when it is not stored."""
    fake, server = await stateless()
    client = await gateway_for(aiohttp_client, server)
    first = await create(client, input="hello there")
    for store in (True, False):
        follow = await create(client, input="and then?", previous_response_id=first["id"],
                              stream=stream, store=store)
        assert "previous_response_id" not in fake.posts()[-1][1]
        if not stream:
            assert follow["previous_response_id"] == first["id"]
            continue
        carried = {e["type"]: e["response"] for e in events_of(follow) if "response" in e}
        assert {"response.created", "response.in_progress",
                "response.completed"} <= carried.keys()
        assert all(r["previous_response_id"] == first["id"] for r in carried.values())
    # A first response, not a follow-up: the runtime's null stands.
    fresh = await create(client, input="new", stream=stream)
    if stream:
        assert all(e["response"]["previous_response_id"] is None
                   for e in events_of(fresh) if "response" in e)
    else:
        assert fresh["previous_response_id"] is None


def test_the_id_is_set_where_the_runtime_says_nothing():
    """llama-server's response objects have no previous_response_id at all: the relay
    adds it, in the whole answer and in the events carrying the response (CRLF kept)."""
    ids = IdRewriter("b0")
    ids.previous = "resp_client"
    whole = rewrite_stored(b'{"id":"resp_x","object":"response","output":[]}', ids)
    assert json.loads(whole)["previous_response_id"] == "resp_client"
    assert json.loads(whole)["id"] == public_id("b0", "resp_x")
    assert rewrite_stored(b'{"error":{"message":"no"}}', ids) == b'{"error":{"message":"no"}}'
    relay = EventRewriter((), ids, RESPONSES)
    block = (b'event: response.created\r\ndata: {"type":"response.created","response":'
             b'{"id":"resp_x","status":"in_progress"}}\r\n\r\n'
             b'event: response.output_text.delta\r\ndata: {"type":'
             b'"response.output_text.delta","delta":"\\"response\\""}\r\n\r\n')
    out = relay.feed(block)
    lines = out.split(b"\r\n")
    created = json.loads(lines[1][5:])
    assert created["response"]["previous_response_id"] == "resp_client"
    assert lines[4] == (b'data: {"type":"response.output_text.delta",'
                        b'"delta":"\\"response\\""}')
    assert out.endswith(b"\r\n\r\n")


async def test_retrieve_delete_and_not_found(stateless, aiohttp_client):
    fake, server = await stateless()
    client = await gateway_for(aiohttp_client, server)
    first = await create(client, input="hi")
    resp = await client.delete(f"/v1/responses/{first['id']}")
    assert resp.status == 200
    assert await resp.json() == {"id": first["id"], "object": "response", "deleted": True}
    for resp in (await client.get(f"/v1/responses/{first['id']}"),
                 await client.delete(f"/v1/responses/{first['id']}")):
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert error["param"] == "response_id" and first["id"] in error["message"]
    resp = await client.post("/v1/responses", json={
        "model": "m", "input": "x", "previous_response_id": first["id"]})
    assert resp.status == 404
    assert (await resp.json())["error"]["param"] == "previous_response_id"
    unstored = await create(client, input="hi", store=False)
    assert (await client.get(f"/v1/responses/{unstored['id']}")).status == 404
    assert fake.stored_calls == []


async def test_a_follow_up_may_go_to_any_backend_of_the_pool(stateless, start_runtime,
                                                             aiohttp_client):
    fake, server = await stateless()
    other, other_server = await start_runtime(words=4)   # a vLLM: keeps its own
    client = await gateway_for(aiohttp_client, server, other_server,
                               kinds=("llamacpp", "vllm"))
    first = await create(client, input="hello")
    assert fake.posts() and not other.posts()
    fake.status = 503   # the backend that made it fails: the follow-up goes to the other
    resp = await client.post("/v1/responses", json={"model": "m", "input": "more",
                                                    "previous_response_id": first["id"]})
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "b1"
    assert other.posts()[-1][1]["input"] == [user("hello"), said(ANSWER), user("more")]


async def test_the_capability_is_overridable_per_backend(stateless, start_runtime,
                                                         aiohttp_client):
    fake, server = await stateless()
    # Said to keep its own: the follow-up is the runtime's (which refuses it).
    client = await gateway_for(aiohttp_client, server, caps={"stateful_responses": True})
    first = await create(client, input="hello")
    resp = await client.post("/v1/responses", json={"model": "m", "input": "more",
                                                    "previous_response_id": first["id"]})
    assert resp.status == 400 and fake.posts()[-1][1]["previous_response_id"]
    # A vLLM without its store enabled: the gateway keeps them.
    vllm, vllm_server = await start_runtime(words=4, stateless_responses=True)
    client = await gateway_for(aiohttp_client, vllm_server, kinds=("vllm",),
                               caps={"stateful_responses": False})
    first = await create(client, input="hello")
    follow = await create(client, input="more", previous_response_id=first["id"])
    assert follow["id"] and vllm.posts()[-1][1]["input"][-1] == user("more")


async def test_max_stored_and_ttl(stateless, aiohttp_client):
    _, server = await stateless()
    client = await gateway_for(aiohttp_client, server,
                               responses=ResponsesConfig(max_stored=2, ttl_s=0.5))
    made = [(await create(client, input=f"n{i}"))["id"] for i in range(3)]
    statuses = [(await client.get(f"/v1/responses/{rid}")).status for rid in made]
    assert statuses == [404, 200, 200]

    async def all_gone():
        return all([(await client.get(f"/v1/responses/{rid}")).status == 404
                    for rid in made])
    assert await eventually(all_gone, timeout=3)


async def test_sqlite_keeps_them_across_a_restart(stateless, aiohttp_client, tmp_path):
    fake, server = await stateless()
    state = StateConfig(sqlite=str(tmp_path / "state.sqlite"))
    client = await gateway_for(aiohttp_client, server, state=state)
    first = await create(client, input="remember me")
    await client.close()   # the app's cleanup closes the store
    again = await gateway_for(aiohttp_client, server, state=state)
    got = await (await again.get(f"/v1/responses/{first['id']}")).json()
    assert got["id"] == first["id"]
    await create(again, input="next", previous_response_id=first["id"])
    assert fake.posts()[-1][1]["input"][0] == user("remember me")


async def test_redis_keeps_them_for_every_replica(stateless, aiohttp_client,
                                                  redis_server):  # noqa: F811
    fake, server = await stateless()
    state = StateConfig(redis=redis_server.url)
    one = await gateway_for(aiohttp_client, server, state=state)
    two = await gateway_for(aiohttp_client, server, state=state,
                            responses=ResponsesConfig(max_stored=1))
    first = await create(one, input="shared")
    await create(two, input="next", previous_response_id=first["id"])
    assert fake.posts()[-1][1]["input"][0] == user("shared")
    # two's max_stored of 1: storing its answer pushed the first out.
    assert (await one.get(f"/v1/responses/{first['id']}")).status == 404
    assert (await two.delete(f"/v1/responses/{first['id']}")).status == 404


async def test_a_store_that_fails_is_a_503_not_a_traceback(stateless, aiohttp_client,
                                                           tmp_path, caplog):
    _, server = await stateless()
    blocker = tmp_path / "a-file"
    blocker.write_text("")   # where the store's folder would be: it can be neither made nor opened
    state = StateConfig(sqlite=str(blocker / "state.sqlite"))
    client = await gateway_for(aiohttp_client, server, state=state)
    first = await create(client, input="hi")    # answered; storing it failed (logged)
    resp = await client.get(f"/v1/responses/{first['id']}")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "state_store_unavailable"
    assert "Traceback" not in caplog.text


class SlowStore(MemoryStore):
    """Puts that take a while, as on a busy disk or a far Redis."""

    async def put(self, rid, entry, ttl_s, max_stored):
        await asyncio.sleep(0.3)
        await super().put(rid, entry, ttl_s, max_stored)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_right_after_the_answer_waits_for_its_put(stateless, aiohttp_client,
                                                                  stream):
    _, server = await stateless()
    cfg = make_config(runtime_backend("b", server, kind="llamacpp", models={"m": RUNTIME_ID}))
    app = create_app(cfg)
    app[CONVERSATIONS] = Conversations(cfg, store=SlowStore())
    client = await aiohttp_client(app)
    resp = await client.post("/v1/responses", json={"model": "m", "input": "hi",
                                                    "stream": stream})
    text = await resp.text()
    rid = text.split('"response.completed"')[1] if stream else text
    rid = rid.split('"id":"')[1].split('"')[0]
    follow = await client.post("/v1/responses", json={"model": "m", "input": "more",
                                                      "previous_response_id": rid})
    assert follow.status == 200, await follow.text()


async def test_memory_store_bounds():
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    for i in range(4):
        await store.put(f"r{i}", b"%d" % i, ttl_s=10, max_stored=3)
    assert [await store.get(f"r{i}") for i in range(4)] == [None, b"1", b"2", b"3"]
    now[0] = 10.5
    assert await store.get("r3") is None and not await store.delete("r3")


async def test_sqlite_store_bounds(tmp_path):
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    try:
        for i in range(4):
            await store.put(f"r{i}", b"%d" % i, ttl_s=10, max_stored=3)
        await store.put("r3", b"again", ttl_s=10, max_stored=3)
        assert [await store.get(f"r{i}") for i in range(4)] == [None, b"1", b"2", b"again"]
        await store.put("short", b"x", ttl_s=0.05, max_stored=3)
        await asyncio.sleep(0.1)
        assert await store.get("short") is None
        assert await store.delete("r2") and not await store.delete("r2")
    finally:
        await store.close()


async def fresh(method: str, url: str, **kw) -> tuple[int, dict]:
    """One request on a connection of its own: under --workers the kernel picks the worker."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.request(method, url, **kw) as resp:
            return resp.status, await resp.json()


async def test_every_worker_and_a_restart_share_state_sqlite(stateless, tmp_path):
    """(Without `state`, each worker keeps its own in memory: this fails with a 404.)"""
    fake, server = await stateless()
    text = (f"backends:\n  b: {{kind: llamacpp, url: '{server.url('/v1')}', models: "
            f"{{m: '{RUNTIME_ID}'}}}}\n"
            f"state: {{sqlite: '{tmp_path / 'state.sqlite'}'}}\n")
    # Started on a thread: the fake runtime answers the health checks on this loop.
    served = await asyncio.to_thread(start_gateway, tmp_path, text, workers=2, name="gw0")
    try:
        status, done = await fresh("POST", served.base + "/v1/responses",
                                   json={"model": "m", "input": "turn 0"})
        assert status == 200, done
        ids = [done["id"]]
        for turn in range(1, 7):   # each on a fresh connection: either worker may take it
            status, done = await fresh("POST", served.base + "/v1/responses", json={
                "model": "m", "input": f"turn {turn}", "previous_response_id": ids[-1]})
            assert status == 200, done
            ids.append(done["id"])
        assert len(fake.posts()[-1][1]["input"]) == 13   # 7 user turns, 6 answers
    finally:
        await asyncio.to_thread(served.stop)
    again = await asyncio.to_thread(start_gateway, tmp_path, text, name="gw1")
    try:
        status, got = await fresh("GET", f"{again.base}/v1/responses/{ids[3]}")
        assert status == 200 and got["previous_response_id"] == ids[2]
    finally:
        await asyncio.to_thread(again.stop)
