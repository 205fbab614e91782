"""Engine scrapes under `gateway serve --workers 2`: once per server, one reading everywhere.

A real gateway with two workers in front of fake vLLM runtimes (tests/fake_engines.py)
that count how often their /metrics is asked and report scripted load in vLLM's own
format. Requests and /metrics scrapes go on new connections, so the kernel spreads them
over both workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from gateway.config import backend
from gateway.engine import EngineLoad
from gateway.health.scraper_share import EngineShare
from gateway.workers.leader import Leader
from gateway.metrics import Metrics
from gateway.workers.rundir import RunDir
from gateway.runtimes.http import Transport, make_session
from gateway.state import Gateway
from tests.conftest import RUNTIME_ID, make_config
from tests.server_procs import alive, wait_until
from tests.test_workers import fresh_post, gateway, scrape  # noqa: F401 - the fixture

ENGINE_GAUGES = ("gateway_backend_queue_depth", "gateway_backend_running_requests",
                 "gateway_backend_kv_cache_usage")


def engine_config(servers: dict, engine: str, extra: str = "") -> str:
    lines = [f"  {name}: {{kind: vllm, url: '{server.url('/v1')}', "
             f"models: {{m: {RUNTIME_ID}}}}}" for name, server in servers.items()]
    return "backends:\n" + "\n".join(lines) + f"\nengine: {{{engine}}}\n" + extra


def engine_series(samples: dict[tuple, float]) -> dict[tuple[str, str], list[float]]:
    """Each engine gauge's values by (gauge, backend): one value each when all is well."""
    out: dict[tuple[str, str], list[float]] = {}
    for (name, labels), value in samples.items():
        if name in ENGINE_GAUGES:
            out.setdefault((name, dict(labels)["backend"]), []).append(value)
    return out


def leader_of(served) -> int:
    return next(p for p in served.workers()
                if f"worker {p} runs the health checks and engine scrapes" in served.stderr())


async def one_engine(gateway, start_engine, engine: str, **load):
    """One fake vLLM with this load behind a gateway of two workers: (fake, served)."""
    fake, server = await start_engine(**load)
    served = await asyncio.to_thread(gateway, engine_config({"a": server}, engine), workers=2)
    return fake, served


async def test_each_runtime_is_scraped_once_per_interval_and_shown_once(gateway, start_engine):
    interval = 0.2
    fake, served = await one_engine(gateway, start_engine,
                                    f"interval_s: {interval}, stale_after_s: 1",
                                    running=3, waiting=2, kv=0.25)
    before, began = fake.scrapes["/metrics"], time.monotonic()
    await asyncio.sleep(3)   # a fixed window: the scrapes' rate over it is the check
    rounds = (time.monotonic() - began) / interval
    scrapes = fake.scrapes["/metrics"] - before
    # One scraper for the server: two would ask twice per interval.
    assert 0.6 * rounds <= scrapes <= 1.25 * rounds + 1, (scrapes, rounds)
    # Any worker's /metrics: each gauge once for the backend, the runtime's value (not
    # a sum over workers, not a follower's 0).
    want = {("gateway_backend_queue_depth", "a"): [2.0],
            ("gateway_backend_running_requests", "a"): [3.0],
            ("gateway_backend_kv_cache_usage", "a"): [0.25]}
    for _ in range(10):
        assert engine_series(await scrape(served.base)) == want
    fake.running = 5
    assert await until_series(served.base, lambda s: s.get(
        ("gateway_backend_running_requests", "a")) == [5.0])

    # The leader dies: another worker takes the lock and scrapes, still once per interval.
    leader = leader_of(served)
    os.kill(leader, signal.SIGKILL)
    assert await asyncio.to_thread(wait_until, lambda: not alive(leader), 3)
    fake.waiting = 7
    assert await until_series(served.base, lambda s: s.get(
        ("gateway_backend_queue_depth", "a")) == [7.0], within=10)
    before, began = fake.scrapes["/metrics"], time.monotonic()
    await asyncio.sleep(2)   # a fixed window, as above
    rounds = (time.monotonic() - began) / interval
    scrapes = fake.scrapes["/metrics"] - before
    assert 0.6 * rounds <= scrapes <= 1.25 * rounds + 1, (scrapes, rounds)
    assert served.stderr().count("runs the health checks and engine scrapes") >= 2


async def until_series(base: str, check, within: float = 5) -> bool:
    """Scrapes on new connections (either worker) until three in a row pass `check`."""
    deadline, passed = time.monotonic() + within, 0
    while time.monotonic() < deadline:
        passed = passed + 1 if check(engine_series(await scrape(base))) else 0
        if passed == 3:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_series_go_once_the_reading_is_stale(gateway, start_engine):
    stale_after = 1.0
    fake, served = await one_engine(gateway, start_engine,
                                    f"interval_s: 0.1, stale_after_s: {stale_after}",
                                    running=1, waiting=4, kv=0.5)
    assert await until_series(served.base, lambda s: len(s) == 3)
    fake.pages_fault = "500"
    stopped = time.monotonic()
    assert await until_series(served.base, lambda s: s == {}, within=stale_after + 4)
    gone_after = time.monotonic() - stopped
    # Not before the last reading is stale (it is at most one interval older than the
    # switch), and soon after; never a 0 in place of the reading.
    assert stale_after - 0.5 <= gone_after < stale_after + 2, gone_after
    samples = await scrape(served.base)
    failed = sum(v for (n, lab), v in samples.items()
                 if n == "gateway_engine_scrape_failures_total" and dict(lab)["reason"] == "status")
    assert failed >= 5
    fake.pages_fault = "ok"   # back: the series come back, with the runtime's values
    assert await until_series(served.base, lambda s: s.get(
        ("gateway_backend_queue_depth", "a")) == [4.0])


async def test_a_saturated_backend_gets_nothing_from_either_worker(gateway, start_engine):
    busy, s1 = await start_engine(waiting=20)
    idle, s2 = await start_engine(waiting=0)
    served = await asyncio.to_thread(
        gateway, engine_config({"busy": s1, "idle": s2},
                               "interval_s: 0.1, stale_after_s: 1, max_queue: 8",
                               "queue: {max_wait_s: 20}\n"),
        workers=2)
    assert await until_series(served.base, lambda s: s.get(
        ("gateway_backend_queue_depth", "busy")) == [20.0] and s.get(
        ("gateway_backend_queue_depth", "idle")) == [0.0])
    statuses = await asyncio.gather(*(fresh_post(served.base) for _ in range(40)))
    assert statuses == [200] * 40
    assert busy.answered == 0 and idle.answered == 40
    shares = served.per_worker("gateway_requests_total", backend="idle")
    assert len(shares) == 2 and min(shares.values()) >= 5, shares   # both workers routed

    # Both saturated: requests wait in each worker's queue, and go out in every worker
    # as soon as the one reading shows room.
    idle.waiting = 20
    assert await until_series(served.base, lambda s: s.get(
        ("gateway_backend_queue_depth", "idle")) == [20.0])
    waiting = [asyncio.create_task(fresh_post(served.base)) for _ in range(12)]
    await asyncio.sleep(1)   # a fixed wait, the absence is the check: none is answered
    assert not any(t.done() for t in waiting)
    busy.waiting = 0
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [200] * 12
    assert busy.answered == 12
    shares = served.per_worker("gateway_requests_total", backend="busy")
    assert len([n for n in shares.values() if n > 0]) == 2, shares


# -- the file between the leader and a follower, in one process -------------------------

def two_backends(b_url: str):
    return make_config(backend("a", "vllm", "http://127.0.0.1:9/v1", models={"m": RUNTIME_ID}),
                       backend("b", "vllm", b_url, models={"m": RUNTIME_ID}))


async def test_a_follower_takes_the_readings_of_the_backends_it_knows_as_they_are(tmp_path):
    run = RunDir(str(tmp_path))
    first, second = Leader(run), Leader(run)
    assert first.lead() and not second.lead()   # one lock, whatever asks
    lead = Gateway(two_backends("http://127.0.0.1:10/v1"), Transport(make_session()), Metrics())
    # b is another server in the follower's config (a reload not yet everywhere).
    follow = Gateway(two_backends("http://127.0.0.1:11/v1"), Transport(make_session()),
                     Metrics())
    try:
        at = time.monotonic()
        lead.states["a"].engine.record(EngineLoad(2, 30, 0.5), at, 3, 0)
        lead.states["a"].engine.fail("status")
        lead.states["b"].engine.record(EngineLoad(1, 0, None), at, 3, 0)
        EngineShare(run, first).publish(lead)
        share = EngineShare(run, second)
        follow.states["a"].in_flight = 4
        assert share.follow(follow)
        view = follow.states["a"].engine
        assert view.fresh(at) == EngineLoad(2, 30, 0.5) and view.at == at
        assert view.in_flight_then == 4 and view.failure == "status"
        assert follow.states["a"].saturated(at, follow.config.engine)
        assert follow.states["b"].engine.reading is None
        assert not share.follow(follow)             # unchanged: not read again
        assert view.fresh(at + 3) is None           # stale when the leader's would be
        for text in ("{not json", '{"backends": {"a": {"identity": ["vllm"]}}}',
                     '{"backends": [1]}'):
            (tmp_path / "engine.json").write_text(text)
            share.follow(follow)                    # no error, nothing taken
        assert view.at == at
        first.release()
        assert second.lead()                        # the next to ask leads
    finally:
        second.release()
        for gw in (lead, follow):
            await gw.transport.session.close()
