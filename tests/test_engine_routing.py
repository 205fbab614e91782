"""Routing on what the runtimes say about their own load, through real fake servers.

Each fake serves its kind's real metrics format (tests/fake_engines.py) with values the
test scripts; the gateway scrapes them every 50 ms and trusts a reading for 300 ms.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

from gateway.config import EngineConfig, QueueConfig, RouteConfig, ServerConfig
from gateway.typedefs import GATEWAY
from tests.conftest import CHAT, RUNTIME_ID, eventually, make_config, runtime_backend, samples

FAST = EngineConfig(interval_s=0.05, stale_after_s=0.3, max_queue=8, max_kv_usage=0.9)
ADMIN = "admin-key"


def config(*servers, strategy: str = "weighted", engine: EngineConfig = FAST, **sections):
    """One backend per (name, kind, server), all serving public model `llama`."""
    backends = [runtime_backend(name, server, kind=kind, models={"llama": RUNTIME_ID})
                for name, kind, server in servers]
    return make_config(*backends, routes={"llama": RouteConfig(strategy)}, engine=engine,
                       server=ServerConfig(admin_key=ADMIN), **sections)


async def until(condition, timeout: float = 5.0, what: str = "condition") -> None:
    assert await eventually(condition, timeout), f"{what} not met within {timeout} s"


def reading(client, name: str):
    return client.app[GATEWAY].states[name].engine.fresh(time.monotonic())


def saturated(client, name: str) -> bool:
    gateway = client.app[GATEWAY]
    return gateway.states[name].saturated(time.monotonic(), gateway.config.engine)


async def hits(client, n: int, body=CHAT) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for _ in range(n):
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 200, await resp.text()
        out[resp.headers["X-Gateway-Backend"]] += 1
    return out


def failures(all_samples, backend: str) -> dict[str, float]:
    return {dict(labels)["reason"]: v for (name, labels), v in all_samples.items()
            if name == "gateway_engine_scrape_failures_total"
            and dict(labels)["backend"] == backend}


# -- saturation ---------------------------------------------------------------------

async def test_a_long_queue_gets_no_new_requests_while_another_has_room(start_engine,
                                                                        gateway_client):
    busy, s1 = await start_engine(kind="vllm", waiting=20)
    idle, s2 = await start_engine(kind="vllm", waiting=0)
    client = await gateway_client(config(("busy", "vllm", s1), ("idle", "vllm", s2)))
    await until(lambda: saturated(client, "busy") and reading(client, "idle"), what="readings")
    assert await hits(client, 10) == {"idle": 10}
    assert busy.answered == 0
    busy.waiting = 3          # its queue drained: weighted round-robin takes it back
    await until(lambda: not saturated(client, "busy"), what="busy drained")
    assert await hits(client, 10) == {"busy": 5, "idle": 5}


async def least_busy_pair(start_engine, gateway_client, kind: str, *named: tuple[str, dict]):
    """Two engines of one kind, each (name, its switches), under least_busy:
    (first fake, second fake, client)."""
    fakes, servers = [], []
    for name, switches in named:
        fake, server = await start_engine(kind=kind, **switches)
        fakes.append(fake)
        servers.append((name, kind, server))
    client = await gateway_client(config(*servers, strategy="least_busy"))
    return fakes[0], fakes[1], client


async def test_a_full_kv_cache_gets_no_new_requests(start_engine, gateway_client):
    full, _, client = await least_busy_pair(start_engine, gateway_client, "sglang",
                                            ("full", {"kv": 0.97}), ("roomy", {"kv": 0.2}))
    await until(lambda: saturated(client, "full") and reading(client, "roomy"))
    assert reading(client, "full").kv_usage == pytest.approx(0.97)
    assert await hits(client, 8) == {"roomy": 8}
    assert full.answered == 0


async def both_saturated(start_engine, gateway_client, other_kind: str, max_wait_s: float):
    """Backend "a" (vLLM) and "b" (`other_kind`), both past max_queue, seen so by the
    gateway: ("b"'s fake, the client)."""
    _, s1 = await start_engine(kind="vllm", waiting=30)
    other, s2 = await start_engine(kind=other_kind, waiting=30)
    client = await gateway_client(config(("a", "vllm", s1), ("b", other_kind, s2),
                                         queue=QueueConfig(max_wait_s=max_wait_s)))
    await until(lambda: saturated(client, "a") and saturated(client, "b"))
    return other, client


async def test_every_backend_saturated_waits_in_the_queue_then_503(start_engine,
                                                                   gateway_client):
    _, client = await both_saturated(start_engine, gateway_client, "tgi", max_wait_s=0.4)
    started = time.monotonic()
    resp = await client.post("/v1/chat/completions", json=CHAT)
    waited = time.monotonic() - started
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    assert "saturated" in (await resp.json())["error"]["message"]
    assert 0.35 <= waited < 3


async def test_a_queued_request_goes_out_as_soon_as_a_scrape_shows_room(start_engine,
                                                                        gateway_client):
    late, client = await both_saturated(start_engine, gateway_client, "llamacpp",
                                        max_wait_s=20)
    started = time.monotonic()
    request = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await asyncio.sleep(0.3)   # a fixed wait: the absence is the check, nothing goes out
    assert not request.done()                      # waiting: nothing was sent anywhere
    assert client.app[GATEWAY].dispatcher.queue.waiting == 1
    late.waiting = 0                               # no request finished: only a scrape wakes it
    resp = await asyncio.wait_for(request, 10)
    assert resp.status == 200
    assert resp.headers["X-Gateway-Backend"] == "b"
    assert time.monotonic() - started < 5


# -- stale or missing signals --------------------------------------------------------

async def test_a_metrics_endpoint_that_hangs_goes_stale_and_is_ignored(start_engine,
                                                                       gateway_client):
    sticky, s1 = await start_engine(kind="vllm", waiting=20)
    _, s2 = await start_engine(kind="vllm")
    client = await gateway_client(config(("sticky", "vllm", s1), ("other", "vllm", s2)))
    await until(lambda: saturated(client, "sticky"))
    assert await hits(client, 4) == {"other": 4}
    sticky.pages_fault = "hang"                # its last reading says "saturated", then ages
    await until(lambda: reading(client, "sticky") is None, what="stale")
    assert not saturated(client, "sticky")
    assert await hits(client, 10) == {"sticky": 5, "other": 5}   # gateway-only counting
    assert failures(await samples(client), "sticky").get("timeout", 0) >= 1


async def test_metrics_that_vanish_or_break_fail_no_request(start_engine, gateway_client):
    flaky, _, client = await least_busy_pair(start_engine, gateway_client, "vllm",
                                             ("flaky", {"running": 1}),
                                             ("steady", {"running": 1}))
    await until(lambda: reading(client, "flaky") and reading(client, "steady"))
    seen: collections.Counter = collections.Counter()
    for mode in ("500", "garbage", "404", "hang", "ok"):
        flaky.pages_fault = mode
        for _ in range(6):
            seen += await hits(client, 1)
            await asyncio.sleep(0.05)   # a fixed pace: the requests span scrape rounds
    assert sum(seen.values()) == 30 and seen["flaky"] > 0
    reasons = failures(await samples(client), "flaky")
    assert reasons.get("status", 0) >= 1 and reasons.get("format", 0) >= 1
    assert reasons.get("unsupported") == 1    # a 404 path is asked again only a minute later
    assert not failures(await samples(client), "steady")


async def test_llamacpp_without_metrics_reads_its_slots_and_asks_metrics_rarely(
        start_engine, gateway_client):
    fake, s1 = await start_engine(kind="llamacpp", running=3, unsupported=("/metrics",))
    client = await gateway_client(config(("cpp", "llamacpp", s1)))
    await until(lambda: fake.scrapes["/slots"] >= 5, what="five rounds")
    assert fake.scrapes["/metrics"] == 1
    load = reading(client, "cpp")
    assert (load.running, load.waiting, load.kv_usage) == (3, None, None)
    found = await samples(client)
    assert found[("gateway_backend_running_requests", (("backend", "cpp"),))] == 3
    assert ("gateway_backend_queue_depth", (("backend", "cpp"),)) not in found
    assert failures(found, "cpp") == {"unsupported": 1}


# -- strategies on the blended load ----------------------------------------------------

async def test_least_busy_counts_the_runtimes_own_requests(start_engine, gateway_client):
    crowded, s1 = await start_engine(kind="vllm", running=6)   # other clients' work
    _, s2 = await start_engine(kind="vllm", running=0)
    client = await gateway_client(config(("crowded", "vllm", s1), ("quiet", "vllm", s2),
                                         strategy="least_busy"))
    await until(lambda: reading(client, "crowded") and reading(client, "quiet"))
    assert client.app[GATEWAY].states["crowded"].load == 6
    assert await hits(client, 10) == {"quiet": 10}
    crowded.pages_fault = "404"        # no signal: the gateway's own count, ties alternate
    await until(lambda: reading(client, "crowded") is None, what="stale")
    assert await hits(client, 10) == {"crowded": 5, "quiet": 5}


async def test_a_hot_prefix_spills_off_a_server_busy_with_other_work(start_engine,
                                                                     gateway_client):
    fakes = {}
    servers = []
    for name in ("a", "b", "c"):
        fakes[name], server = await start_engine(kind="vllm")
        servers.append((name, "vllm", server))
    client = await gateway_client(config(*servers, strategy="prefix_affinity"))
    await until(lambda: all(reading(client, n) for n in fakes))
    hot = {"model": "llama", "messages": [{"role": "system", "content": "hot " * 50},
                                          {"role": "user", "content": "the same question"}]}
    (home,) = (await hits(client, 5, hot)).keys()          # sticky while all are idle
    fakes[home].running = 40
    await until(lambda: reading(client, home).running == 40)
    spilled = await hits(client, 5, hot)
    assert home not in spilled and len(spilled) == 1       # one second home, every time


async def test_least_latency_prefers_the_fast_backend(start_engine, gateway_client):
    _, s1 = await start_engine(kind="vllm", ttft_s=0.03)
    _, s2 = await start_engine(kind="vllm", ttft_s=0.12)
    client = await gateway_client(config(("fast", "vllm", s1), ("slow", "vllm", s2),
                                         strategy="least_latency"))
    states = client.app[GATEWAY].states
    # Until a backend has answered once it counts as fast as the other: coin flips.
    for _ in range(40):
        if states["slow"].service_time is not None and states["fast"].service_time is not None:
            break
        await hits(client, 1)
    assert states["slow"].service_time >= 0.1
    assert states["fast"].service_time < states["slow"].service_time
    assert states["fast"].ewma_ttft < states["slow"].ewma_ttft
    assert await hits(client, 20) == {"fast": 20}
    # Under concurrency the fast one's queue grows until the slow one is worth a share.
    answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT)
                                     for _ in range(40)))
    spread = collections.Counter(r.headers["X-Gateway-Backend"] for r in answers)
    assert all(r.status == 200 for r in answers)
    assert spread["fast"] > 2 * spread["slow"] > 0, spread


async def test_streams_feed_the_time_to_first_token_average(start_engine, gateway_client):
    _, s1 = await start_engine(kind="vllm", ttft_s=0.08)
    client = await gateway_client(config(("only", "vllm", s1)))
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status == 200 and b"[DONE]" in await resp.read()
    assert 0.08 <= client.app[GATEWAY].states["only"].ewma_ttft < 1


# -- gauges and /admin/backends --------------------------------------------------------

ENGINE_GAUGES = {"queue_depth": "gateway_backend_queue_depth",
                 "running_requests": "gateway_backend_running_requests",
                 "kv_cache_usage": "gateway_backend_kv_cache_usage"}


async def test_gauges_and_admin_show_only_what_each_kind_exposes(start_engine,
                                                                 gateway_client):
    kinds = {"vllm": dict(running=2, waiting=5, kv=0.25),
             "sglang": dict(running=4, waiting=1, kv=0.5),
             "llamacpp": dict(running=1, waiting=2),
             "tgi": dict(running=3, waiting=7),
             "ollama": dict(loaded=(RUNTIME_ID,))}
    fakes, servers = {}, []
    for kind, values in kinds.items():
        fakes[kind], server = await start_engine(kind=kind, **values)
        servers.append((kind, kind, server))
    client = await gateway_client(config(*servers))
    await until(lambda: all(reading(client, k) for k in kinds))
    found = await samples(client)
    expected = {
        "vllm": {"queue_depth": 5, "running_requests": 2, "kv_cache_usage": 0.25},
        "sglang": {"queue_depth": 1, "running_requests": 4, "kv_cache_usage": 0.5},
        "llamacpp": {"queue_depth": 2, "running_requests": 1},   # no KV gauge any more
        "tgi": {"queue_depth": 7, "running_requests": 3},
        "ollama": {},                                               # /api/ps: no counts
    }
    for kind, values in expected.items():
        shown = {field: found[(metric, (("backend", kind),))]
                 for field, metric in ENGINE_GAUGES.items()
                 if (metric, (("backend", kind),)) in found}
        assert shown == values, kind
    admin = await client.get("/admin/backends", headers={"Authorization": f"Bearer {ADMIN}"})
    rows = {row["name"]: row for row in (await admin.json())["backends"]}
    for kind, values in expected.items():
        engine = rows[kind]["engine"]
        assert engine["fresh"] is True and engine["saturated"] is False
        assert {f: engine[f] for f in ENGINE_GAUGES if engine[f] is not None} == values, kind
    assert rows["ollama"]["engine"]["loaded"] is True
    assert rows["vllm"]["load"] == 7            # 2 running + 5 waiting, none of them ours
    assert rows["vllm"]["load_signal"] == "fresh" and rows["vllm"]["batch"] == 2
    assert rows["ollama"]["load_signal"] == "not_exposed"      # a reading, but no counts

    fakes["vllm"].pages_fault = "hang"             # stale: its series go, never a made-up 0
    await until(lambda: reading(client, "vllm") is None, what="stale")

    async def vllm_series_gone() -> bool:   # a round publishes the gauges after that
        return not [key for key in await samples(client) if key[1] == (("backend", "vllm"),)
                    and key[0] in ENGINE_GAUGES.values()]
    assert await eventually(vllm_series_gone, timeout=5), "vllm's stale series still shown"
    found = await samples(client)
    assert found[("gateway_backend_queue_depth", (("backend", "tgi"),))] == 7


async def test_kinds_that_expose_nothing_are_never_scraped(start_engine, gateway_client):
    local, server = await start_engine(kind="localai")   # its /metrics has no load in it
    client = await gateway_client(config(("local", "localai", server)))
    await asyncio.sleep(5 * FAST.interval_s)   # a fixed wait: the absence is the check
    assert await hits(client, 2) == {"local": 2}
    assert local.scrapes == {}
    found = await samples(client)
    assert not [k for k in found if k[0] in ENGINE_GAUGES.values()]
    admin = await client.get("/admin/backends", headers={"Authorization": f"Bearer {ADMIN}"})
    (row,) = (await admin.json())["backends"]
    assert row["engine"] is None and row["load"] == 0
    assert row["load_signal"] == "not_exposed" and row["batch"] is None
