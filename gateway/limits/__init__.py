"""Who may send what: client keys (`auth`) and their rate limits.

Which rate limiter a server gets: in the process, shared by its workers, or on Redis.

| how it runs | limiter | a key's rpm/tpm hold for |
|---|---|---|
| one process | `buckets.Limiter` | the process |
| `--workers N` | `shared.SharedLimiter` (a file the workers map) | the server |
| `state.redis` set | `on_redis.RedisLimiter`, over one of the two above | every replica |

The keys as tenants (`tenants.Tenants`): classes, shares, `max_concurrency` (under
`--workers N` counted for the server: `concurrency.SharedCounts`), and budgets, whose
counts live in `state.redis` or `state.sqlite` (`budget_store`).
"""

from __future__ import annotations

from ..config import Config
from ..metrics import Metrics
from ..workers.rundir import RunDir
from .buckets import Limiter
from .budgets import Budgets
from .tenants import Tenants


def make_limiter(config: Config, run_dir: RunDir | None, metrics: Metrics) -> Limiter:
    if run_dir is not None:
        from .shared import SharedLimiter
        local: Limiter = SharedLimiter(run_dir.file("limits.bin"))
    else:
        local = Limiter()
    if not config.state.redis:
        return local
    from .on_redis import RedisLimiter   # `redis` is imported only with state.redis
    return RedisLimiter(config.state.redis, local, metrics)   # type: ignore[return-value]


def make_tenants(config: Config, run_dir: RunDir | None,
                 metrics: Metrics | None = None) -> Tenants:
    """The keys' scheduling state and budgets; under --workers, key slots counted for
    the whole server in the workers' shared file (limits/concurrency.py). Budgets on
    Redis say whether it works in `gateway_state_backend_up`, as the rate limits do."""
    store = None
    on_state = None
    if config.state.redis or config.state.sqlite:
        from .budget_store import make_store   # sqlite3 or redis: only when configured
        store = make_store(config)
        if config.state.redis and metrics is not None:
            gauge = metrics.state_backend_up

            def on_state(works: bool) -> None:
                gauge.set(1 if works else 0)
    tenants = Tenants(Budgets(store, on_state=on_state))
    if run_dir is not None:
        from .concurrency import SharedCounts
        tenants.shared = SharedCounts(run_dir.file("concurrency.bin"))
    return tenants
