"""`gateway serve --workers N`: one server, whatever the number of processes behind it.

Each test starts a real gateway with echo backends (or a fake runtime) on loopback.
A worker's own share is read from its own metrics file in the server's run
directory (prometheus-client's multiprocess files, one per worker pid).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.workers.rundir import PREFIX, OwnedRunDir, sweep_stale
from tests.conftest import RUNTIME_ID, eventually
from tests.server_procs import Served, alive, start, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}


def echo_config(extra: str = "", server: str = "admin_key: adm") -> str:
    return (f"server: {{{server}}}\n"
            "backends:\n  a: {kind: echo, models: [m]}\n" + extra)


@pytest.fixture
def gateway(tmp_path):
    started: list[Served] = []

    def run(text: str, *args: str, **kw) -> Served:
        served = start(tmp_path, text, *args, name=f"gw{len(started)}", **kw)
        started.append(served)
        return served
    yield run
    for served in started:
        served.stop()


async def fresh_post(base: str, body: dict = CHAT, headers: dict | None = None) -> int:
    """One request on a connection of its own: the kernel picks the worker."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
            await resp.read()
            return resp.status


async def scrape(base: str) -> dict[tuple, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        text = await (await s.get(base + "/metrics")).text()
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text) for x in f.samples}


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))


async def test_two_workers_both_serve_and_every_scrape_is_the_whole_server(gateway):
    served = gateway(echo_config(), workers=2)
    sent = 60
    # A burst of new connections at once, as a load generator or a client pool opens
    # them: each worker has its own SO_REUSEPORT socket, so the kernel spreads them.
    statuses = await asyncio.gather(*(fresh_post(served.base) for _ in range(sent)))
    assert statuses == [200] * sent
    # Metrics are written just after an answer is sent: give the last ones a moment.
    assert await asyncio.to_thread(wait_until, lambda: sum(served.per_worker(
        "gateway_requests_total", endpoint="chat").values()) == sent, 5)
    shares = served.per_worker("gateway_requests_total", endpoint="chat")
    assert sorted(shares) == served.workers()
    assert sum(shares.values()) == sent and min(shares.values()) >= 10, shares
    # Any worker's /metrics is the sum of all: ten scrapes on new connections.
    for _ in range(10):
        samples = await scrape(served.base)
        assert total(samples, "gateway_requests_total", endpoint="chat") == sent
        assert total(samples, "gateway_request_duration_seconds_count", endpoint="chat") == sent
        # Gauges are one series per backend, not one per worker.
        assert [k for k in samples if k[0] == "gateway_backend_up"] == \
            [("gateway_backend_up", (("backend", "a"),))]
        assert samples[("gateway_backend_up", (("backend", "a"),))] == 1
        assert samples[("gateway_in_flight_requests", (("backend", "a"),))] == 0


async def test_in_flight_adds_up_across_workers(gateway):
    served = gateway(echo_config(), workers=2)
    slow = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["w"] * 100)}]}   # 2 s
    streams = [asyncio.create_task(fresh_post(served.base, slow)) for _ in range(12)]

    async def in_flight() -> float:
        return (await scrape(served.base))[("gateway_in_flight_requests", (("backend", "a"),))]

    async def all_counted() -> bool:   # each worker copies its count into the gauge every second
        return await in_flight() == 12
    assert await eventually(all_counted, timeout=5, interval=0.1), await in_flight()
    assert await asyncio.gather(*streams) == [200] * 12


async def test_sigkill_of_the_master_leaves_no_process_within_3_s(gateway):
    served = gateway(echo_config(), workers=2)
    workers = served.workers()
    assert len(workers) == 2
    long = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["w"] * 1000)}]}   # 20 s
    # Streams running: a worker that only noticed its parent's death would drain them
    # for up to drain_s (30 s); the kernel's SIGKILL ends it at once.
    opened: list[int] = []

    async def stream() -> None:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post(served.base + "/v1/chat/completions", json=long) as resp:
                opened.append(resp.status)
                await resp.read()
    streams = [asyncio.create_task(stream()) for _ in range(6)]
    assert await eventually(lambda: len(opened) == 6, timeout=10), f"{len(opened)} of 6 open"
    served.proc.send_signal(signal.SIGKILL)   # the master alone, as the OOM killer would
    await asyncio.to_thread(served.proc.wait, 5)
    assert await asyncio.to_thread(
        wait_until, lambda: not any(alive(pid) for pid in workers), 3.0), \
        [pid for pid in workers if alive(pid)]
    with pytest.raises(OSError):   # nothing serves on the port any more
        socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*streams, return_exceptions=True)


async def test_a_killed_worker_is_replaced_and_requests_keep_succeeding(gateway):
    served = gateway(echo_config(), workers=2)
    first, second = served.workers()
    # Between requests, then requests at once: a connection the kernel puts on the dead
    # worker's socket waits there for the worker that replaces it (the master keeps the
    # socket open), instead of being reset with it.
    os.kill(first, signal.SIGKILL)
    statuses = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:   # requests all along, until the new worker serves
        statuses += await asyncio.gather(*(fresh_post(served.base) for _ in range(10)))
        replacement = set(served.workers()) - {first, second}
        if replacement and served.per_worker("gateway_requests_total").get(
                min(replacement), 0) > 0:
            break
    assert replacement and len(served.workers()) == 2
    assert served.per_worker("gateway_requests_total")[min(replacement)] > 0
    assert statuses == [200] * len(statuses)


async def test_sighup_and_admin_reload_reach_every_worker(gateway):
    served = gateway(echo_config(), workers=2)

    def reloads_ok() -> list[float]:
        return sorted(served.per_worker("gateway_config_reloads_total", result="ok").values())
    assert reloads_ok() == [0, 0]
    load = asyncio.gather(*(fresh_post(served.base) for _ in range(40)))
    served.proc.send_signal(signal.SIGHUP)
    # Each worker reloaded once, none was replaced.
    assert await eventually(lambda: reloads_ok() == [1, 1], timeout=10, interval=0.05), \
        reloads_ok()
    async with aiohttp.ClientSession() as s:
        resp = await s.post(served.base + "/admin/reload",
                            headers={"Authorization": "Bearer adm"})
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    # The answer is this worker's reload; the other's may land a moment later.
    assert await asyncio.to_thread(wait_until, lambda: reloads_ok() == [2, 2], 10)
    assert await load == [200] * 40
    assert len(served.workers()) == 2 and served.seen_workers == set(served.workers())


async def test_an_edit_reaches_every_worker(gateway):
    served = gateway(echo_config(), workers=2)
    served.config.write_text(echo_config().replace("models: [m]", "models: [m, n]"))
    served.proc.send_signal(signal.SIGHUP)

    async def models() -> set[str]:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as s:
            body = await (await s.get(served.base + "/v1/models")).json()
        return {m["id"] for m in body["data"]}

    def reloaded() -> list[float]:
        return sorted(served.per_worker("gateway_config_reloads_total", result="ok").values())
    assert await eventually(lambda: reloaded()[0] >= 1, timeout=10, interval=0.05), reloaded()
    seen = [await models() for _ in range(20)]   # new connections: both workers answer
    assert seen == [{"m", "n"}] * 20


async def test_sigterm_drains_every_worker_at_once(gateway):
    served = gateway(echo_config(server="admin_key: adm, drain_s: 2"), workers=2)
    long = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["w"] * 400)}]}   # 8 s

    opened: list[int] = []

    async def stream() -> str:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post(served.base + "/v1/chat/completions", json=long) as resp:
                opened.append(resp.status)
                return (await resp.read()).decode()
    tasks = [asyncio.create_task(stream()) for _ in range(12)]   # on both workers
    assert await eventually(lambda: len(opened) == 12, timeout=10), f"{len(opened)} of 12 open"
    began = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    bodies = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    code = await asyncio.get_running_loop().run_in_executor(None, served.proc.wait, 10)
    took = time.monotonic() - began
    assert all('"code":"shutting_down"' in b and "[DONE]" not in b for b in bodies)
    assert code == 0
    # In parallel: both drains end after ~drain_s; one after the other would take 4 s.
    assert 1.9 <= took < 3.8, took
    assert not list(served.tmp.glob("gateway-run-*"))   # the run directory is removed


async def until_all(base: str, status: int, within: float = 10) -> list[int]:
    """Twelve requests on new connections (both workers) until all get `status`."""
    deadline = time.monotonic() + within
    while True:
        got = await asyncio.gather(*(fresh_post(base) for _ in range(12)))
        if got == [status] * 12 or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_health_checks_run_once_per_server(gateway, start_runtime):
    fake, server = await start_runtime()
    url = server.url("/v1")
    interval = 0.5
    text = ("backends:\n"
            f"  a: {{kind: vllm, url: '{url}', models: {{m: {RUNTIME_ID}}}}}\n"
            f"health: {{interval_s: {interval}, timeout_s: 1}}\n"
            # A pool with no healthy backend is cold: answered at once, not held.
            "queue: {max_wait_s: 0}\n")
    served = await asyncio.to_thread(gateway, text, workers=3)
    before, began = fake.health_checks, time.monotonic()
    await asyncio.sleep(4)   # a fixed window: the checks' rate over it is the check
    rounds = (time.monotonic() - began) / interval
    checks = fake.health_checks - before
    assert 2 <= checks <= 1.4 * rounds + 1, (checks, rounds)   # one checker, not three
    # The backend fails: every worker stops sending to it, from the one leader's checks.
    fake.health_status = 503
    assert await until_all(served.base, 503) == [503] * 12
    # The leader dies: another worker takes over and sees the backend come back.
    leader = next(p for p in served.workers() if f"worker {p} runs the health" in
                  served.stderr())
    os.kill(leader, signal.SIGKILL)
    assert await asyncio.to_thread(wait_until, lambda: not alive(leader), 3)
    fake.health_status = 200
    assert await until_all(served.base, 200) == [200] * 12
    assert served.stderr().count("runs the health checks") >= 2


async def test_a_keys_rpm_holds_for_the_whole_server(gateway):
    rpm = 30
    served = gateway(echo_config(
        f"auth:\n  keys:\n    - {{name: team, key: sk-team, rpm: {rpm}}}\n"), workers=2)
    began = time.monotonic()
    statuses = await asyncio.gather(*(fresh_post(served.base, headers={
        "Authorization": "Bearer sk-team"}) for _ in range(80)))
    elapsed = time.monotonic() - began
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    # The bucket starts full and refills rpm/60 a second: not rpm per worker.
    assert rpm <= admitted <= rpm + int(elapsed * rpm / 60) + 1, (admitted, elapsed)
    shares = served.per_worker("gateway_requests_total", status="200")
    assert len([n for n in shares.values() if n > 0]) == 2   # both workers took part


def test_a_dead_servers_run_dir_is_swept_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = OwnedRunDir()                         # holds its owner lock, as a master does
    dead = tmp_path / (PREFIX + "dead")          # a killed server's: its lock is free
    starting = tmp_path / (PREFIX + "starting")  # just made by a server starting now
    for path in (dead, starting):
        path.mkdir()
        (path / "owner.lock").touch()
    old = time.time() - 60
    for path in (Path(live.run.path), dead):
        os.utime(path / "owner.lock", (old, old))
    assert sweep_stale(str(tmp_path)) == [str(dead)]
    assert Path(live.run.path).is_dir() and starting.is_dir() and not dead.exists()
    live.remove()
    assert not Path(live.run.path).exists()


async def test_an_edit_made_while_a_worker_starts_is_not_lost(tmp_path, aiohttp_client):
    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.reload import file_identity
    from gateway.typedefs import CONFIG_SEEN
    path = tmp_path / "gateway.yaml"
    path.write_text(echo_config())
    seen = file_identity(str(path))   # what a worker notes before it reads its config
    config = load_config(str(path))
    # Edited (and the master's SIGHUP passed on) before this worker's file watch runs:
    path.write_text(echo_config().replace("models: [m]", "models: [m, n]"))
    app = create_app(config, str(path))
    app[CONFIG_SEEN] = seen
    client = await aiohttp_client(app)

    async def models() -> list[str]:
        async with client.get("/v1/models") as resp:
            return [m["id"] for m in (await resp.json())["data"]]

    async def both_listed() -> bool:
        return await models() == ["m", "n"]
    assert await eventually(both_listed, timeout=10, interval=0.05), await models()
