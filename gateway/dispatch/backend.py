"""Runtime state of one backend: its transport, load, health and cooldowns.

Survives config reloads for as long as the backend's kind and URL stay equal.
What changes the ejection and cooldown fields is in ejection.py.
"""

from __future__ import annotations

import time

from ..config import BackendConfig
from ..runtimes import Runtime


class BackendState:
    __slots__ = ("config", "runtime", "in_flight", "healthy", "checked", "discovered_models",
                 "consecutive_failures", "ejections", "ejected_until",
                 "cooling_until", "health_ok_streak", "health_fail_streak")

    def __init__(self, config: BackendConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
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
