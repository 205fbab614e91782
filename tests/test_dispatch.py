"""Routing through real servers: weights, retries, fallbacks, health, capacity, load."""

from __future__ import annotations

import asyncio
import collections
import time

from gateway.config import (HealthConfig, QueueConfig, RetryConfig, RouteConfig, Fallback,
                            Timeouts, backend)
from gateway.health.checks import apply_result
from gateway.dispatch import BackendState
from gateway.runtimes import make_runtime
from gateway.typedefs import GATEWAY
from tests.conftest import CHAT, RUNTIME_ID, eventually, make_config, runtime_backend


def new_state(config) -> BackendState:
    return BackendState(config, make_runtime(config, None))


async def backends_hit(client, n, body=CHAT):
    hits = collections.Counter()
    for _ in range(n):
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 200, await resp.text()
        hits[resp.headers["X-Gateway-Backend"]] += 1
    return hits


async def pool_of_two(start_runtime, gateway_client, a: dict, b: dict, **cfg_kw):
    """Backends "a" and "b" of model llama on fake runtimes with these switches:
    (runtime a, server a, runtime b, server b, client)."""
    fake_a, server_a = await start_runtime(**a)
    fake_b, server_b = await start_runtime(**b)
    cfg = make_config(runtime_backend("a", server_a, models=["llama"]),
                      runtime_backend("b", server_b, models=["llama"]), **cfg_kw)
    return fake_a, server_a, fake_b, server_b, await gateway_client(cfg)


async def test_weights_are_honoured_exactly(gateway_client):
    cfg = make_config(backend("a", "echo", models=["llama"], weight=3),
                      backend("b", "echo", models=["llama"], weight=1))
    client = await gateway_client(cfg)
    assert await backends_hit(client, 40) == {"a": 30, "b": 10}


async def test_refused_backend_is_retried_on_another(start_runtime, gateway_client):
    _, dead = await start_runtime()
    good, live = await start_runtime()
    cfg = make_config(runtime_backend("dead", dead, models=["llama"], weight=5),
                      runtime_backend("live", live, models=["llama"]))
    client = await gateway_client(cfg)
    await dead.close()
    assert await backends_hit(client, 6) == {"live": 6}
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_retries_total{backend="dead",reason="connect"}' in metrics


async def test_503_then_recovers_with_retries(start_runtime, gateway_client):
    flaky, s1 = await start_runtime(status=503, fail_times=2)
    good, s2 = await start_runtime()
    cfg = make_config(runtime_backend("flaky", s1, models=["llama"], weight=100),
                      runtime_backend("good", s2, models=["llama"], weight=1))
    client = await gateway_client(cfg)
    hits = await backends_hit(client, 4)
    assert hits["good"] == 2 and hits["flaky"] == 2


async def test_429_cools_backend_down_for_retry_after(start_runtime, gateway_client):
    limited, s1 = await start_runtime(status=429, retry_after="30")
    _, s2 = await start_runtime()
    cfg = make_config(runtime_backend("limited", s1, models=["llama"], weight=100),
                      runtime_backend("spare", s2, models=["llama"], weight=1))
    client = await gateway_client(cfg)
    assert await backends_hit(client, 5) == {"spare": 5}
    assert len(limited.requests) == 1   # cooled down: asked once, not five times


async def test_every_backend_429_gives_429_with_smallest_retry_after(start_runtime,
                                                                     gateway_client):
    *_, client = await pool_of_two(start_runtime, gateway_client,
                                   {"status": 429, "retry_after": "30"},
                                   {"status": 429, "retry_after": "7"})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    resp = await client.post("/v1/chat/completions", json=CHAT)   # both cooling now
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 7


async def test_hang_before_headers_times_out_and_retries(start_runtime, gateway_client):
    _, slow = await start_runtime(hang_s=5)
    _, fast = await start_runtime()
    cfg = make_config(
        runtime_backend("slow", slow, models=["llama"], weight=10,
                        timeouts=Timeouts(first_byte_s=0.2)),
        runtime_backend("fast", fast, models=["llama"]))
    client = await gateway_client(cfg)
    started = time.monotonic()
    assert await backends_hit(client, 1) == {"fast": 1}
    assert time.monotonic() - started < 2


async def test_stream_whose_first_event_is_an_error_is_retried(start_runtime, gateway_client):
    _, bad = await start_runtime(first_event_error=True)
    _, good = await start_runtime()
    cfg = make_config(runtime_backend("bad", bad, models=["llama"], weight=10),
                      runtime_backend("good", good, models=["llama"]))
    client = await gateway_client(cfg)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.headers["X-Gateway-Backend"] == "good"
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_fallbacks_walk_in_order_with_their_own_rewriting(start_runtime, gateway_client):
    _, dead = await start_runtime()
    cloud, s_cloud = await start_runtime(models=("gpt-4o-mini",))
    small, s_small = await start_runtime(models=("llama-3b-id",))
    cfg = make_config(
        runtime_backend("dead", dead, models=["llama"]),
        runtime_backend("cloud", s_cloud, "openai", models={"llama": "gpt-4o-mini"}),
        runtime_backend("small", s_small, models={"small": "llama-3b-id"}),
        routes={"llama": RouteConfig(fallbacks=(Fallback(backend="cloud"),
                                                Fallback(model="small")))},
        retries=RetryConfig(attempts=0))
    client = await gateway_client(cfg)
    await dead.close()
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.headers["X-Gateway-Backend"] == "cloud"
    assert cloud.requests[-1]["model"] == "gpt-4o-mini"
    assert (await resp.json())["model"] == "llama"
    cloud.status = 500
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert resp.headers["X-Gateway-Backend"] == "small"
    assert small.requests[-1]["model"] == "llama-3b-id"
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_fallbacks_total{model="llama",to="cloud"} 2.0' in metrics
    assert 'gateway_fallbacks_total{model="llama",to="small"} 1.0' in metrics


async def test_every_backend_failing_is_502(start_runtime, gateway_client):
    a, _, b, _, client = await pool_of_two(start_runtime, gateway_client, {"status": 500},
                                           {"status": 502})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    assert len(a.requests) == 1 and len(b.requests) == 1   # each backend once


async def test_passive_ejection_then_trial_request(start_runtime, gateway_client):
    flaky, s1 = await start_runtime(status=500)
    _, s2 = await start_runtime()
    cfg = make_config(runtime_backend("flaky", s1, models=["llama"]),
                      runtime_backend("good", s2, models=["llama"]),
                      health=HealthConfig(interval_s=60, unhealthy_after=2, cooldown_s=0.3))
    client = await gateway_client(cfg)
    await backends_hit(client, 10)
    assert len(flaky.requests) == 2              # ejected after two failures
    flaky.status = 200
    await asyncio.sleep(0.35)   # a fixed wait: the 0.3 s cooldown passing is what is tested
    await backends_hit(client, 4)
    assert len(flaky.requests) >= 3              # back after its cooldown, via one trial


async def test_all_ejected_without_fallback_tries_soonest(start_runtime, gateway_client):
    flaky, s1 = await start_runtime(status=500, fail_times=1)
    cfg = make_config(runtime_backend("only", s1, models=["llama"]),
                      health=HealthConfig(interval_s=60, unhealthy_after=1, cooldown_s=30),
                      retries=RetryConfig(attempts=0))
    client = await gateway_client(cfg)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 502
    # Ejected for 30 s, but it is the only one: try it rather than fail outright.
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_a_failed_try_goes_on_to_an_ejected_backend_before_giving_up(start_runtime,
                                                                          gateway_client):
    """One backend just died, the other is still in an ejection from earlier failures:
    the retry tries the ejected one (a trial) rather than answer 502."""
    _, s1 = await start_runtime()
    recovered, s2 = await start_runtime(status=500, fail_times=1)
    cfg = make_config(runtime_backend("dies", s1, models=["llama"]),
                      runtime_backend("recovered", s2, models=["llama"]),
                      health=HealthConfig(interval_s=60, unhealthy_after=1, cooldown_s=30))
    client = await gateway_client(cfg)
    gateway = client.server.app[GATEWAY]
    for _ in range(4):   # until `recovered` failed once and is ejected for 30 s
        await client.post("/v1/chat/completions", json=CHAT)
        if gateway.states["recovered"].ejected_until:
            break
    assert gateway.states["recovered"].ejected_until > time.monotonic() + 20
    await s1.close()   # `dies` refuses connections from now on
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "recovered"


def test_active_health_thresholds_are_exact():
    health = HealthConfig(unhealthy_after=3, healthy_after=2)
    state = new_state(backend("x", "vllm", "http://127.0.0.1:1"))
    apply_result(state, True, health)
    assert state.healthy
    for expected in (True, True, False):
        apply_result(state, False, health)
        assert state.healthy is expected
    apply_result(state, True, health)
    assert not state.healthy
    apply_result(state, False, health)
    apply_result(state, True, health)
    assert not state.healthy
    apply_result(state, True, health)
    assert state.healthy


def test_backend_still_loading_gets_no_traffic_until_healthy():
    health = HealthConfig(unhealthy_after=3, healthy_after=2)
    state = new_state(backend("x", "vllm", "http://127.0.0.1:1"))
    apply_result(state, False, health)      # first check fails: not trusted at all
    assert not state.healthy
    apply_result(state, True, health)
    assert not state.healthy
    apply_result(state, True, health)
    assert state.healthy


async def test_active_checks_flip_ready_and_backend_up(start_runtime, gateway_client):
    fake, server = await start_runtime()
    cfg = make_config(runtime_backend("x", server, models=["llama"]),
                      health=HealthConfig(interval_s=0.05, unhealthy_after=2, healthy_after=2))
    client = await gateway_client(cfg)
    assert (await client.get("/ready")).status == 200

    async def ready_is(status: int) -> bool:
        async with client.get("/ready") as resp:
            return resp.status == status
    fake.health_status = 503
    assert await eventually(lambda: ready_is(503), timeout=5), "/ready never said 503"
    assert 'gateway_backend_up{backend="x"} 0.0' in await (await client.get("/metrics")).text()
    fake.health_status = 200
    assert await eventually(lambda: ready_is(200), timeout=5), "/ready never said 200 again"


async def test_discovered_models_follow_the_runtime(start_runtime, gateway_client):
    fake, server = await start_runtime(models=("a",))
    cfg = make_config(runtime_backend("x", server),
                      health=HealthConfig(interval_s=0.05))
    client = await gateway_client(cfg)
    fake.models = ("a", "b")

    async def names() -> list[str]:
        async with client.get("/v1/models") as resp:
            return [m["id"] for m in (await resp.json())["data"]]

    async def both_listed() -> bool:
        return await names() == ["a", "b"]
    assert await eventually(both_listed, timeout=5), await names()


async def test_queue_waits_for_capacity_then_503(start_runtime, gateway_client):
    _, server = await start_runtime(hang_s=0.3)
    cfg = make_config(runtime_backend("x", server, models=["llama"], max_concurrency=1),
                      queue=QueueConfig(max_wait_s=0.5))
    client = await gateway_client(cfg)
    two = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT)
                                 for _ in range(2)))
    assert sorted(r.status for r in two) == [200, 200]    # the second waited its turn
    three = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT)
                                   for _ in range(3)))
    statuses = sorted(r.status for r in three)
    assert statuses == [200, 200, 503]
    rejected = next(r for r in three if r.status == 503)
    assert rejected.headers["Retry-After"] == "1"
    # Local overflow says nothing about the backend's health.
    assert (await client.get("/ready")).status == 200


async def test_backend_killed_under_load_no_client_errors(start_runtime, gateway_client):
    _, s1, _, _, client = await pool_of_two(start_runtime, gateway_client,
                                            {"chunk_delay": 0.005}, {"chunk_delay": 0.005})
    statuses = collections.Counter()

    async def worker(n):
        for i in range(n):
            stream = i % 2 == 0
            resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            body = await resp.read()
            ok = resp.status == 200 and (not stream or body.endswith(b"[DONE]\n\n"))
            statuses["ok" if ok else f"bad {resp.status}"] += 1

    load = asyncio.gather(*(worker(25) for _ in range(8)))
    await asyncio.sleep(0.2)   # a fixed wait: the load runs a while before the kill
    await s1.close()      # killed mid-run; open streams on it finish, new ones go to b
    await asyncio.wait_for(load, 30)
    assert statuses == {"ok": 200}


async def test_client_leaving_before_first_token_closes_upstream(start_runtime,
                                                                 gateway_client):
    fake, server = await start_runtime(hang_s=5)
    client = await gateway_client(make_config(runtime_backend("x", server, models=["llama"])))
    task = asyncio.create_task(client.post("/v1/chat/completions",
                                           json={**CHAT, "stream": True}))
    assert await eventually(lambda: fake.requests)
    task.cancel()
    # The runtime sees its connection go within a second.
    await eventually(lambda: fake.cancelled)
    assert fake.cancelled == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_in_flight_requests{backend="x"} 0.0' in metrics


async def test_deadline_bounds_all_tries_without_blaming_the_backend(start_runtime,
                                                                    gateway_client):
    *_, client = await pool_of_two(start_runtime, gateway_client, {"hang_s": 5}, {"hang_s": 5},
                                   retries=RetryConfig(attempts=2, deadline_s=0.4))
    started = time.monotonic()
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert time.monotonic() - started < 1.5
    assert resp.status == 504
    assert "deadline" in (await resp.json())["error"]["message"]
    metrics = await (await client.get("/metrics")).text()
    assert 'reason="deadline"' in metrics


async def test_a_request_spanning_a_reload_keeps_its_config(start_runtime, gateway_client):
    """Every setting a request reads comes from the config it started with: here its
    failure is judged by the health settings it started under, not the reloaded ones."""
    fake, server = await start_runtime(status=500, hang_s=0.4)
    gpu = runtime_backend("gpu", server, models={"llama": RUNTIME_ID})
    strict = make_config(gpu, health=HealthConfig(unhealthy_after=1, cooldown_s=60),
                         retries=RetryConfig(attempts=0))
    client = await gateway_client(strict)
    gateway = client.server.app[GATEWAY]
    request = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    assert await eventually(lambda: fake.requests, timeout=5)   # the request is at the runtime
    gateway.apply(make_config(gpu, health=HealthConfig(unhealthy_after=5, cooldown_s=60),
                              retries=RetryConfig(attempts=0)))
    assert (await request).status == 502
    state = gateway.states["gpu"]
    assert state.consecutive_failures == 1
    assert state.ejected_until > time.monotonic() + 30   # ejected by unhealthy_after=1


async def test_a_retry_after_a_reload_keeps_the_requests_own_backend_settings(start_runtime,
                                                                              gateway_client):
    """One config per request: the first try hangs, the config is reloaded meanwhile with
    new headers and api_key for the other backend; the retry still carries the old ones,
    and a request started after the reload carries the new ones."""
    _, slow = await start_runtime(hang_s=5)
    fast_fake, fast = await start_runtime()

    def config(org: str):
        return make_config(
            runtime_backend("slow", slow, models={"llama": RUNTIME_ID}, weight=10,
                            timeouts=Timeouts(first_byte_s=1.0)),
            runtime_backend("fast", fast, models={"llama": RUNTIME_ID}, headers={"X-Org": org},
                            api_key=f"key-{org}", timeouts=Timeouts(first_byte_s=5)))
    client = await gateway_client(config("old"))
    gateway = client.app[GATEWAY]
    first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    assert await eventually(lambda: gateway.states["slow"].in_flight == 1, timeout=2)
    gateway.apply(config("new"))    # the reload lands while the first try waits
    assert gateway.states["fast"].config.headers["X-Org"] == "new"
    resp = await first
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "fast"
    seen = fast_fake.headers_seen[-1]
    assert (seen["X-Org"], seen["Authorization"]) == ("old", "Bearer key-old")
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "fast"
    seen = fast_fake.headers_seen[-1]
    assert (seen["X-Org"], seen["Authorization"]) == ("new", "Bearer key-new")
