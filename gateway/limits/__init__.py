"""Who may send what: client keys (`auth`) and their rate limits.

Which rate limiter a server gets: in the process, shared by its workers, or on Redis.

| how it runs | limiter | a key's rpm/tpm hold for |
|---|---|---|
| one process | `buckets.Limiter` | the process |
| `--workers N` | `shared.SharedLimiter` (a file the workers map) | the server |
| `state.redis` set | `on_redis.RedisLimiter`, over one of the two above | every replica |
"""

from __future__ import annotations

from ..config import Config
from ..metrics import Metrics
from ..workers.rundir import RunDir
from .buckets import Limiter


def make_limiter(config: Config, run_dir: RunDir | None, metrics: Metrics) -> Limiter:
    if run_dir is not None:
        from .shared import SharedLimiter
        local: Limiter = SharedLimiter(run_dir.file("limits.bin"))
    else:
        local = Limiter()
    if not config.state.redis:
        return local
    from .on_redis import RedisLimiter   # the only import of `redis`
    return RedisLimiter(config.state.redis, local, metrics)   # type: ignore[return-value]
