"""The waiting room: who goes next when a pool or a key has no room.

A request that cannot be sent now waits: every backend of its pool is at
`max_concurrency` or saturated (`engine.max_queue`, `engine.max_kv_usage`), or its
key is at its own `max_concurrency`. Each time capacity may have changed (a
backend or key released, an engine reading showed room, a backend came back), the
scheduler walks its waiters in order and lets through every one that can go now:

1. the higher class first (interactive, standard, batch; limits/classes.py);
2. within a class, the key served least for its share: each key's `served` is its
   tokens (prompt + completion) divided by its `share`, a virtual-token counter
   (VTC, Sheng et al., "Fairness in Serving Large Language Models", OSDI '24).
   A request is charged its key's usual tokens when it is let through and corrected
   by its real usage when it ends. A key that starts waiting in a class is lifted
   to the least `served` of the keys already waiting there: no saved-up credit;
3. within a key, first come first served.

A waiter moves up one class per `queue.promote_after_s` waited, and waits at most
`queue.max_wait_s`: then 429 when its key is at its `max_concurrency`, else 503.

Walking: the best waiter is asked whether it can go (its key's room, its budget,
then the dispatcher's pick of a backend). A pool found full blocks the rest of
that pool's waiters for this walk, a key without room the rest of its own, so one
walk costs one pass over the waiters. A waiter let through gets its backend with
one request already counted on it (`in_flight`), so a newcomer cannot take that
room before the waiter runs; the dispatcher hands it back just before it sends.

Each request's key and class travel in its `Ticket` (tickets.py). The fast path does
not come here: a request for a pool nobody waits for, whose key has room, is sent at
once (`may_skip`: two dict lookups, no waiter made, no waiter looked at).

What waiters wait for is "capacity may have changed" (`notify`), not a release only:
whatever makes a pool usable again calls `notify`, and a waiter's pick answers FULL
(keep waiting), a backend (go), or None (nothing left to wait for: give up). A pool
that waits for a backend to exist at all (a cold pool) is a pick that answers FULL
while none is available, and a `notify` when one becomes so.

Under `--workers N` each worker orders its own waiters; the counts that say whether
there is room are the server's (limits/concurrency.py), and room another worker gave
back is looked for every 20 ms while anything waits (app.py).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from typing import Any, Callable

from ..errors import GatewayError, NoHealthyBackend, TooManyInFlight
from ..limits.tickets import CLASSES, KeyState, Ticket

class Waiter:
    __slots__ = ("ticket", "cls", "seq", "since", "promote_s", "pool", "model", "pick",
                 "future", "result")

    def __init__(self, ticket: Ticket, seq: int, since: float, promote_s: float, pool: Any,
                 model: str, pick: Callable[[], Any]) -> None:
        self.ticket = ticket
        self.cls = ticket.cls
        self.seq = seq
        self.since = since
        self.promote_s = promote_s
        self.pool = pool               # what blocks with it when its pool is full
        self.model = model
        self.pick = pick               # the dispatcher's pick: a backend, FULL or None
        self.future: asyncio.Future | None = None
        self.result: Any = None

    def __lt__(self, other: Waiter) -> bool:   # bisect keeps a key's waiters by arrival
        return self.seq < other.seq


def _due_class(waiter: Waiter, now: float) -> int:
    """A waiter's class once promoted for the time it has waited."""
    return max(0, waiter.ticket.cls - int((now - waiter.since) / waiter.promote_s))


FULL: Any = object()        # what a waiter's pick returns when its pool has no room
_WAITING: Any = object()    # a waiter's result before the walk let it through


class Scheduler:
    def __init__(self, metrics: Any = None) -> None:
        self.metrics = metrics
        self.waiting = 0
        self._by_pool: dict[str, int] = {}          # model -> waiters (the fast path's test)
        self._classes: list[dict[KeyState, list[Waiter]]] = [{} for _ in range(CLASSES)]
        self._seq = 0
        self._walking = False
        self._next_promotion = math.inf   # the soonest a waiter moves up a class
        self._settling: list[asyncio.Future] = []   # cold pools' waiters (`settle`)

    # -- the fast path -----------------------------------------------------------

    def may_skip(self, ticket: Ticket | None, model: str) -> bool:
        """Whether a request may be sent without queueing: nobody waits for its pool
        and its key has room (or it holds a slot already: a retry)."""
        if self.waiting and model in self._by_pool:
            return False
        return ticket is None or ticket.holding or ticket.key.has_room()

    # -- waiting -----------------------------------------------------------------

    async def wait(self, ticket: Ticket, model: str, pool: Any, pick: Callable[[], Any],
                   timeout: float, max_size: int, promote_s: float,
                   undo: Callable[[Any], None]) -> Any:
        """What `pick` gave once it was this request's turn: a backend (already counted
        on it), or None when nothing is left to wait for. Raises when the wait is over.
        `undo`: gives back a backend let through to a request that left before it ran."""
        if self.waiting >= max_size or timeout <= 0:
            raise self._refusal(ticket, "the queue is full" if timeout > 0 else
                                "no time is left to wait")
        self._seq += 1
        waiter = Waiter(ticket, self._seq, time.monotonic(), promote_s, pool, model, pick)
        waiter.result = _WAITING
        self._add(waiter)
        self._count(waiter, 1)
        try:
            self._walk()
            if waiter.result is _WAITING:
                waiter.future = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(timeout):
                        await waiter.future
                except TimeoutError:
                    pass
        except BaseException:
            if waiter.result is not _WAITING and waiter.result is not None and \
                    not isinstance(waiter.result, GatewayError):
                undo(waiter.result)
            raise
        finally:
            if waiter.result is _WAITING:
                self._remove(waiter)
            self._count(waiter, -1)
        result = waiter.result
        if result is _WAITING:
            raise self._refusal(ticket, "the wait reached queue.max_wait_s")
        if isinstance(result, GatewayError):
            raise result
        return result

    def notify(self) -> None:
        """Capacity may have changed: let through whoever can go now, in order."""
        if self._settling:
            settling, self._settling = self._settling, []
            for future in settling:
                if not future.done():
                    future.set_result(None)
        if self.waiting and not self._walking:
            self._walk()

    async def settle(self, timeout: float) -> None:
        """Until the next `notify` (or `timeout`): a cold pool's request waits for a backend
        to come up (dispatch/cold.py). It counts in the room (`waiting`, so
        `queue.max_size` bounds cold and full pools together) but takes no turn: once its
        pool is warm it walks, and queues here by class and share if the pool is full."""
        future = asyncio.get_running_loop().create_future()
        self._settling.append(future)
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1
            if not future.done():
                future.cancel()

    def queued(self, key: KeyState) -> int:
        return sum(len(cls.get(key, ())) for cls in self._classes)

    def rows(self) -> list[tuple[str, int, int, float]]:
        """The room as the console shows it, asked when a page refreshes (never per
        request; read only): `(model, class, waiting, oldest wait in seconds)` for each
        model and class someone waits in, by model then class. The class is the one a
        waiter is in now, the promotions its wait has earned counted (the metrics'
        `priority` is the class it came with). Cold pools' waiters (`settle`) take no
        turn and are not here: `waiting` less these rows' sum. One pass over the waiters."""
        now = time.monotonic()
        found: dict[tuple[str, int], list] = {}
        for by_key in self._classes:
            for waiters in by_key.values():
                for w in waiters:
                    at = (w.model, _due_class(w, now))
                    row = found.get(at)
                    if row is None:
                        found[at] = [1, w.since]
                    else:
                        row[0] += 1
                        if w.since < row[1]:
                            row[1] = w.since
        return [(model, cls, n, now - since)
                for (model, cls), (n, since) in sorted(found.items())]

    # -- the walk ----------------------------------------------------------------

    def _walk(self) -> None:
        self._walking = True
        try:
            self._promote(time.monotonic())
            blocked_pools: set[Any] = set()
            blocked_keys: set[KeyState] = set()
            while True:
                waiter = self._best(blocked_pools, blocked_keys)
                if waiter is None:
                    return
                ticket = waiter.ticket
                if not (ticket.holding or ticket.key.has_room()):
                    blocked_keys.add(ticket.key)
                    continue
                refusal = ticket.refusal()
                if refusal is not None:
                    self._let_through(waiter, refusal)
                    continue
                picked = waiter.pick()
                if picked is FULL:
                    blocked_pools.add(waiter.pool)
                    continue
                if picked is not None:
                    ticket.take()
                self._let_through(waiter, picked)
        finally:
            self._walking = False

    def _best(self, blocked_pools: set, blocked_keys: set) -> Waiter | None:
        for by_key in self._classes:
            best: Waiter | None = None
            best_served = 0.0
            for key, waiters in by_key.items():
                if key in blocked_keys:
                    continue
                for w in waiters:
                    if w.pool not in blocked_pools:
                        break
                else:
                    continue
                if best is None or key.served < best_served or (
                        key.served == best_served and w.seq < best.seq):
                    best, best_served = w, key.served
            if best is not None:
                return best
        return None

    def _let_through(self, waiter: Waiter, result: Any) -> None:
        self._remove(waiter)
        waiter.result = result
        if waiter.future is not None and not waiter.future.done():
            waiter.future.set_result(None)

    def _promote(self, now: float) -> None:
        if now < self._next_promotion:
            return   # a walk per release: no pass over the waiters until one is due
        self._next_promotion = math.inf
        for cls in range(1, CLASSES):
            moving = [(w, target) for waiters in self._classes[cls].values() for w in waiters
                      if (target := _due_class(w, now)) < cls]
            for w, target in moving:
                self._remove(w)
                w.cls = target
                self._add(w)
        for cls in range(1, CLASSES):
            for waiters in self._classes[cls].values():
                for w in waiters:
                    self._due(w)

    # -- bookkeeping -------------------------------------------------------------

    def _add(self, waiter: Waiter) -> None:
        by_key = self._classes[waiter.cls]
        key = waiter.ticket.key
        waiters = by_key.get(key)
        if waiters is None:
            # No saved-up credit: a key that starts waiting here is served no less than
            # the least-served key already waiting here.
            if by_key:
                key.served = max(key.served, min(k.served for k in by_key))
            waiters = by_key[key] = []
        bisect.insort(waiters, waiter)
        self._due(waiter)
        self.waiting += 1
        self._by_pool[waiter.model] = self._by_pool.get(waiter.model, 0) + 1

    def _due(self, waiter: Waiter) -> None:
        """Note when `waiter` next moves up a class (none once interactive)."""
        if waiter.cls > 0:
            steps = waiter.ticket.cls - waiter.cls + 1
            due = waiter.since + steps * waiter.promote_s
            if due < self._next_promotion:
                self._next_promotion = due

    def _remove(self, waiter: Waiter) -> None:
        by_key = self._classes[waiter.cls]
        key = waiter.ticket.key
        waiters = by_key[key]
        waiters.remove(waiter)
        if not waiters:
            del by_key[key]
        self.waiting -= 1
        left = self._by_pool[waiter.model] - 1
        if left:
            self._by_pool[waiter.model] = left
        else:
            del self._by_pool[waiter.model]

    def _count(self, waiter: Waiter, step: int) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        metrics.queue_depth_step(waiter.model, waiter.ticket.cls, step)
        if step < 0:
            metrics.queue_wait(waiter.model, waiter.ticket.cls, time.monotonic() - waiter.since)

    @staticmethod
    def _refusal(ticket: Ticket, why: str) -> GatewayError:
        key = ticket.key
        if key.cap is not None and not key.has_room() and not ticket.holding:
            return TooManyInFlight(f"this API key has {key.cap} requests in flight, its "
                               f"max_concurrency, and {why}", retry_after=1)
        return NoHealthyBackend(f"every backend of this model is at its concurrency limit "
                                f"or saturated, and {why}; try again shortly", retry_after=1)
