"""Members of discover backends, large pools' sampled picks, cold walks: no I/O."""

from __future__ import annotations

import time
from collections import Counter
from types import MappingProxyType

import pytest

from gateway.config import Config, DiscoverConfig, EngineConfig, RouteConfig, backend
from gateway.dispatch.cold import ColdPools, prefer_loaded
from gateway.dispatch.members import Members, member_config
from gateway.dispatch.sample import sampled_pick
from gateway.engine.signals import EngineLoad
from gateway.metrics import Metrics
from gateway.routing import RouteRequest
from gateway.state import Gateway

ENGINE = EngineConfig()


def pool_backend(**kw):
    return backend("pool", "vllm", "http://user:pw@pool.test:8000/v1", models=["llama"],
                   discover=DiscoverConfig(dns=True), **kw)


def test_a_member_is_the_backend_at_one_address():
    v4 = member_config(pool_backend(weight=3, max_concurrency=4), "10.0.0.5")
    assert (v4.name, v4.url, v4.label, v4.member_of) == (
        "pool/10.0.0.5:8000", "http://user:pw@10.0.0.5:8000", "pool", "pool")
    assert (v4.weight, v4.max_concurrency, v4.discover) == (3, 4, None)
    assert v4.request_headers["Host"] == "pool.test:8000"   # as before the name was resolved
    v6 = member_config(backend("p", "vllm", "https://h.test/v1",
                               discover=DiscoverConfig(dns=True)), "fd00::5")
    assert (v6.name, v6.url) == ("p/[fd00::5]:443", "https://[fd00::5]:443")


def test_members_expand_in_the_backends_place_and_changes_are_told():
    members = Members()
    backends = {"a": backend("a", "echo", models=["x"]), "pool": pool_backend(),
                "b": backend("b", "echo", models=["x"])}
    assert [b.name for b in members.expand(backends)] == ["a", "b"]
    assert members.set("pool", ["10.0.0.9", "10.0.0.10", "fd00::1", "10.0.0.9"])
    assert not members.set("pool", ["fd00::1", "10.0.0.10", "10.0.0.9"])
    assert [b.name for b in members.expand(backends)] == [
        "a", "pool/10.0.0.9:8000", "pool/10.0.0.10:8000", "pool/[fd00::1]:8000", "b"]
    members.forget(["other"])
    assert members.addresses == {}


def gateway_of(members: int, strategy: str = "weighted", **kw) -> Gateway:
    config = Config(backends=MappingProxyType({"pool": pool_backend(**kw)}),
                    routes=MappingProxyType({"llama": RouteConfig(strategy=strategy)}))
    gateway = Gateway(config, None, Metrics())
    gateway.members.set("pool", [f"10.0.0.{i + 1}" for i in range(members)])
    gateway.apply(config)
    return gateway


def test_members_are_not_trusted_before_a_check_and_a_pool_without_one_is_cold():
    gateway = gateway_of(3)
    stages = gateway.table.stages(gateway.table.pool("llama"))
    assert [s.healthy for s in gateway.states.values()] == [False] * 3
    assert ColdPools.is_cold(stages, "chat", None)
    next(iter(gateway.states.values())).healthy = True
    assert not ColdPools.is_cold(stages, "chat", None)
    # No member at all: the model still has its (cold) pool, for requests to wait on.
    empty = gateway_of(0)
    pool = empty.table.pool("llama")
    assert pool is not None and pool.backends == () and pool.sources[0].name == "pool"
    assert ColdPools.is_cold(empty.table.stages(pool), "chat", None)
    assert not ColdPools.is_cold(empty.table.stages(pool), "images", None)   # 501, not a wait


def test_metrics_count_members_under_the_configured_name():
    gateway = gateway_of(3)
    for i, state in enumerate(gateway.states.values()):
        state.healthy, state.in_flight = i > 0, i
    gateway.publish_in_flight()
    gateway.publish_backend_up()
    text = gateway.metrics.expose().decode()
    assert 'gateway_in_flight_requests{backend="pool"} 3.0' in text
    assert 'gateway_backend_up{backend="pool"} 1.0' in text
    assert "10.0.0" not in text


def sampled(strategy: str, members: int = 50, **kw):
    gateway = gateway_of(members, strategy, **kw)
    for state in gateway.states.values():
        state.healthy = True
    gateway.rebuild()
    stage = gateway.table.stages(gateway.table.pool("llama"))[0]
    capable = stage.capable("chat")
    return stage, capable, stage.sampler(capable)


def test_weighted_goes_round_the_members_in_turn():
    stage, capable, sampler = sampled("weighted")
    now = time.monotonic()

    def pick():
        return sampled_pick(sampler, stage.pool.strategy, set(), RouteRequest(), ENGINE, now)

    assert [pick() for _ in range(100)] == [*capable, *capable]
    capable[3].healthy = False   # skipped: the next one takes its turn, once
    assert [pick() for _ in range(6)] == [capable[0], capable[1], capable[2], capable[4],
                                          capable[5], capable[6]]


def test_weighted_draws_in_proportion_to_weight_when_members_weigh_differently():
    gateway = gateway_of(20, "weighted")
    heavy = backend("heavy", "vllm", "http://127.0.0.9:8000", models=["llama"], weight=20)
    config = Config(backends=MappingProxyType({**gateway.config.backends, "heavy": heavy}),
                    routes=gateway.config.routes)
    gateway.apply(config)
    for state in gateway.states.values():
        state.healthy = True
    stage = gateway.table.stages(gateway.table.pool("llama"))[0]
    sampler = stage.sampler(stage.capable("chat"))
    assert not sampler.uniform
    now = time.monotonic()
    counts = Counter(sampled_pick(sampler, stage.pool.strategy, set(), RouteRequest(),
                                  ENGINE, now).name for _ in range(20_000))
    assert len(counts) == 21
    assert 0.4 < counts["heavy"] / 20_000 < 0.6   # weight 20 of 40


def test_a_pool_of_configured_backends_alone_is_never_sampled():
    config = Config(backends=MappingProxyType({
        n: backend(n, "vllm", f"http://127.0.0.{i + 2}:8000", models=["llama"])
        for i, n in enumerate("abcdefgh")}))
    gateway = Gateway(config, None, Metrics())
    stage = gateway.table.stages(gateway.table.pool("llama"))[0]
    assert not stage.sampler(stage.capable("chat")).applies


def test_least_busy_sampling_takes_the_less_loaded_of_two():
    stage, capable, sampler = sampled("least_busy")
    for i, state in enumerate(capable):
        state.in_flight = i
    now = time.monotonic()
    picks = [sampled_pick(sampler, stage.pool.strategy, set(), RouteRequest(), ENGINE, now)
             for _ in range(5000)]
    # The power of two choices: the busiest member is never the lesser of a pair.
    assert capable[-1] not in picks
    assert sum(p.in_flight for p in picks) / len(picks) < 20


def test_sampling_skips_what_is_not_free_and_gives_up_when_nothing_looked_at_is():
    stage, capable, sampler = sampled("weighted", members=6, max_concurrency=1)
    for state in capable[:5]:
        state.in_flight = 1   # at its cap
    now = time.monotonic()
    results = {sampled_pick(sampler, stage.pool.strategy, set(), RouteRequest(), ENGINE, now)
               for _ in range(300)}
    assert results == {capable[5], None}   # None: the full pick then finds it


def test_discovery_builds_the_affinity_rings_and_tables_share_them():
    from gateway.dispatch.sample import warm_rings
    gateway = gateway_of(50, "prefix_affinity")
    for state in gateway.states.values():
        state.healthy = True
    warm_rings(gateway.table)
    stage = gateway.table.stages(gateway.table.pool("llama"))[0]
    ring = stage.sampler(stage.capable("chat"))._ring
    assert ring is not None and ring.size == 50
    gateway.rebuild()   # a new table (models changed elsewhere): the same members' ring
    stage = gateway.table.stages(gateway.table.pool("llama"))[0]
    assert stage.sampler(stage.capable("chat")).prepare() is ring


@pytest.mark.parametrize("strategy", ["prefix_affinity", "session_affinity"])
def test_affinity_sampling_sticks_to_a_key_and_spills_to_one_other(strategy):
    stage, capable, sampler = sampled(strategy)
    route = (RouteRequest(prefix=b"conversation-1") if strategy == "prefix_affinity"
             else RouteRequest(session="user-1"))
    now = time.monotonic()

    def pick():
        return sampled_pick(sampler, stage.pool.strategy, set(), route, ENGINE, now)

    home = pick()
    assert {pick() for _ in range(50)} == {home}
    home.in_flight = 10   # past its bounded share of the pair: the spill goes to one other
    spill = pick()
    assert spill is not home and {pick() for _ in range(50)} == {spill}
    keys = {sampled_pick(sampler, stage.pool.strategy, set(),
                         RouteRequest(prefix=b"k%d" % i, session=f"s{i}"), ENGINE, now)
            for i in range(400)}
    assert len(keys) > 40   # the keys spread over the members


def test_ollama_prefers_a_backend_with_the_model_loaded():
    config = Config(backends=MappingProxyType({
        n: backend(n, "ollama", f"http://127.0.0.{i + 2}:11434", models={"llama": "llama3:8b"})
        for i, n in enumerate(("a", "b", "c"))}))
    gateway = Gateway(config, None, Metrics())
    a, b, c = gateway.states.values()
    now = time.monotonic()
    a.engine.record(EngineLoad(None, None, None, loaded=False, loaded_models=frozenset()),
                    now, 5, 0)
    b.engine.record(EngineLoad(None, None, None, loaded=True,
                               loaded_models=frozenset({"llama3:8b"})), now, 5, 0)
    assert prefer_loaded([a, b, c], "llama", now) == [b, c]   # c says nothing: not left out
    assert prefer_loaded([a], "llama", now) == [a]             # none better: it loads
    assert prefer_loaded([a, b], "llama", now + 10) == [a, b]  # stale readings count for nothing


def test_a_members_traces_name_its_own_address():
    from gateway.tracing.spans import host_port
    member = member_config(pool_backend(), "10.0.0.5")
    assert host_port(member.url) == ("10.0.0.5", 8000)
    v6 = member_config(pool_backend(), "fd00::5")
    assert host_port(v6.url) == ("fd00::5", 8000)


def test_the_pick_benchmark_runs_every_strategy(capsys):
    """bench/pick.py's figures are read off its output (not asserted here: speed is the
    benchmark's, not a unit test's); this keeps it working."""
    from bench.pick import main
    assert main(["--picks", "300", "--repeat", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["weighted", "least_busy", "prefix_affinity",
                                            "session_affinity", "least_latency"]


def test_followers_take_the_leaders_addresses_only_for_the_backend_they_know(tmp_path):
    import dataclasses
    from gateway.discovery.share import MembersShare
    from gateway.workers.leader import Leader
    from gateway.workers.rundir import RunDir
    run = RunDir(str(tmp_path))
    leader, follower = MembersShare(run, Leader(run)), MembersShare(run, Leader(run))
    pool = pool_backend()
    leader.publish([pool], {"pool": ("10.0.0.1", "10.0.0.2")})
    assert follower.follow([pool]) == {"pool": ["10.0.0.1", "10.0.0.2"]}
    assert follower.follow([pool]) == {}   # nothing new since
    moved = dataclasses.replace(pool, url="http://other.test:8000")   # an older/newer config
    leader.publish([pool], {"pool": ("10.0.0.3",)})
    assert follower.follow([moved]) == {}


def test_the_wake_mark_is_taken_once_until_the_backend_is_warm(tmp_path):
    from gateway.discovery.wake import STALE_MARK_S, FileMarks, MemoryMarks
    from gateway.workers.rundir import RunDir
    for one, other in ((MemoryMarks(),) * 2, (FileMarks(RunDir(str(tmp_path))),
                                             FileMarks(RunDir(str(tmp_path))))):
        assert one.claim("pool", 0.0)
        assert not other.claim("pool", 1.0) and not one.claim("pool", 2.0)
        other.clear("pool")
        assert other.claim("pool", 3.0)
    marks = MemoryMarks()
    assert marks.claim("pool", 0.0) and marks.claim("pool", STALE_MARK_S + 1)


def test_sampling_never_picks_a_member_put_to_sleep():
    stage, capable, sampler = sampled("least_busy", members=8)
    now = time.monotonic()
    for state in capable[:4]:
        state.engine.record(EngineLoad(0, 0, 0.1, loaded=False), now, 5, 0)   # asleep
    picks = {sampled_pick(sampler, stage.pool.strategy, set(), RouteRequest(), ENGINE, now)
             for _ in range(500)}
    assert picks - {None} == set(capable[4:])
