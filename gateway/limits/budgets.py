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

    def __init__(self, store: Any = None, clock: Callable[[], float] = time.time,
                 on_state: Callable[[bool], None] | None = None) -> None:
        """`on_state`: told whether the store works, at the first flush and at each change
        (with `state.redis`: `gateway_state_backend_up`, as the rate limits set it)."""
        self.store = store
        self.clock = clock
        self.on_state = on_state
        self._totals: dict[tuple[str, str], int] = {}    # (key, period id) -> the store's
        self._closed: dict[tuple[str, str], int] = {}    # not written, of periods now ended
        self._pending: dict[str, int] = {}               # key -> not written, this period
        self._writing: dict[tuple[str, str], int] = {}   # the batch a flush is writing now
        self._names: set[str] = set()
        self._task: asyncio.Task | None = None
        self._failing = False
        self._told = False   # on_state has heard from a flush
        self._periods: tuple[str, str] = ("", "")
        self._periods_until = 0.0   # when the cached day ends: one gmtime a day, not a request

    def watch(self, names: Iterable[str]) -> None:
        """The keys whose totals each flush reads back (a reload's key list)."""
        self._names = set(names)

    def periods(self) -> tuple[str, str]:
        """The current UTC day and month ids; a new day sets what is pending aside under
        the day that ended, so the next flush writes it there."""
        now = self.clock()
        if now >= self._periods_until or now < self._periods_until - 86400:
            self._close(self._periods)
            self._periods = period_ids(now)
            self._periods_until = now + seconds_left(now, "day")
        return self._periods

    def add(self, name: str, tokens: int) -> None:
        """One request's tokens: a dict update (the periods are checked once a day)."""
        if tokens <= 0:
            return
        if self.clock() >= self._periods_until:
            self.periods()
        pending = self._pending
        pending[name] = pending.get(name, 0) + tokens

    def used(self, name: str) -> tuple[int, int]:
        """Tokens `name` used this UTC day and this month."""
        day, month = self.periods()
        pending = self._pending.get(name, 0)
        return tuple(self._totals.get((name, p), 0) + self._closed.get((name, p), 0) +
                     self._writing.get((name, p), 0) + pending
                     for p in (day, month))   # type: ignore[return-value]

    def _close(self, periods: tuple[str, str]) -> None:
        if not periods[0]:
            return
        closed = self._closed
        for name, tokens in self._pending.items():
            for period in periods:
                closed[(name, period)] = closed.get((name, period), 0) + tokens
        self._pending = {}

    def _batch(self) -> dict[tuple[str, str], int]:
        """Everything not written yet, by (key, period id); taken out of the counts."""
        self._close(self.periods())
        batch, self._closed = self._closed, {}
        return batch

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
        batch = self._writing = self._batch()
        periods = self.periods()
        try:
            totals = await self.store.add_and_read(batch, self._names, periods)
        except Exception as exc:   # the store's own errors vary (sqlite3, redis, OSError)
            self._writing = {}
            for k, v in batch.items():   # kept for the next flush, not lost
                self._closed[k] = self._closed.get(k, 0) + v
            if not self._failing:
                server_logger.warning("budget counts: the state store failed (%s: %s); "
                                      "kept in memory until it works again",
                                      type(exc).__name__, exc)
                self._state(False)
            self._failing = True
            return
        if self._failing:
            server_logger.info("budget counts: the state store works again")
        if self._failing or not self._told:
            self._state(True)
        self._failing = False
        self._totals, self._writing = totals, {}

    def _state(self, works: bool) -> None:
        self._told = True
        if self.on_state is not None:
            self.on_state(works)

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
