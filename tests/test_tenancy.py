"""Sharing the fleet, at the HTTP surface: classes, fair share, FCFS, promotion, the
queue's limits, X-Priority and service_tier, engine_priority, per-key concurrency,
budgets, usage per key (/admin/keys, /gateway/key, metrics).

The runtime is a fake that holds every request until the test lets it go, so the
order in which the gateway's queue lets requests through is what the test reads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import ApiKey, Budget, QueueConfig, StateConfig, backend
from tests.conftest import bearer, eventually, make_config, samples, value
from tests.holding import Holding

MODEL = "llama"
TOKENS = 10   # each answer's usage: 4 prompt + 6 completion


@pytest.fixture
async def holding(aiohttp_server):
    fake = Holding(usage=(4, TOKENS - 4))
    server = await aiohttp_server(fake.app())
    yield fake, server
    fake.release_all()


def keyed(*keys: ApiKey, server, cap: int | None = 1, kind: str = "vllm",
          **sections: Any):
    b = backend("x", kind, f"http://127.0.0.1:{server.port}/v1", models=[MODEL],
                max_concurrency=cap, **sections.pop("backend_kw", {}))
    return make_config(b, auth_keys=tuple(keys), **sections)


def chat(tag: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": tag}], **extra}


A = ApiKey("team-a", "sk-a")
B = ApiKey("team-b", "sk-b")


async def gateway(aiohttp_client, cfg):
    return await aiohttp_client(create_app(cfg))


def _gateway(client):
    from gateway.typedefs import GATEWAY
    return client.app[GATEWAY]


async def send(client, key: ApiKey | None, tag: str, headers: dict | None = None,
               **extra: Any) -> asyncio.Task:
    """Start one request; returns once the gateway holds it (queued or sent)."""
    before = _gateway(client).dispatcher.queue.waiting
    fake_before = len(HOLDERS[id(client)].arrived)
    hdrs = {**(bearer(key) if key else {}), **(headers or {})}
    task = asyncio.create_task(client.post("/v1/chat/completions", json=chat(tag, **extra),
                                           headers=hdrs))
    assert await eventually(lambda: task.done() or
                            _gateway(client).dispatcher.queue.waiting > before or
                            len(HOLDERS[id(client)].arrived) > fake_before, timeout=3)
    return task


HOLDERS: dict[int, Holding] = {}


async def start(aiohttp_client, holding, *keys, **kw):
    fake, server = holding
    client = await gateway(aiohttp_client, keyed(*keys, server=server, **kw))
    HOLDERS[id(client)] = fake
    return fake, client


async def drain(fake: Holding, tasks: list[asyncio.Task], client) -> list[str]:
    """Let the held requests go one at a time; the order they reached the runtime."""
    for _ in range(len(tasks) + 1):
        seen = len(fake.arrived)
        fake.release()
        await eventually(lambda: len(fake.arrived) > seen or all(t.done() for t in tasks),
                         timeout=3)
    for t in tasks:
        await asyncio.wait_for(t, 5)
    return fake.tags()


async def test_classes_go_strictly_in_order(aiohttp_client, holding):
    keys = (ApiKey("chat", "sk-c", priority="interactive"), ApiKey("std", "sk-s"),
            ApiKey("nightly", "sk-n", priority="batch"))
    fake, client = await start(aiohttp_client, holding, *keys)
    first = await send(client, keys[1], "occupies")
    tasks = [first]
    for key, tag in ((keys[2], "b1"), (keys[1], "s1"), (keys[0], "i1"), (keys[2], "b2"),
                     (keys[0], "i2")):
        tasks.append(await send(client, key, tag))
    assert _gateway(client).dispatcher.queue.waiting == 5
    order = await drain(fake, tasks, client)
    assert order == ["occupies", "i1", "i2", "s1", "b1", "b2"]
    assert all(t.result().status == 200 for t in tasks)


async def test_shares_split_the_slots_by_tokens(aiohttp_client, holding):
    heavy, light = ApiKey("three", "sk-3", share=3), ApiKey("one", "sk-1", share=1)
    fake, client = await start(aiohttp_client, holding, heavy, light)
    tasks = [await send(client, heavy, "warm")]
    for i in range(12):
        tasks.append(await send(client, heavy, f"h{i}"))
        tasks.append(await send(client, light, f"l{i}"))
    order = await drain(fake, tasks, client)
    served = order[1:17]
    heavy_n = sum(1 for t in served if t.startswith("h"))
    assert 11 <= heavy_n <= 13, served      # 3:1 of 16 = 12
    fake.release_all()


async def test_first_come_first_served_within_a_key(aiohttp_client, holding):
    fake, client = await start(aiohttp_client, holding, A)
    tasks = [await send(client, A, "occupies")]
    tasks += [await send(client, A, f"r{i}") for i in range(5)]
    assert await drain(fake, tasks, client) == ["occupies", "r0", "r1", "r2", "r3", "r4"]


async def test_a_key_that_starts_waiting_has_no_saved_up_credit(aiohttp_client, holding):
    fake, client = await start(aiohttp_client, holding, A, B, cap=1)
    # team-a is served alone for a while: nothing waits, so that earns it nothing
    # against team-b, nor team-b anything against it.
    for i in range(6):
        task = await send(client, A, f"alone{i}")
        fake.release()
        assert (await task).status == 200
    tasks = [await send(client, A, "occupies")]
    for i in range(3):
        tasks.append(await send(client, A, f"a{i}"))
    for i in range(3):
        tasks.append(await send(client, B, f"b{i}"))
    order = await drain(fake, tasks, client)
    queued = order[7:]
    # team-b is lifted to team-a's count: they alternate, b does not take three in a row.
    assert queued[:2] in (["a0", "b0"], ["b0", "a0"]), queued
    assert queued != ["b0", "b1", "b2", "a0", "a1", "a2"]


async def test_a_waiting_request_moves_up_a_class_per_promote_after_s(aiohttp_client,
                                                                      holding):
    keys = (ApiKey("chat", "sk-c", priority="interactive"),
            ApiKey("nightly", "sk-n", priority="batch"))
    fake, client = await start(aiohttp_client, holding, *keys,
                               queue=QueueConfig(promote_after_s=0.2, max_wait_s=10))
    tasks = [await send(client, keys[0], "occupies"), await send(client, keys[1], "old-batch")]
    await asyncio.sleep(0.45)   # two promotions: batch -> standard -> interactive
    tasks.append(await send(client, keys[0], "fresh-interactive"))
    order = await drain(fake, tasks, client)
    assert order == ["occupies", "old-batch", "fresh-interactive"]


async def test_without_promotion_the_batch_request_waits(aiohttp_client, holding):
    keys = (ApiKey("chat", "sk-c", priority="interactive"),
            ApiKey("nightly", "sk-n", priority="batch"))
    fake, client = await start(aiohttp_client, holding, *keys,
                               queue=QueueConfig(promote_after_s=60, max_wait_s=10))
    tasks = [await send(client, keys[0], "occupies"), await send(client, keys[1], "old-batch")]
    tasks.append(await send(client, keys[0], "fresh-interactive"))
    order = await drain(fake, tasks, client)
    assert order == ["occupies", "fresh-interactive", "old-batch"]


async def test_a_full_pool_answers_503_after_max_wait(aiohttp_client, holding):
    fake, client = await start(aiohttp_client, holding, A,
                               queue=QueueConfig(max_wait_s=0.2))
    first = await send(client, A, "occupies")
    refused = await client.post("/v1/chat/completions", json=chat("late"), headers=bearer(A))
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    fake.release_all()
    assert (await first).status == 200


async def test_a_key_at_its_max_concurrency_waits_then_gets_429(aiohttp_client, holding):
    capped = ApiKey("capped", "sk-cap", max_concurrency=1)
    fake, client = await start(aiohttp_client, holding, capped, A, cap=None,
                               queue=QueueConfig(max_wait_s=0.3))
    first = await send(client, capped, "one")
    # Another key is not held back by it.
    other = await send(client, A, "other")
    assert await eventually(lambda: len(fake.arrived) == 2)
    refused = await client.post("/v1/chat/completions", json=chat("two"),
                                headers=bearer(capped))
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "concurrency_limit_exceeded"
    # Its second request goes once the first ends.
    second = await send(client, capped, "two")
    assert fake.tags() == ["one", "other"]
    fake.release(1)
    assert (await first).status == 200
    assert await eventually(lambda: "two" in fake.tags())
    fake.release_all()
    assert (await second).status == 200 and (await other).status == 200


async def test_a_client_may_lower_its_class_never_raise_it(aiohttp_client, holding):
    keys = (ApiKey("chat", "sk-c", priority="interactive"), ApiKey("std", "sk-s"),
            ApiKey("nightly", "sk-n", priority="batch"))
    fake, client = await start(aiohttp_client, holding, *keys)
    tasks = [await send(client, keys[1], "occupies"),
             await send(client, keys[2], "batch-asks-interactive",
                        headers={"X-Priority": "interactive"}),
             await send(client, keys[0], "chat-lowered", headers={"X-Priority": "batch"}),
             await send(client, keys[0], "chat-flex", service_tier="flex"),
             await send(client, keys[1], "std")]
    order = await drain(fake, tasks, client)
    assert order == ["occupies", "std", "batch-asks-interactive", "chat-lowered", "chat-flex"]
    # service_tier is passed upstream unchanged.
    assert fake.arrived[4]["service_tier"] == "flex"


async def test_unknown_x_priority_is_a_400_naming_the_header(aiohttp_client, holding):
    _, client = await start(aiohttp_client, holding, A)
    resp = await client.post("/v1/chat/completions", json=chat("x"),
                             headers={**bearer(A), "X-Priority": "urgent"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "X-Priority" in error["message"] and error["param"] == "X-Priority"


async def test_without_keys_every_request_is_standard_and_may_lower_itself(aiohttp_client,
                                                                           holding):
    fake, client = await start(aiohttp_client, holding)
    tasks = [await send(client, None, "occupies"),
             await send(client, None, "lowered", headers={"X-Priority": "batch"}),
             await send(client, None, "raised", headers={"X-Priority": "interactive"}),
             await send(client, None, "plain")]
    assert await drain(fake, tasks, client) == ["occupies", "raised", "plain", "lowered"]


@pytest.mark.parametrize(("kind", "expected"), [("vllm", [0, 1, 2]), ("sglang", [2, 1, 0])])
async def test_engine_priority_sends_the_class_in_the_runtimes_convention(
        aiohttp_client, holding, kind, expected):
    keys = (ApiKey("chat", "sk-c", priority="interactive"), ApiKey("std", "sk-s"),
            ApiKey("nightly", "sk-n", priority="batch"))
    fake, client = await start(aiohttp_client, holding, *keys, cap=None, kind=kind,
                               backend_kw={"engine_priority": True})
    for key in keys:
        task = await send(client, key, key.name)
        fake.release_all()
        assert (await task).status == 200
    assert [b["priority"] for b in fake.arrived] == expected


async def test_no_priority_field_without_engine_priority(aiohttp_client, holding):
    fake, client = await start(aiohttp_client, holding, A, cap=None)
    task = await send(client, A, "x")
    fake.release_all()
    assert (await task).status == 200 and "priority" not in fake.arrived[0]


def budgeted(tmp_path, day: int | None = 15, month: int | None = None) -> ApiKey:
    return ApiKey("metered", "sk-m", budget=Budget(tokens_per_day=day, tokens_per_month=month))


async def test_a_spent_budget_is_a_429_until_the_period_ends_and_survives_a_restart(
        aiohttp_client, holding, tmp_path):
    key = budgeted(tmp_path)
    state = StateConfig(sqlite=str(tmp_path / "state.sqlite"))
    fake, client = await start(aiohttp_client, holding, key, cap=None, state=state)
    for _ in range(2):   # 10 + 10 tokens: the second was sent with 5 left, and is counted
        task = await send(client, key, "x")
        fake.release_all()
        assert (await task).status == 200
    refused = await client.post("/v1/chat/completions", json=chat("y"), headers=bearer(key))
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert len(fake.arrived) == 2
    own = await (await client.get("/gateway/key", headers=bearer(key))).json()
    assert own["tokens"] == {"day": 20, "month": 20}
    assert own["budget"] == {"tokens_per_day": 15, "tokens_per_month": None,
                             "left_day": 0, "left_month": None}
    await client.close()   # the app's cleanup writes what is pending

    _, again = await start(aiohttp_client, holding, key, cap=None, state=state)
    refused = await again.post("/v1/chat/completions", json=chat("z"), headers=bearer(key))
    assert refused.status == 429
    own = await (await again.get("/gateway/key", headers=bearer(key))).json()
    assert own["tokens"]["day"] == 20


async def test_a_spent_budget_on_messages_is_anthropic_shaped(aiohttp_client, holding,
                                                              tmp_path):
    key = budgeted(tmp_path, day=None, month=5)
    state = StateConfig(sqlite=str(tmp_path / "state.sqlite"))
    fake, client = await start(aiohttp_client, holding, key, cap=None, state=state)
    task = await send(client, key, "x")
    fake.release_all()
    assert (await task).status == 200
    refused = await client.post("/v1/messages", headers={"x-api-key": key.key}, json={
        "model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status == 429
    body = await refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) <= 31 * 86400


async def test_keys_entries_and_metrics_never_show_the_key(aiohttp_client, holding, tmp_path):
    capped = ApiKey("chat", "sk-secret-chat", priority="interactive", share=3,
                    max_concurrency=4, rpm=600, budget=Budget(tokens_per_day=1000))
    fake, client = await start(
        aiohttp_client, holding, capped, B, cap=1,
        state=StateConfig(sqlite=str(tmp_path / "s.sqlite")))
    first = await send(client, capped, "one")
    queued = await send(client, B, "two")
    own = await (await client.get("/gateway/key", headers=bearer(capped))).json()
    assert own == {"name": "chat", "priority": "interactive", "share": 3, "models": ["*"],
                   "rpm": 600, "tpm": None, "max_concurrency": 4, "in_flight": 1,
                   "queued": 0, "tokens": {"day": 0, "month": 0},
                   "budget": {"tokens_per_day": 1000, "tokens_per_month": None,
                              "left_day": 1000, "left_month": None}}
    other = await (await client.get("/gateway/key", headers=bearer(B))).json()
    assert other["queued"] == 1 and other["budget"] is None and other["max_concurrency"] is None
    all_samples = await samples(client)
    assert value(all_samples, "gateway_queue_depth", model=MODEL, priority="standard") == 1
    assert value(all_samples, "gateway_key_in_flight", key="chat") == 1
    fake.release_all()
    assert (await first).status == 200 and (await queued).status == 200
    all_samples = await samples(client)
    assert value(all_samples, "gateway_key_tokens_total", key="chat", model=MODEL,
                 type="prompt") == 4
    assert value(all_samples, "gateway_key_tokens_total", key="team-b", model=MODEL,
                 type="completion") == 6
    assert value(all_samples, "gateway_key_requests_total", key="chat", model=MODEL,
                 status="200") == 1
    assert value(all_samples, "gateway_key_budget_remaining_tokens", key="chat",
                 period="day") == 990
    assert value(all_samples, "gateway_queue_depth", model=MODEL, priority="standard") == 0
    assert value(all_samples, "gateway_queue_wait_seconds_count", model=MODEL,
                 priority="standard") == 1
    text = await (await client.get("/metrics")).text()
    assert "sk-secret-chat" not in text
    assert (await client.get("/gateway/key")).status == 401


async def test_admin_keys_lists_every_key(aiohttp_client, holding):
    fake, server = holding
    cfg = keyed(A, B, server=server)
    cfg = type(cfg)(**{**cfg.__dict__, "server": type(cfg.server)(admin_key="adm")})
    client = await aiohttp_client(create_app(cfg))
    assert (await client.get("/admin/keys")).status == 401
    resp = await client.get("/admin/keys", headers={"Authorization": "Bearer adm"})
    body = await resp.json()
    assert [e["name"] for e in body["keys"]] == ["team-a", "team-b"]
    assert set(body["keys"][0]) == {"name", "priority", "share", "models", "rpm", "tpm",
                                    "max_concurrency", "in_flight", "queued", "tokens",
                                    "budget"}
    assert "sk-a" not in await resp.text()


async def test_a_full_queue_refuses_at_once(aiohttp_client, holding):
    fake, client = await start(aiohttp_client, holding, A,
                               queue=QueueConfig(max_wait_s=30, max_size=1))
    tasks = [await send(client, A, "occupies"), await send(client, A, "waits")]
    refused = await client.post("/v1/chat/completions", json=chat("third"), headers=bearer(A))
    assert refused.status == 503 and "queue is full" in (await refused.json())["error"]["message"]
    assert await drain(fake, tasks, client) == ["occupies", "waits"]


async def test_a_reload_keeps_what_a_key_was_served_and_its_slots(aiohttp_client, holding):
    capped = ApiKey("capped", "sk-cap", max_concurrency=1)
    fake, client = await start(aiohttp_client, holding, capped, B, cap=None,
                               queue=QueueConfig(max_wait_s=0.3))
    first = await send(client, capped, "one")
    gateway = _gateway(client)
    served = gateway.tenants.entry_of(capped)[1].served
    gateway.apply(type(gateway.config)(**{**gateway.config.__dict__,
                                          "auth_keys": (capped, B, A)}))
    state = gateway.tenants.entry_of(capped)[1]
    assert state.served == served and state.in_flight == 1
    refused = await client.post("/v1/chat/completions", json=chat("two"),
                                headers=bearer(capped))
    assert refused.status == 429
    fake.release_all()
    assert (await first).status == 200


async def test_a_key_removed_by_a_reload_leaves_no_gauges(aiohttp_client, holding, tmp_path):
    key = budgeted(tmp_path)
    fake, client = await start(aiohttp_client, holding, key, B, cap=None,
                               state=StateConfig(sqlite=str(tmp_path / "state.sqlite")))
    task = await send(client, key, "one")
    fake.release_all()
    assert (await task).status == 200

    def present(found, name, **labels) -> bool:
        return (name, tuple(sorted(labels.items()))) in found
    found = await samples(client)
    assert present(found, "gateway_key_in_flight", key=key.name)
    assert present(found, "gateway_key_budget_remaining_tokens", key=key.name, period="day")
    gateway = _gateway(client)
    gateway.apply(type(gateway.config)(**{**gateway.config.__dict__, "auth_keys": (B,)}))
    found = await samples(client)
    assert not present(found, "gateway_key_in_flight", key=key.name)
    assert not present(found, "gateway_key_budget_remaining_tokens", key=key.name,
                       period="day")
    assert present(found, "gateway_key_in_flight", key=B.name)
