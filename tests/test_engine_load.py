"""The load view, the blended load, least_latency and one scrape round, without the app."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from gateway.config import EngineConfig, backend
from gateway.dispatch import BackendState
from gateway.engine import EngineLoad
from gateway.health.scraper import scrape_round
from gateway.metrics import Metrics
from gateway.routing.least_latency import LeastLatency
from gateway.runtimes import BodyTooLarge, make_runtime
from gateway.runtimes.http import Transport, make_session
from gateway.state import Gateway
from tests.conftest import RUNTIME_ID, make_config, runtime_backend
from tests.fake_engines import FakeEngine

ENGINE = EngineConfig()


def state(kind: str = "vllm") -> BackendState:
    cfg = backend("b", kind, "http://127.0.0.1:9", models=["m"])
    return BackendState(cfg, make_runtime(cfg, None))


def reading(running=None, waiting=None, kv=None) -> EngineLoad:
    return EngineLoad(running=running, waiting=waiting, kv_usage=kv)


# -- BackendState.load and saturated ---------------------------------------------------

def test_without_a_reading_load_is_the_gateways_own_count():
    b = state()
    b.in_flight = 3
    assert b.load == 3 and not b.saturated(time.monotonic(), ENGINE)


def test_load_is_the_runtimes_count_moved_by_what_the_gateway_did_since():
    b = state()
    b.in_flight = 2
    b.engine.record(reading(running=7, waiting=3), time.monotonic(), 3.0, b.in_flight)
    assert b.load == 10          # the runtime's 10 include our 2: not 12
    b.in_flight = 5              # three more sent since the scrape
    assert b.load == 13
    b.in_flight = 0              # ours all finished: the other clients' 8 remain
    assert b.load == 8


def test_load_never_falls_below_the_gateways_own_count():
    b = state()
    b.in_flight = 4               # sent, but not yet admitted when the runtime answered
    b.engine.record(reading(running=0, waiting=0), time.monotonic(), 3.0, b.in_flight)
    assert b.load == 4


def test_a_stale_reading_counts_for_nothing():
    b = state()
    b.in_flight = 1
    old = time.monotonic() - 10
    b.engine.record(reading(running=50, waiting=50, kv=1.0), old, 3.0, 0)
    assert b.engine.fresh(time.monotonic()) is None
    assert b.load == 1 and not b.saturated(time.monotonic(), ENGINE)
    assert b.engine.age(time.monotonic()) >= 10


@pytest.mark.parametrize("load, saturated", [
    (reading(waiting=8), False), (reading(waiting=9), True), (reading(kv=0.9), False),
    (reading(kv=0.91), True), (reading(running=500), False), (reading(), False)])
def test_saturated_past_max_queue_or_max_kv_usage(load, saturated):
    b = state()
    b.engine.record(load, time.monotonic(), 3.0, 0)
    assert b.saturated(time.monotonic(), ENGINE) is saturated


def test_a_reading_with_no_counts_leaves_load_to_the_gateway():
    b = state("ollama")
    b.in_flight = 2
    b.engine.record(EngineLoad(None, None, None, loaded=True), time.monotonic(), 3.0, 0)
    assert b.engine.busy is None and b.load == 2


def test_ttft_average_moves_a_fifth_of_the_way():
    b = state()
    b.observe_ttft(1.0)
    assert b.ewma_ttft == 1.0
    b.observe_ttft(2.0)
    assert b.ewma_ttft == pytest.approx(1.2)


def test_ttft_is_averaged_per_unit_of_the_load_it_was_sent_into():
    """A first token that waited behind three others says the queue was long, which
    least_latency counts through the load already: the average takes a quarter of it."""
    b = state()
    b.observe_ttft(2.0, busy=4)
    assert b.ewma_ttft == pytest.approx(0.5)
    b.observe_ttft(0.5, busy=1)
    assert b.ewma_ttft == pytest.approx(0.5)


# -- least_latency -------------------------------------------------------------------

@dataclass(eq=False)
class Stub:
    name: str
    service_time: float | None = None
    load: int = 0
    weight: float = 1.0
    batch: int = 0
    in_flight: int = 0
    ewma_ttft: float | None = None
    signal: str = "fresh"


def test_least_latency_takes_the_lower_predicted_time_without_a_known_batch():
    """Batch unknown (1): Peak-EWMA's cost, service * (load + 1)."""
    s = LeastLatency(random.Random(1))
    fast, slow = Stub("fast", 0.1, load=3), Stub("slow", 0.5, load=0)
    assert s.pick([fast, slow]) is fast          # 0.1 * 4 < 0.5 * 1
    fast.load = 5
    assert s.pick([fast, slow]) is slow          # 0.1 * 6 > 0.5 * 1


def test_least_latency_counts_a_queue_in_batches():
    """A fast runtime of 4 slots with 8 others on it finishes a new request in 9/4 of its
    service time: still before an idle one 3x slower; with 12 others it no longer does."""
    s = LeastLatency(random.Random(1))
    fast, slow = Stub("fast", 0.2, load=8, batch=4), Stub("slow", 0.6, load=0, batch=4)
    assert s.pick([fast, slow]) is fast          # 0.2 * 9/4 = 0.45 < 0.6
    assert s.last == (("fast", pytest.approx(0.45)), ("slow", pytest.approx(0.6)))
    fast.load = 12
    assert s.pick([fast, slow]) is slow          # 0.2 * 13/4 = 0.65 > 0.6
    slow.load = 3
    assert s.pick([fast, slow]) is slow          # below its batch: no wait, 0.6
    slow.load = 4
    assert s.pick([fast, slow]) is fast          # 0.6 * 5/4 = 0.75 > 0.65


def test_least_latency_weights_divide_the_cost():
    s = LeastLatency(random.Random(1))
    big, small = Stub("big", 0.2, load=2, weight=4), Stub("small", 0.2, load=0)
    assert s.pick([big, small]) is big           # 0.2 * 3 / 4 < 0.2 * 1 / 1


def test_an_unmeasured_backend_counts_as_fast_as_its_rival_and_loses_on_load():
    s = LeastLatency(random.Random(1))
    new, known = Stub("new", None, load=2), Stub("known", 0.3, load=0)
    assert s.pick([new, known]) is known
    new.load = 0
    assert Counter(s.pick([new, known]).name for _ in range(400)).keys() == {"new", "known"}


def test_power_of_two_choices_never_picks_the_worst_of_three():
    s = LeastLatency(random.Random(7))
    pool = [Stub("best", 0.1), Stub("mid", 0.2), Stub("worst", 0.3)]
    got = Counter(s.pick(pool).name for _ in range(900))
    assert "worst" not in got
    assert 500 < got["best"] < 700            # it wins both pairs it is in: 2/3


def test_a_single_candidate_is_returned_without_a_draw():
    only = Stub("only")
    assert LeastLatency(random.Random(1)).pick([only]) is only


def test_the_batch_is_the_most_the_runtime_reported_running():
    b = state()
    now = time.monotonic()
    for running, waiting in ((2, 0), (4, 3), (1, 0)):
        b.engine.record(EngineLoad(running, waiting, 0.1), now, 3.0, 0)
    assert b.batch == 4


def test_service_time_leaves_out_the_queue_it_was_sent_into():
    """Sent behind 7 others on a batch of 4: two rounds, so half the time was the wait."""
    b = state()
    b.engine.record(EngineLoad(4, 4, 0.5), time.monotonic(), 3.0, 0)
    b.observe_service(1.0, busy=8)
    assert b.own_service == b.service_time == pytest.approx(0.5)
    b.observe_service(1.0, busy=3)               # below the batch: no wait at all
    assert b.service_time == pytest.approx(0.6)


# -- one scrape round and the runtime's scrape ----------------------------------------------

async def test_a_round_records_readings_and_publishes_gauges(serve_fake):
    fake = FakeEngine(kind="vllm", models=(RUNTIME_ID,), running=4, waiting=9, kv=0.5)
    server = await serve_fake(fake)
    cfg = make_config(runtime_backend("v", server, models={"llama": RUNTIME_ID}))
    gateway = Gateway(cfg, Transport(make_session()), Metrics())
    try:
        saturated = await scrape_round(gateway)       # what a leader process would run
        assert saturated == {"v"}
        view = gateway.states["v"].engine
        assert view.fresh(time.monotonic()) == EngineLoad(4, 9, 0.5, loaded=True)
        text = gateway.metrics.expose().decode()
        assert 'gateway_backend_queue_depth{backend="v"} 9.0' in text
        assert 'gateway_backend_kv_cache_usage{backend="v"} 0.5' in text
        fake.waiting = 0
        assert await scrape_round(gateway, saturated) == frozenset()
    finally:
        await gateway.transport.session.close()


async def test_a_scrape_answer_past_the_cap_is_never_read_whole(serve_fake):
    fake = FakeEngine(kind="vllm", models=(RUNTIME_ID,))
    server = await serve_fake(fake)
    cfg = runtime_backend("v", server)
    transport = Transport(make_session())
    try:
        runtime = make_runtime(cfg, transport)
        status, body = await runtime.scrape("/metrics", "id", 5.0)
        assert status == 200 and b"vllm:num_requests_waiting" in body
        with pytest.raises(BodyTooLarge):
            await runtime.scrape("/metrics", "id", 5.0, max_bytes=len(body) - 1)
    finally:
        await transport.session.close()


class _OddRuntime:
    """A runtime whose scrape fails in a way nobody foresaw."""

    async def scrape(self, path, request_id, timeout_s):
        raise ValueError("odd")


async def test_one_backends_odd_failure_does_not_stop_the_round(serve_fake):
    fake = FakeEngine(kind="vllm", models=(RUNTIME_ID,), waiting=2)
    server = await serve_fake(fake)
    cfg = make_config(runtime_backend("ok", server, models={"llama": RUNTIME_ID}),
                      runtime_backend("odd", server, models={"llama": RUNTIME_ID}))
    gateway = Gateway(cfg, Transport(make_session()), Metrics())
    gateway.states["odd"].runtime = _OddRuntime()
    try:
        await scrape_round(gateway)
        now = time.monotonic()
        assert gateway.states["ok"].engine.fresh(now).waiting == 2
        assert gateway.states["odd"].engine.fresh(now) is None
        assert gateway.states["odd"].engine.failure == "error"
        text = gateway.metrics.expose().decode()
        assert ('gateway_engine_scrape_failures_total{backend="odd",reason="error"} 1.0'
                in text)
    finally:
        await gateway.transport.session.close()


# -- the runtime's own service time, and a queue moved by the gateway's sends ------------

def test_the_runtimes_histograms_give_the_time_in_its_batch():
    """vLLM's e2e latency less its queue time: the mean since it started on a first
    reading, then each interval's mean, averaged."""
    from bench.fake_runtime.formats import vllm_load
    from gateway.engine.signals import parse
    b, now = state(), time.monotonic()
    first = parse("vllm", "/metrics", 200, vllm_load("m", 4, 2, 0.5, 10, 6.0, 2.0).encode())
    assert (first.finished, first.latency_s, first.queued_s) == (10, 6.0, 2.0)
    b.engine.record(first, now, 3.0, 0)
    assert b.service_time == pytest.approx(0.4)          # (6 - 2) / 10
    b.observe_service(9.0)                               # the gateway's own: not used now
    assert b.service_time == pytest.approx(0.4)
    later = parse("vllm", "/metrics", 200, vllm_load("m", 4, 0, 0.5, 20, 14.0, 3.0).encode())
    b.engine.record(later, now + 1, 3.0, 0)
    # The 10 that ended took 8 s, 1 s of it waiting: 0.7 each; averaged in at 0.3.
    assert b.service_time == pytest.approx(0.4 + 0.3 * (0.7 - 0.4))
    idle = parse("vllm", "/metrics", 200, vllm_load("m", 0, 0, 0.0, 20, 14.0, 3.0).encode())
    b.engine.record(idle, now + 2, 3.0, 0)                # none ended: nothing new
    assert b.service_time == pytest.approx(0.49)
    restarted = parse("vllm", "/metrics", 200, vllm_load("m", 0, 0, 0.0, 2, 1.0, 0.0).encode())
    b.engine.record(restarted, now + 3, 3.0, 0)           # counters went back: start over
    assert b.service_time == pytest.approx(0.5)


def test_without_the_histograms_the_gateways_own_measure_counts():
    b = state()
    b.engine.record(reading(4, 0, 0.1), time.monotonic(), 3.0, 0)
    assert b.service_time is None
    b.observe_service(0.3)
    assert b.service_time == pytest.approx(0.3)


def test_a_queue_over_the_bound_drains_as_the_gateways_own_requests_end():
    """Read with 10 waiting (8 of them the gateway's): saturated until two of the
    gateway's requests ended, without waiting for the next scrape."""
    b, now = state(), time.monotonic()
    b.in_flight = 12
    b.engine.record(reading(4, 10, 0.1), now, 3.0, 12)
    assert b.saturated(now, ENGINE)                       # 10 > max_queue 8
    b.in_flight = 11
    assert b.saturated(now, ENGINE)                       # 9 waiting
    b.in_flight = 10
    assert not b.saturated(now, ENGINE)                   # 8: room for one
    b.in_flight = 13
    assert b.saturated(now, ENGINE)                       # sent on a full batch: 11 wait


def test_sends_fill_the_batch_before_they_queue():
    b, now = state(), time.monotonic()
    b.engine.record(reading(4, 0, 0.1), now, 3.0, 0)      # batch 4 seen once, full
    b.engine.record(reading(0, 8, 0.1), now, 3.0, 0)      # a queue of 8 behind an empty one
    b.in_flight = 4
    assert not b.saturated(now, ENGINE)                   # the 4 sent took the free places
    b.in_flight = 5
    assert b.saturated(now, ENGINE)                       # the fifth waits: 9 > 8
    unknown = state()
    unknown.engine.record(reading(0, 8, 0.1), now, 3.0, 0)
    unknown.in_flight = 20                                # batch never seen: the reading stands
    assert not unknown.saturated(now, ENGINE)


def test_predictions_too_close_to_call_go_to_the_less_loaded():
    """Identical runtimes below their batch: noise in the measured speed decides nothing,
    the count does."""
    s = LeastLatency(random.Random(1))
    a, b = Stub("a", 0.200, load=6, batch=8), Stub("b", 0.205, load=1, batch=8)
    assert s.pick([a, b]) is b
    a.load, b.load = 1, 6
    assert s.pick([a, b]) is a
    a.service_time = 0.15                      # 25% faster: a real difference
    a.load, b.load = 6, 1
    assert s.pick([a, b]) is a


def test_llama_cpps_slot_list_gives_the_batch_at_once():
    from gateway.engine.signals import combine, parse
    from tests import engine_samples
    b = state("llamacpp")
    slots = parse("llamacpp", "/slots", 200,
                  engine_samples.llamacpp_slots(busy=1, total=6).encode())
    metrics = parse("llamacpp", "/metrics", 200,
                    engine_samples.llamacpp_metrics(processing=1, deferred=0).encode())
    b.engine.record(combine([metrics, slots]), time.monotonic(), 3.0, 0)
    assert b.batch == 6                       # -np 6, though only one is busy
