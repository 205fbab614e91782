"""Proof on record that routing does what it says, through real servers on loopback.

- least_busy spreads a burst over identical slow backends evenly (each within 12% of its
  share), with the runtimes' own live counts blended in;
- weighted 3:1 holds exactly, to one request, over every 400 consecutive picks;
- a runtime whose readings go stale is routed on the gateway's own count (and says so: the
  X-Gateway-Route header, gateway_routing_signal_fallbacks_total, the signal-age gauge),
  and is routed on its readings again once they are fresh.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time

import aiohttp

from gateway.config import EngineConfig, RouteConfig
from gateway.typedefs import GATEWAY
from tests.conftest import CHAT, RUNTIME_ID, make_config, runtime_backend, samples, value

ENGINE = EngineConfig(interval_s=0.05, stale_after_s=0.3, max_queue=1000, max_kv_usage=1.0)
EXPLAIN = {"X-Gateway-Explain": "1"}


def config(servers, strategy: str, weights=None, engine: EngineConfig = ENGINE):
    backends = [runtime_backend(name, server, models={"llama": RUNTIME_ID},
                                weight=(weights or {}).get(name, 1))
                for name, server in servers.items()]
    return make_config(*backends, routes={"llama": RouteConfig(strategy)}, engine=engine)


async def until(condition, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.02)


def fresh(client, name: str) -> bool:
    return client.app[GATEWAY].states[name].engine.fresh(time.monotonic()) is not None


async def test_least_busy_lands_200_concurrent_requests_50_each_on_4_slow_backends(
        start_runtime, gateway_client):
    # Identical runtimes with a batch bigger than the burst (no queue of their own) that
    # report their live running count on /metrics: the blend of the gateway's count with
    # the runtimes' readings is what is tested, scraped every 50 ms during the burst.
    fakes, servers = {}, {}
    for name in ("a", "b", "c", "d"):
        fakes[name], servers[name] = await start_runtime(slots=256, hang_s=0.6, words=2)
    client = await gateway_client(config(servers, "least_busy"))
    await until(lambda: all(fresh(client, n) for n in servers), what="readings")
    url = client.make_url("/v1/chat/completions")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> str:
            async with session.post(url, json=CHAT) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
                return resp.headers["X-Gateway-Backend"]

        landed = collections.Counter(await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(200))), 30))
    assert sum(landed.values()) == 200
    assert all(44 <= landed[n] <= 56 for n in servers), landed
    assert {n: f.answered for n, f in fakes.items()} == dict(landed)


async def test_weighted_3_to_1_is_exact_over_every_400_consecutive_picks(start_runtime,
                                                                         gateway_client):
    servers = {}
    for name in ("big", "small"):
        _, servers[name] = await start_runtime()
    client = await gateway_client(config(servers, "weighted", weights={"big": 3, "small": 1}))
    picks = []
    for _ in range(1000):
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        picks.append(resp.headers["X-Gateway-Backend"])
    big = [p == "big" for p in picks]
    in_window = sum(big[:400])
    for start in range(len(picks) - 400 + 1):   # every window, slid one pick at a time
        if start:
            in_window += big[start + 399] - big[start - 1]
        assert abs(in_window - 300) <= 1, (start, in_window)


async def explained(client) -> tuple[str, dict]:
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=EXPLAIN)
    assert resp.status == 200, await resp.text()
    return resp.headers["X-Gateway-Backend"], json.loads(resp.headers["X-Gateway-Route"])


async def test_a_stale_runtime_is_routed_on_the_gateways_count_and_comes_back_fresh(
        start_engine, gateway_client):
    busy, s1 = await start_engine(kind="vllm", running=12)   # busy with other clients
    _, s2 = await start_engine(kind="vllm", running=0)
    client = await gateway_client(config({"busy": s1, "idle": s2}, "least_busy"))
    await until(lambda: fresh(client, "busy") and fresh(client, "idle"), what="readings")

    # Fresh: the runtime's own 12 keep it out of a sequential client's way.
    got = [await explained(client) for _ in range(6)]
    assert {backend for backend, _ in got} == {"idle"}
    route = got[-1][1]
    assert route["strategy"] == "least_busy" and route["chosen"] == "idle"
    assert route["reason"] == "lowest_load"
    assert route["load"] == ["busy=12", "idle=0"] or route["load"] == ["idle=0", "busy=12"]
    assert all(s.split("=")[1].startswith("fresh") for s in route["signal"])
    assert "signal_fallback" not in route

    busy.pages_fault = "hang"          # its readings stop coming: stale after 0.3 s
    await until(lambda: not fresh(client, "busy"), what="stale")
    got = [await explained(client) for _ in range(6)]
    # On the gateway's own count both are idle: the tie goes round, 3 each.
    assert collections.Counter(b for b, _ in got) == {"busy": 3, "idle": 3}
    route = got[-1][1]
    assert route["signal_fallback"] == ["stale"]
    assert any(s.startswith("busy=stale") for s in route["signal"])
    found = await samples(client)
    assert value(found, "gateway_routing_signal_fallbacks_total",
                 strategy="least_busy", reason="stale") >= 6
    age = value(found, "gateway_backend_signal_age_seconds", backend="busy")
    assert age > ENGINE.stale_after_s    # present while stale, and growing
    assert value(found, "gateway_backend_signal_age_seconds", backend="idle") < age
    await asyncio.sleep(4 * ENGINE.interval_s)
    later = value(await samples(client), "gateway_backend_signal_age_seconds", backend="busy")
    assert later > age

    busy.pages_fault = "ok"            # readable again: its 12 count once more
    await until(lambda: fresh(client, "busy"), what="fresh again")
    got = [await explained(client) for _ in range(6)]
    assert {backend for backend, _ in got} == {"idle"}
    assert "signal_fallback" not in got[-1][1]
    assert (value(await samples(client), "gateway_backend_signal_age_seconds",
                  backend="busy") < ENGINE.stale_after_s)


async def test_no_route_header_unless_asked(start_runtime, gateway_client):
    _, server = await start_runtime()
    client = await gateway_client(config({"only": server}, "least_busy"))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and "X-Gateway-Route" not in resp.headers
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"X-Gateway-Explain": "0"})
    assert "X-Gateway-Route" not in resp.headers
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                             headers=EXPLAIN)
    await resp.read()
    route = json.loads(resp.headers["X-Gateway-Route"])
    assert route["chosen"] == "only" and route["reason"] == "only_candidate"


async def test_a_kind_without_load_says_so_and_a_reading_never_made_is_infinitely_old(
        start_engine, start_runtime, gateway_client):
    _, plain = await start_runtime()
    mute, silent = await start_engine(kind="vllm", pages_fault="hang")
    backends = [runtime_backend("plain", plain, kind="openai", models={"llama": RUNTIME_ID}),
                runtime_backend("mute", silent, models={"llama": RUNTIME_ID})]
    client = await gateway_client(make_config(
        *backends, routes={"llama": RouteConfig("least_latency")}, engine=ENGINE))
    await until(lambda: mute.scrapes["/metrics"] >= 2, what="scrapes")
    _, route = await explained(client)
    assert route["reason"] == "lowest_predicted_latency"
    assert sorted(route["signal_fallback"]) == ["no_reading", "not_exposed"]
    assert len(route["predicted_s"]) == 2
    await asyncio.sleep(3 * ENGINE.interval_s)
    found = await samples(client)
    assert math.isinf(value(found, "gateway_backend_signal_age_seconds", backend="mute"))
    assert not [k for k in found if k[0] == "gateway_backend_signal_age_seconds"
                and k[1] == (("backend", "plain"),)]
    for reason in ("no_reading", "not_exposed"):
        assert value(found, "gateway_routing_signal_fallbacks_total",
                     strategy="least_latency", reason=reason) >= 1
