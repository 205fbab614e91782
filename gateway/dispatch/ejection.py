"""Passive ejection: what real traffic says about a backend.

Consecutive backend faults (see `errors.BACKEND_FAULTS`) eject a backend for a
cooldown that doubles per ejection, from `health.cooldown_s` up to
`health.max_cooldown_s`. When the cooldown ends the backend gets one trial
request, not a flood; only a real request's success readmits it and resets the
counts: active health checks never end a passive ejection, since a runtime's
/health may answer while its completions hang. A 429 is no fault: its
`Retry-After` only cools the backend down for that long.
"""

from __future__ import annotations

from ..config import HealthConfig
from ..errors import BACKEND_FAULTS, Reason, UpstreamError
from .backend import BackendState


def judge(backend: BackendState, error: BaseException | None, health: HealthConfig,
          now: float) -> None:
    """Update `backend` after a try ended with `error` (None: it succeeded)."""
    if error is None:
        record_success(backend)
    elif not isinstance(error, UpstreamError):
        return   # the client left, or a bug of ours: no verdict on the backend
    elif error.reason is Reason.STATUS_429:
        cool_down(backend, error.retry_after or 1.0, now)
    elif error.reason in BACKEND_FAULTS:
        record_failure(backend, health, now)


def record_success(backend: BackendState) -> None:
    backend.consecutive_failures = 0
    backend.ejections = 0
    backend.ejected_until = 0.0


def record_failure(backend: BackendState, health: HealthConfig, now: float) -> bool:
    """Count a backend-attributable failure; True when it ejects the backend."""
    backend.consecutive_failures += 1
    if backend.consecutive_failures < health.unhealthy_after:
        return False
    backend.ejected_until = now + min(health.cooldown_s * 2 ** backend.ejections,
                                      health.max_cooldown_s)
    backend.ejections += 1
    return True


def start_trial(backend: BackendState, health: HealthConfig, now: float) -> None:
    """An ejected backend whose cooldown ended gets one trial request, not a flood:
    until the trial is judged, no other request is sent for the next cooldown."""
    if backend.consecutive_failures >= health.unhealthy_after:
        backend.ejected_until = now + min(health.cooldown_s * 2 ** backend.ejections,
                                          health.max_cooldown_s)


def cool_down(backend: BackendState, seconds: float, now: float) -> None:
    """A 429 with Retry-After: no health penalty, just no traffic for a while."""
    backend.cooling_until = max(backend.cooling_until, now + seconds)
