"""Cold pools: a request waits for a server to come up instead of an immediate 503.

A request's walk (its pool, then its fallbacks) is cold when no backend or member of
it that can serve the request is healthy and awake, and some could become so: a
backend down by its health checks, a discover backend with no member yet or only
members not checked yet, a runtime scaled to zero, or one put to sleep (vLLM's sleep
mode: its /health answers, its /metrics says `sleep_state="awake"` 0). The request then waits in the
scheduler's waiting room (scheduler.py `settle`: counted against `queue.max_size`, woken by its
notifies, and looking again every POLL_S) for up to `queue.max_wait_s` within its
retry deadline, then gets 503 with Retry-After. The first wait of a cold period
calls the backends' `wake` hooks (discovery/wake.py), once for the server.

Backends that are healthy but ejected or rate limited do not make a walk cold: the
walk tries the one whose cooldown ends first, or answers 429 (retries.py).

Members appear in a newer route table than the request's (discovery swaps one in),
so the waiting request looks at the gateway's current table (`current`); the config
it reads stays its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from ..config import BackendConfig, Config
from ..errors import NoHealthyBackend
from .backend import BackendState
from .fallbacks import Stage
from .pool import Pool
from .scheduler import Scheduler
from .table import RouteTable

if TYPE_CHECKING:
    from .retries import TryPlan

# A waiter looks again this often even with no notify (a health round that made a
# backend healthy under --workers is read from another worker's file).
POLL_S = 0.25


class Wakes(Protocol):
    def cold(self, backends: Iterable[BackendConfig]) -> None: ...


class ColdPools:
    def __init__(self, queue: Scheduler) -> None:
        self.queue = queue
        self.waker: Wakes | None = None                      # set by discovery/run.py
        self.current: Callable[[], RouteTable] | None = None  # the gateway's live table

    @staticmethod
    def is_cold(stages: Sequence[Stage], capability: str, plan: TryPlan | None) -> bool:
        """No capable backend of the walk is healthy and awake, and one could become so.
        Costs one look at the first backend when the pool is warm."""
        could = False
        now = time.monotonic()
        for stage in stages:
            for backend in stage.capable(capability):
                if plan is None or plan.accepts(backend.config):
                    if backend.healthy and not backend.asleep(now):
                        return False
                    could = True
            if not could:
                could = any(s.discovers and s.capabilities.get(capability)
                            and (plan is None or plan.accepts(s))
                            for s in stage.pool.sources)
        return could

    async def wait(self, cfg: Config, table: RouteTable, pool: Pool, capability: str,
                   plan: TryPlan | None, deadline: float) -> tuple[RouteTable, Pool]:
        """The table and pool to walk once the pool is warm; NoHealthyBackend after
        `queue.max_wait_s` (or at once with the waiting room full)."""
        loop = asyncio.get_running_loop()
        until = min(deadline, loop.time() + cfg.queue.max_wait_s)
        stages = table.stages(pool)
        if self.waker is not None:
            self.waker.cold(_wake_targets(cfg, stages))
        while True:
            remaining = until - loop.time()
            if self.queue.waiting >= cfg.queue.max_size or remaining <= 0:
                raise NoHealthyBackend(
                    f"no backend of model '{pool.model}' is available (the pool is cold); "
                    f"try again shortly", retry_after=1)
            await self.queue.settle(min(remaining, POLL_S))
            if self.current is not None:
                table = self.current()
                pool = table.pool(pool.model) or pool
                stages = table.stages(pool)
            if not self.is_cold(stages, capability, plan):
                return table, pool


def _wake_targets(cfg: Config, stages: Sequence[Stage]) -> list[BackendConfig]:
    """The configured backends of the walk (a member stands for its backend)."""
    names: dict[str, None] = {}
    for stage in stages:
        for backend in stage.backends:
            names[backend.config.label] = None
        for source in stage.pool.sources:
            names[source.name] = None
    return [cfg.backends[n] for n in names if n in cfg.backends]


def prefer_loaded(free: list[BackendState], public: str, now: float) -> list[BackendState]:
    """Of the backends free to take a request, leave out those whose runtime says (a
    fresh reading) it would first have to load the model: an Ollama whose `/api/ps` does
    not list it, a vLLM put to sleep; unless that is all of them. A backend that reports
    nothing of the kind keeps its models loaded as far as the gateway knows."""
    cold = None
    for backend in free:
        view = backend.engine
        reading = view.reading
        if reading is None or reading.loaded is None or now >= view.expires_at:
            continue
        models = reading.loaded_models
        if (reading.loaded is False if models is None
                else backend.model_id(public) not in models):
            if cold is None:
                cold = []
            cold.append(backend)
    if cold is None or len(cold) == len(free):
        return free
    return [b for b in free if b not in cold]
