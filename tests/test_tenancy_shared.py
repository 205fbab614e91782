"""Sharing the fleet across processes: a key's budget and max_concurrency hold for the
whole server under --workers N (budgets in state.sqlite), and across two gateways on
one Redis; budget counts survive a restart."""

from __future__ import annotations

import asyncio
import sqlite3

import json
import sys

import aiohttp
import pytest

from bench.procs import Proc, free_port
from tests.conftest import eventually
from tests.server_procs import ROOT, gateway_processes
from tests.test_shared_limits import redis_server  # noqa: F401 - the fixture

CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
KEY = {"Authorization": "Bearer sk-m"}


def config(state: str, budget: str = "{tokens_per_day: 40}", backend: str =
           "a: {kind: echo, models: [m]}", extra: str = "") -> str:
    return ("backends:\n  " + backend + "\n"
            "auth:\n  keys:\n"
            f"    - {{name: metered, key: sk-m, budget: {budget}{extra}}}\n"
            f"state: {state}\n")


gateways = gateway_processes


async def post(base: str) -> int:
    # A new connection each time: the kernel spreads them over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.post(base + "/v1/chat/completions", json=CHAT, headers=KEY) as resp:
            await resp.read()
            return resp.status


async def spend(base: str, limit: int = 60) -> list[int]:
    """Requests until one is refused; the statuses."""
    statuses = []
    for _ in range(limit):
        statuses.append(await post(base))
        if statuses[-1] != 200:
            break
    return statuses


async def all_refused(base: str, n: int = 8) -> bool:
    return all(s == 429 for s in await asyncio.gather(*(post(base) for _ in range(n))))


def counted(path) -> int:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT tokens FROM budget_tokens WHERE key = 'metered' AND "
                          "length(period) = 10").fetchall()
    return sum(r[0] for r in rows)


async def test_two_workers_share_one_budget_in_sqlite_and_it_survives_a_restart(
        gateways, tmp_path):
    db = tmp_path / "state" / "state.sqlite"
    text = config(f"{{sqlite: '{db}'}}")
    served = gateways(text, workers=2)
    statuses = await spend(served.base)
    assert statuses[-1] == 429 and statuses.count(200) >= 2
    # Every worker learns of it within a flush or two.
    assert await eventually(lambda: all_refused(served.base), timeout=5)
    used = await eventually(lambda: counted(db) >= 40, timeout=3)
    assert used
    served.stop()   # SIGTERM: what is pending is written
    before = counted(db)
    assert before >= 40
    again = gateways(text, workers=2)
    assert await all_refused(again.base)
    async with aiohttp.ClientSession() as s:
        own = await (await s.get(again.base + "/gateway/key", headers=KEY)).json()
    assert own["tokens"]["day"] == before and own["budget"]["left_day"] == 0


async def test_two_gateways_share_one_budget_through_redis(gateways, redis_server):  # noqa: F811
    text = config(f"{{redis: '{redis_server.url}'}}")
    a, b = gateways(text), gateways(text)
    statuses = await spend(a.base)
    assert statuses[-1] == 429
    # b never served a request of this key, yet refuses it once its flush read Redis.
    assert await eventually(lambda: all_refused(b.base, 2), timeout=5)


@pytest.fixture
def slow_runtime(tmp_path):
    """A fake runtime whose streams take 0.6 s: /stats says how many it writes at once."""
    port = free_port()
    switches = {"models": ["m"], "words": 6, "chunk_delay": 0.1}
    with Proc("fake runtime", [sys.executable, "-m", "bench.fake_runtime", "--port", str(port),
                               "--switches", json.dumps(switches)],
              tmp_path / "fake-runtime.log", cwd=ROOT) as proc:
        proc.start().wait_ready(f"http://127.0.0.1:{port}/health", 20)
        yield port


async def stream(base: str) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.post(base + "/v1/chat/completions", json={**CHAT, "stream": True},
                          headers=KEY) as resp:
            await resp.read()
            return resp.status


async def test_a_keys_max_concurrency_holds_for_the_whole_server(gateways, slow_runtime):
    text = ("backends:\n"
            f"  a: {{kind: vllm, url: 'http://127.0.0.1:{slow_runtime}', models: [m]}}\n"
            "queue: {max_wait_s: 20}\n"
            "auth:\n  keys:\n    - {name: capped, key: sk-m, max_concurrency: 1}\n")
    served = gateways(text, workers=2)
    tasks = [asyncio.create_task(stream(served.base)) for _ in range(6)]
    most = 0
    async with aiohttp.ClientSession() as s:
        for _ in range(400):   # bounded: 6 streams of 0.6 s one after another
            stats = await (await s.get(f"http://127.0.0.1:{slow_runtime}/stats")).json()
            most = max(most, stats["in_flight"])
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.02)
    assert await asyncio.gather(*tasks) == [200] * 6
    assert most == 1
