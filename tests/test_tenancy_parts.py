"""The pure parts of sharing the fleet: budget periods and their ends, the workers' shared
in-flight cells, request classes."""

from __future__ import annotations

import calendar

import pytest

from bench.procs import free_port
from gateway.config import ApiKey, Budget
from gateway.errors import BadRequest, BudgetExceeded
from gateway.limits.budgets import Budgets, period_ids, seconds_left
from gateway.limits.classes import header_class, tier_class
from gateway.limits import concurrency
from gateway.limits.concurrency import CELL, HEAD, SharedCounts


def at(*ymdhms: int) -> float:
    return float(calendar.timegm((*ymdhms, 0, 0, 0)[:6]))


def test_periods_are_the_utc_day_and_calendar_month():
    assert period_ids(at(2026, 12, 31, 23, 59, 30)) == ("2026-12-31", "2026-12")
    assert seconds_left(at(2026, 12, 31, 23, 59, 30), "day") == 30
    assert seconds_left(at(2026, 12, 31, 23, 59, 30), "month") == 30   # into the new year
    assert seconds_left(at(2026, 2, 27, 0, 0, 0), "month") == 2 * 86400
    assert seconds_left(at(2026, 12, 7, 12, 0, 0), "day") == 12 * 3600


def test_a_spent_budget_refuses_until_its_period_ends_and_a_new_day_starts_afresh():
    now = [at(2026, 12, 31, 23, 0, 0)]
    budgets = Budgets(clock=lambda: now[0])
    key = ApiKey("k", "s", budget=Budget(tokens_per_day=100, tokens_per_month=150))
    budgets.add("k", 100)
    refusal = budgets.refusal("k", key.budget)
    assert isinstance(refusal, BudgetExceeded) and refusal.retry_after == 3600
    assert budgets.left("k", key.budget) == (0, 50)
    now[0] = at(2027, 1, 1, 0, 0, 1)         # a new day and a new month
    assert budgets.refusal("k", key.budget) is None
    assert budgets.used("k") == (0, 0)
    budgets.add("k", 60)
    now[0] = at(2027, 1, 2, 9, 0, 0)
    budgets.add("k", 90)                     # day 90 of 100, month 150 of 150
    refusal = budgets.refusal("k", key.budget)
    assert refusal is not None and "month" in refusal.message
    assert refusal.retry_after == seconds_left(now[0], "month")
    body = refusal.to_dict()["error"]
    assert (body["type"], body["code"]) == ("insufficient_quota", "budget_exceeded")


def test_a_dead_workers_cells_are_taken_over(tmp_path):
    counts = SharedCounts(str(tmp_path / "c.bin"))
    counter = counts.counter("key:k")
    assert counter is not None
    # A worker that died holding three requests: its cell stays in the total...
    table, offset = counter._table, counter._offset
    dead = 2 ** 22 + 7
    while concurrency._alive(dead):
        dead += 1
    CELL.pack_into(table.map, offset + HEAD.size, dead, 3)
    assert counter.value() == 3
    # ...until a worker claims a cell: the dead one's, zeroed.
    counter.add(1)
    assert counter.value() == 1
    counter.add(-1)
    assert counter.value() == 0
    other = counts.counter("key:other")
    other.add(2)
    assert other.value() == 2 and counter.value() == 0
    counts.close()


def test_classes_from_the_header_and_service_tier():
    assert [header_class(v) for v in ("interactive", "Standard", " batch ")] == [0, 1, 2]
    with pytest.raises(BadRequest) as err:
        header_class("urgent")
    assert err.value.param == "X-Priority"
    assert [tier_class(v) for v in ("flex", "priority", "auto", "default", 3, None)] == [
        2, 0, None, None, None, None]


def test_the_readmes_worked_example_is_a_valid_config():
    from pathlib import Path

    from gateway.config import load_config_text
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Sharing the fleet", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    env = {name: f"sk-{name.lower()}" for name in
           ("CHAT_UI_KEY", "TEAM_A_KEY", "TEAM_B_KEY", "NIGHTLY_KEY")}
    cfg = load_config_text(text, env)
    keys = {k.name: k for k in cfg.auth_keys}
    assert keys["chat-ui"].priority == "interactive" and keys["chat-ui"].share == 3
    assert keys["team-a"].budget == Budget(tokens_per_day=5000000)
    assert cfg.backends["gpu-a"].engine_priority and cfg.queue.promote_after_s == 30


async def test_budgets_on_a_redis_that_is_down_say_so_in_the_state_gauge():
    """As the rate limits do: `gateway_state_backend_up` 0 while the store fails (the
    counts kept in memory), 1 once it works."""
    from gateway.config import Config, StateConfig
    from gateway.limits import make_tenants
    from gateway.metrics import Metrics

    metrics = Metrics()
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    tenants = make_tenants(Config(state=StateConfig(redis=nothing_there)), None, metrics)
    budgets = tenants.budgets
    budgets.watch(["k"])
    budgets.add("k", 7)
    await budgets.flush()
    assert metrics.state_backend_up._value.get() == 0
    assert budgets.used("k")[0] == 7   # kept, not lost
    await budgets.store.close()

    class Works:
        async def add_and_read(self, pending, names, periods):
            return {(k, p): n for (k, p), n in pending.items()}
    budgets.store = Works()
    await budgets.flush()
    assert metrics.state_backend_up._value.get() == 1
