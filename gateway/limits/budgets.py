"""Token budgets per key: prompt + completion tokens per UTC day and calendar month.

Every request's usage is counted here for every key (what `/gateway/key` and
`/admin/keys` report), and a key with a `budget` is refused once a period's count
reaches it: 429 `insufficient_quota`/`budget_exceeded` with Retry-After until the
period ends. Checked when a request is sent upstream, nothing reserved ahead: a
request already sent when the budget runs out is finished and counted.

Counts live in a store (limits/budget_store.py: `state.sqlite` or `state.redis`).
Writing is kept off the request path: a request adds its tokens to `pending` in
memory, and a background flush every FLUSH_S writes them in one batch and reads the
periods' totals back (the other workers' and replicas' counts come in that way). A
crash loses at most FLUSH_S of counts; the app's cleanup flushes the rest on SIGTERM.
Without a store the counts live in the process (no budget is allowed then).
"""

from __future__ import annotations

import asyncio
import calendar
import time
from typing import Any, Callable, Iterable

from ..config import ApiKey, Budget
from ..errors import BudgetExceeded
from ..log import server_logger

FLUSH_S = 0.5
PERIODS = ("day", "month")


def period_ids(now: float) -> tuple[str, str]:
    """The UTC day and month `now` falls in: ("2026-12-07", "2026-12")."""
    t = time.gmtime(now)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_year:04d}-{t.tm_mon:02d}"


def seconds_left(now: float, period: str) -> float:
    """Until the UTC day (or month) of `now` ends."""
    t = time.gmtime(now)
    if period == "day":
        return 86400 - (t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec) - (now % 1)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now


class Budgets:
    """Counts per key and period: the store's last totals plus what is not written yet."""

    def __init__(self, store: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._totals: dict[tuple[str, str], int] = {}    # (key, period id) -> the store's
        self._pending: dict[tuple[str, str], int] = {}   # (key, period id) -> not written
        self._names: set[str] = set()
        self._task: asyncio.Task | None = None
        self._failing = False

    def watch(self, names: Iterable[str]) -> None:
        """The keys whose totals each flush reads back (a reload's key list)."""
        self._names = set(names)

    def add(self, name: str, tokens: int) -> None:
        if tokens <= 0:
            return
        for period in period_ids(self.clock()):
            self._pending[(name, period)] = self._pending.get((name, period), 0) + tokens

    def used(self, name: str) -> tuple[int, int]:
        """Tokens `name` used this UTC day and this month."""
        day, month = period_ids(self.clock())
        return (self._totals.get((name, day), 0) + self._pending.get((name, day), 0),
                self._totals.get((name, month), 0) + self._pending.get((name, month), 0))

    def left(self, name: str, budget: Budget | None) -> tuple[int | None, int | None]:
        if budget is None:
            return None, None
        day, month = self.used(name)
        return (_left(budget.tokens_per_day, day), _left(budget.tokens_per_month, month))

    def refusal(self, name: str, budget: Budget) -> BudgetExceeded | None:
        day, month = self.left(name, budget)
        for left, period in ((month, "month"), (day, "day")):
            if left is not None and left <= 0:
                return BudgetExceeded(
                    f"This API key has used its token budget for the {period} (UTC); it "
                    f"is renewed when the {period} ends.",
                    retry_after=seconds_left(self.clock(), period))
        return None

    # -- the store ---------------------------------------------------------------

    async def start(self) -> None:
        if self.store is None:
            return
        await self.flush()
        self._task = asyncio.get_running_loop().create_task(self._flushing())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.store is not None:
            await self.flush()
            await self.store.close()

    async def flush(self) -> None:
        """Write what is pending in one batch, then take the store's totals."""
        pending, self._pending = self._pending, {}
        periods = period_ids(self.clock())
        try:
            totals = await self.store.add_and_read(pending, self._names, periods)
        except Exception as exc:   # the store's own errors vary (sqlite3, redis, OSError)
            for k, v in pending.items():   # kept for the next flush, not lost
                self._pending[k] = self._pending.get(k, 0) + v
            if not self._failing:
                server_logger.warning("budget counts: the state store failed (%s: %s); "
                                      "kept in memory until it works again",
                                      type(exc).__name__, exc)
            self._failing = True
            return
        if self._failing:
            server_logger.info("budget counts: the state store works again")
        self._failing = False
        self._totals = totals

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()


class KeyBudget:
    """One key's budget as the scheduler asks it (dispatch/scheduler.py `Ticket.refusal`)."""

    __slots__ = ("budgets", "name", "budget")

    def __init__(self, budgets: Budgets, key: ApiKey) -> None:
        self.budgets = budgets
        self.name = key.name
        self.budget = key.budget

    def refusal(self) -> BudgetExceeded | None:
        return self.budgets.refusal(self.name, self.budget)   # type: ignore[arg-type]


def _left(cap: int | None, used: int) -> int | None:
    return None if cap is None else max(0, cap - used)
