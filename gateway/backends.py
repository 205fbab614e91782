"""Runtime state of one backend: load, health and cooldowns.

Survives config reloads for as long as the backend's kind and URL stay equal.
"""

from __future__ import annotations

import time

from .config import BackendConfig


class BackendState:
    __slots__ = ("config", "in_flight", "healthy", "checked", "discovered_models",
                 "consecutive_failures", "ejections", "ejected_until",
                 "cooling_until", "health_ok_streak", "health_fail_streak")

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.in_flight = 0
        # A backend is assumed healthy until its first active check says otherwise;
        # the health checker flips this to False for a backend still loading.
        self.healthy = True
        self.checked = False
        self.discovered_models: tuple[str, ...] = ()
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0      # passive health: monotonic time
        self.cooling_until = 0.0      # a 429's Retry-After: monotonic time
        self.health_ok_streak = 0
        self.health_fail_streak = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> float:
        return self.config.weight

    @property
    def at_capacity(self) -> bool:
        cap = self.config.max_concurrency
        return cap is not None and self.in_flight >= cap

    def available(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.healthy and now >= self.ejected_until and now >= self.cooling_until

    def model_id(self, public: str) -> str:
        models = self.config.models
        if models is None:
            return public
        return models.get(public, public)

    def serves(self) -> tuple[str, ...]:
        models = self.config.models
        return tuple(models) if models is not None else self.discovered_models

    # Passive health: what real traffic says about this backend.

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def record_failure(self, eject_after: int, cooldown_s: float, max_cooldown_s: float,
                       now: float) -> bool:
        """Count a backend-attributable failure; True when it ejects the backend."""
        self.consecutive_failures += 1
        if self.consecutive_failures < eject_after:
            return False
        self.ejected_until = now + min(cooldown_s * 2 ** self.ejections, max_cooldown_s)
        self.ejections += 1
        return True

    def start_trial(self, eject_after: int, probation_s: float, now: float) -> None:
        """An ejected backend whose cooldown ended gets one trial request, not a flood."""
        if self.consecutive_failures >= eject_after:
            self.ejected_until = now + probation_s

    def cool_down(self, seconds: float, now: float) -> None:
        """A 429 with Retry-After: no health penalty, just no traffic for a while."""
        self.cooling_until = max(self.cooling_until, now + seconds)
