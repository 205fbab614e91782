"""The answer when a request's walk found no backend that answered: which error, and why."""

from __future__ import annotations

import time

from ..errors import (GatewayError, NoHealthyBackend, NotImplementedByRuntime, RateLimited,
                      Reason, UpstreamError, UpstreamTimeout)
from .pool import Pool


def give_up(pool: Pool, capability: str, capable_seen: bool,
            failures: list[UpstreamError], tried: set[str]) -> GatewayError:
    if not capable_seen:
        return NotImplementedByRuntime(
            f"no backend of model '{pool.model}' supports {capability}", param="model")
    if not failures:
        cooling = [b.cooling_until for b in pool.backends if b.cooling_until]
        now = time.monotonic()
        if cooling and min(cooling) > now:
            return RateLimited(f"every backend of model '{pool.model}' is rate limited",
                               retry_after=min(cooling) - now)
        return NoHealthyBackend(f"no healthy backend for model '{pool.model}'",
                                retry_after=1)
    if all(f.reason is Reason.STATUS_429 for f in failures):
        waits = [f.retry_after for f in failures if f.retry_after is not None]
        return RateLimited(f"every backend of model '{pool.model}' is rate limited",
                           retry_after=min(waits) if waits else 1)
    last = failures[-1]
    if isinstance(last, UpstreamTimeout):
        return UpstreamTimeout(f"{last.message} (tried {len(tried)} backend(s))",
                               reason=last.reason)
    return UpstreamError(f"every backend and fallback failed; last: {last.message}",
                         reason=last.reason)
