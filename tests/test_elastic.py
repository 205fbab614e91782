"""Elastic pools: members found by a real DNS server (dnsmasq), cold pools, wake hooks.

The runtimes listen on several loopback addresses (127.0.0.2, 127.0.0.3, ...) at one
port; `pool.test` resolves to some of them, and the test rewrites its records while
the gateway runs. Only 127.0.0.0/8 is ever a target.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bench.fake_runtime import FakeRuntime, FakeServer
from bench.procs import free_port
from gateway.config import (Config, DiscoverConfig, EngineConfig, HealthConfig, QueueConfig,
                            ServerConfig, WakeConfig, backend)
from gateway.typedefs import GATEWAY
from tests import server_procs
from tests.conftest import (CHAT, RUNTIME_ID, eventually, make_config, samples, value)
from tests.dns_server import DnsServer
from tests.fake_engines import FakeEngine

HOST = "pool.test"
ADMIN = {"Authorization": "Bearer admin-key"}
FAST_HEALTH = HealthConfig(interval_s=0.2, timeout_s=1, unhealthy_after=1, healthy_after=1)


@pytest.fixture
def dns(tmp_path: Path) -> AsyncIterator[DnsServer]:
    server = DnsServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
async def runtimes() -> AsyncIterator[tuple[int, dict[str, FakeRuntime]]]:
    """A fake vLLM on 127.0.0.2, .3 and .4, all at one port."""
    port = free_port()
    fakes: dict[str, FakeRuntime] = {}
    servers: list[FakeServer] = []
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        fakes[address] = FakeRuntime(models=(RUNTIME_ID,))
        servers.append(await fakes[address].start(address, port))
    yield port, fakes
    for server in servers:
        await server.close(grace_s=1)


def pool_config(dns: DnsServer, port: int, *, wake: WakeConfig | None = None,
                max_wait_s: float = 5, **sections) -> Config:
    pool = backend("pool", "vllm", f"http://{HOST}:{port}/v1", models={"llama": RUNTIME_ID},
                   discover=DiscoverConfig(dns=True, interval_s=0.2,
                                           nameservers=(dns.nameserver,)), wake=wake)
    return make_config(pool, health=FAST_HEALTH, queue=QueueConfig(max_wait_s=max_wait_s),
                       server=ServerConfig(admin_key="admin-key"), **sections)


async def chat(client, **extra) -> aiohttp.ClientResponse:
    resp = await client.post("/v1/chat/completions", json={**CHAT, **extra})
    await resp.read()
    return resp


async def members(client, state: str) -> float:
    return value(await samples(client), "gateway_backend_members", backend="pool", state=state)


def members_are(client, state: str, count: int):
    """For `eventually`: whether the gauge shows `count` members in `state`."""
    async def check() -> bool:
        return await members(client, state) == count
    return check


async def test_members_appear_and_leave_and_a_leaving_members_stream_finishes(
        dns, runtimes, gateway_client):
    port, fakes = runtimes
    dns.set(HOST, "127.0.0.2")
    client = await gateway_client(pool_config(dns, port))
    first = await chat(client)
    assert first.status == 200
    assert first.headers["X-Gateway-Backend"] == f"pool/127.0.0.2:{port}"
    assert fakes["127.0.0.2"].headers_seen[-1]["Host"] == f"{HOST}:{port}"

    dns.set(HOST, "127.0.0.2", "127.0.0.3")
    assert await eventually(members_are(client, "available", 2), timeout=10)
    seen = {(await chat(client)).headers["X-Gateway-Backend"] for _ in range(6)}
    assert seen == {f"pool/127.0.0.2:{port}", f"pool/127.0.0.3:{port}"}
    admin = await (await client.get("/admin/backends", headers=ADMIN)).json()
    assert [(b["name"], b["backend"], b["draining"]) for b in admin["backends"]] == [
        (f"pool/127.0.0.{n}:{port}", "pool", False) for n in (2, 3)]

    # A slow stream lands on .3, then .3 leaves DNS while it runs.
    fakes["127.0.0.3"].chunk_delay = 0.1
    fakes["127.0.0.3"].words = 20
    stream = None
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        if resp.headers["X-Gateway-Backend"].startswith("pool/127.0.0.3"):
            stream = resp
            break
        await resp.read()
    assert stream is not None
    dns.set(HOST, "127.0.0.2")
    assert await eventually(members_are(client, "draining", 1), timeout=10)
    admin = await (await client.get("/admin/backends", headers=ADMIN)).json()
    assert [(b["name"], b["draining"], b["in_flight"]) for b in admin["backends"]] == [
        (f"pool/127.0.0.2:{port}", False, 0), (f"pool/127.0.0.3:{port}", True, 1)]
    assert await members(client, "available") == 1
    during = {(await chat(client)).headers["X-Gateway-Backend"] for _ in range(4)}
    assert during == {f"pool/127.0.0.2:{port}"}
    body = (await stream.read()).decode()
    assert body.count('"content":"w') == 20 and body.rstrip().endswith("data: [DONE]")
    assert await eventually(members_are(client, "draining", 0), timeout=5)
    # The metric label stays the configured name.
    all_samples = await samples(client)
    assert {dict(labels).get("backend") for (name, labels) in all_samples
            if name == "gateway_requests_total"} == {"pool"}


async def test_a_dns_server_that_stops_keeps_the_members_and_an_empty_answer_drops_them(
        dns, runtimes, gateway_client, caplog):
    caplog.set_level(logging.INFO, "gateway.discovery")
    port, _ = runtimes
    dns.set(HOST, "127.0.0.2", "127.0.0.3")
    client = await gateway_client(pool_config(dns, port, max_wait_s=0.3))
    assert await eventually(members_are(client, "available", 2), timeout=10)

    dns.stop()
    assert await eventually(lambda: "looking up pool.test failed" in caplog.text, timeout=10)
    await asyncio.sleep(0.6)   # a few more failed rounds: still logged once
    assert caplog.text.count("looking up pool.test failed") == 1
    assert await members(client, "available") == 2
    assert (await chat(client)).status == 200

    dns.set(HOST)   # no record: NXDOMAIN once it answers again
    dns.start()
    assert await eventually(members_are(client, "available", 0), timeout=10)
    assert "pool.test resolves again" in caplog.text
    refused = await chat(client)
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert "cold" in (await refused.json())["error"]["message"]


async def test_a_members_stored_response_id_reaches_that_member(dns, runtimes,
                                                                gateway_client):
    port, fakes = runtimes
    dns.set(HOST, "127.0.0.2", "127.0.0.3", "127.0.0.4")
    client = await gateway_client(pool_config(dns, port))
    assert await eventually(members_are(client, "available", 3), timeout=10)
    made = {}
    for _ in range(6):
        resp = await client.post("/v1/responses", json={"model": "llama", "input": "x"})
        made[(await resp.json())["id"]] = resp.headers["X-Gateway-Backend"]
    assert len(set(made.values())) == 3
    for public, member in made.items():
        address = member.split("/")[1].split(":")[0]
        before = len(fakes[address].stored_calls)
        got = await client.get(f"/v1/responses/{public}")
        assert got.status == 200 and got.headers["X-Gateway-Backend"] == member
        assert len(fakes[address].stored_calls) == before + 1
        follow = await client.post("/v1/responses", json={
            "model": "llama", "input": "y", "previous_response_id": public})
        assert follow.status == 200 and follow.headers["X-Gateway-Backend"] == member
    # A member gone from DNS holds its responses no more: a clean 404, not another member.
    dns.set(HOST, "127.0.0.2", "127.0.0.3")
    assert await eventually(members_are(client, "available", 2), timeout=10)
    gone = next(p for p, m in made.items() if m.startswith("pool/127.0.0.4"))
    resp = await client.get(f"/v1/responses/{gone}")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "response_not_found"


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, list[str], list]]:
    """A wake hook on 127.0.0.1 that records its calls and runs `on_call[0]`, if set."""
    calls: list[str] = []
    on_call: list = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path_qs}")
        for action in on_call:
            action()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/up", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}/up?model=llama", calls, on_call
    await runner.cleanup()


async def test_a_cold_pool_wakes_once_and_warms_within_the_wait(dns, runtimes, hook,
                                                                gateway_client):
    port, fakes = runtimes
    url, calls, on_call = hook
    on_call.append(lambda: dns.set(HOST, "127.0.0.4"))   # the "scaler" brings one up
    client = await gateway_client(pool_config(dns, port, wake=WakeConfig(url=url)))
    assert await members(client, "available") == 0
    answers = await asyncio.gather(*(chat(client) for _ in range(30)))
    assert [a.status for a in answers] == [200] * 30
    assert {a.headers["X-Gateway-Backend"] for a in answers} == {f"pool/127.0.0.4:{port}"}
    assert calls == ["POST /up?model=llama"]
    assert value(await samples(client), "gateway_wake_calls_total",
                 backend="pool", result="ok") == 1
    assert fakes["127.0.0.4"].answered == 30


async def test_a_failing_wake_hook_is_logged_and_counted_never_shown(dns, runtimes,
                                                                     gateway_client, caplog):
    port, _ = runtimes
    closed = f"http://127.0.0.1:{free_port()}/wake_up"
    client = await gateway_client(pool_config(dns, port, max_wait_s=0.5,
                                              wake=WakeConfig(url=closed)))
    answers = await asyncio.gather(*(chat(client) for _ in range(5)))
    assert [a.status for a in answers] == [503] * 5
    for answer in answers:
        assert "wake" not in (await answer.text()).lower()
    assert await eventually(lambda: "waking backend pool" in caplog.text, timeout=5)
    assert value(await samples(client), "gateway_wake_calls_total",
                 backend="pool", result="error") == 1


async def test_ollama_prefers_the_backend_with_the_model_loaded(serve_fake, gateway_client):
    cold = FakeEngine(kind="ollama", models=(RUNTIME_ID,), loaded=())
    warm = FakeEngine(kind="ollama", models=(RUNTIME_ID,), loaded=(RUNTIME_ID,))
    backends = []
    for name, fake in (("cold", cold), ("warm", warm)):
        server = await serve_fake(fake)
        backends.append(backend(name, "ollama", server.url(), models={"llama": RUNTIME_ID}))
    client = await gateway_client(make_config(
        *backends, engine=EngineConfig(interval_s=0.1, stale_after_s=5)))

    async def picks() -> set[str]:
        return {(await chat(client)).headers["X-Gateway-Backend"] for _ in range(6)}

    assert await eventually(lambda: _only(picks, "warm"), timeout=5)
    cold.loaded, warm.loaded = (RUNTIME_ID,), ()
    assert await eventually(lambda: _only(picks, "cold"), timeout=5)
    cold.loaded = warm.loaded = (RUNTIME_ID,)
    assert await eventually(lambda: _only(picks, "cold", "warm"), timeout=5)


async def _only(picks, *names: str) -> bool:
    return await picks() == set(names)


async def test_vllm_put_to_sleep_is_avoided_and_a_pool_all_asleep_is_woken(
        serve_fake, hook, gateway_client):
    url, calls, on_call = hook
    fakes = [FakeEngine(kind="vllm", models=(RUNTIME_ID,), asleep=True) for _ in range(2)]
    backends = []
    for name, fake in zip(("a", "b"), fakes):
        server = await serve_fake(fake)
        backends.append(backend(name, "vllm", server.url(), models={"llama": RUNTIME_ID},
                                wake=WakeConfig(url=url)))

    def wake_up() -> None:
        fakes[1].asleep = False   # the hook wakes b (a scaler's choice)

    on_call.append(wake_up)
    client = await gateway_client(make_config(
        *backends, engine=EngineConfig(interval_s=0.1, stale_after_s=5),
        queue=QueueConfig(max_wait_s=10)))
    # Two scrape rounds done: both read asleep (the first may still have been running).
    assert await eventually(lambda: all(f.scrapes["/metrics"] >= 2 for f in fakes), timeout=5)
    answers = await asyncio.gather(*(chat(client) for _ in range(10)))
    assert [a.status for a in answers] == [200] * 10
    assert {a.headers["X-Gateway-Backend"] for a in answers} == {"b"}
    # Both backends have the hook: one call each for the cold period, not one per request.
    assert sorted(calls) == ["POST /up?model=llama"] * 2
    assert fakes[0].answered == 0


def test_many_requests_on_a_cold_pool_make_one_wake_call_with_two_workers(tmp_path):
    asyncio.run(_two_workers(tmp_path))


async def _two_workers(tmp_path: Path) -> None:
    dns = DnsServer(tmp_path).start()
    try:
        await _two_workers_with(tmp_path, dns)
    finally:
        dns.stop()


async def fresh_backend(base: str) -> str | None:
    """The backend of one chat request on a new connection (any worker may take it)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.post(base + "/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            return resp.headers.get("X-Gateway-Backend")


async def _two_workers_with(tmp_path: Path, dns: DnsServer) -> None:
    port = free_port()
    fakes = [FakeRuntime(models=(RUNTIME_ID,)) for _ in range(2)]
    servers = [await f.start(a, port) for f, a in zip(fakes, ("127.0.0.2", "127.0.0.3"))]
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.method)
        dns.set(HOST, "127.0.0.2", "127.0.0.3")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/up", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    text = f"""
backends:
  pool:
    kind: vllm
    url: http://{HOST}:{port}/v1
    models: {{llama: "{RUNTIME_ID}"}}
    discover: {{dns: true, interval_s: 0.2, nameservers: ["{dns.nameserver}"]}}
    wake: {{url: "http://127.0.0.1:{hook_port}/up"}}
health: {{interval_s: 0.2, timeout_s: 1, unhealthy_after: 1, healthy_after: 1}}
queue: {{max_wait_s: 20}}
"""
    served = None
    try:
        served = await asyncio.to_thread(server_procs.start, tmp_path, text, workers=2)
        async with aiohttp.ClientSession() as session:
            async def one() -> int:
                async with session.post(served.base + "/v1/chat/completions",
                                        json=CHAT) as resp:
                    await resp.read()
                    return resp.status
            statuses = await asyncio.gather(*(one() for _ in range(40)))
        assert statuses == [200] * 40, served.stderr()
        assert calls == ["POST"]
        answered = served.per_worker("gateway_requests_total", status="200")
        assert len([n for n in answered.values() if n]) == 2   # both workers waited
        assert sum(f.answered for f in fakes) == 40
        # One worker looked up for the server, the other followed its addresses.
        assert served.stderr().count("backend pool has 2 member(s)") == 1
        assert (served.run_dir() / "members.json").exists()

        # The leading worker dies: the other leads and looks up; the DNS change reaches
        # every worker (the new one too) without it.
        leader = next(p for p in served.workers()
                      if f"worker {p} runs the health" in served.stderr())
        os.kill(leader, signal.SIGKILL)
        assert await asyncio.to_thread(server_procs.wait_until,
                                       lambda: not server_procs.alive(leader), 3)
        dns.set(HOST, "127.0.0.3")

        async def only_the_new_address() -> bool:
            picked = await asyncio.gather(*(fresh_backend(served.base) for _ in range(12)))
            return set(picked) == {f"pool/127.0.0.3:{port}"}

        assert await eventually(only_the_new_address, timeout=20, interval=0.2)
    finally:
        if served is not None:
            await asyncio.to_thread(served.stop)
        for server in servers:
            await server.close(grace_s=1)
        await runner.cleanup()


async def test_a_reload_keeps_the_members_and_turning_discovery_off_drops_their_gauge(
        dns, runtimes, gateway_client):
    port, fakes = runtimes
    dns.set(HOST, "127.0.0.2", "127.0.0.3")
    config = pool_config(dns, port)
    client = await gateway_client(config)
    assert await eventually(members_are(client, "available", 2), timeout=10)
    gateway = client.app[GATEWAY]
    before = dict(gateway.states)
    gateway.apply(config)   # what a reload of an unchanged file does
    assert gateway.states == before   # the same member states: counts, ejection kept
    static = backend("pool", "vllm", f"http://127.0.0.2:{port}/v1",
                     models={"llama": RUNTIME_ID})
    gateway.apply(make_config(static, health=FAST_HEALTH))
    assert list(gateway.states) == ["pool"]

    async def gone() -> bool:
        return not any(name == "gateway_backend_members" for name, _ in await samples(client))
    assert await eventually(gone, timeout=5)
    assert (await chat(client)).headers["X-Gateway-Backend"] == "pool"


async def test_a_new_member_gets_traffic_only_once_it_passes_a_health_check(
        dns, runtimes, gateway_client):
    port, fakes = runtimes
    fakes["127.0.0.4"].health_status = 503   # still loading its model
    dns.set(HOST, "127.0.0.2")
    client = await gateway_client(pool_config(dns, port))
    dns.set(HOST, "127.0.0.2", "127.0.0.4")
    assert await eventually(members_are(client, "unavailable", 1), timeout=10)
    assert {(await chat(client)).headers["X-Gateway-Backend"] for _ in range(6)} == {
        f"pool/127.0.0.2:{port}"}
    assert fakes["127.0.0.4"].answered == 0
    fakes["127.0.0.4"].health_status = 200
    assert await eventually(members_are(client, "available", 2), timeout=10)
    seen = {(await chat(client)).headers["X-Gateway-Backend"] for _ in range(6)}
    assert f"pool/127.0.0.4:{port}" in seen
