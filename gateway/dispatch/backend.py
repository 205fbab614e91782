"""Runtime state of one backend: its transport, load, health and cooldowns.

Survives config reloads for as long as the backend's kind and URL stay equal.
What changes the ejection and cooldown fields is in ejection.py.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import BackendConfig, EngineConfig
from ..engine.signals import saturated
from ..engine.view import EngineView
from ..runtimes import Runtime

# Weight of the newest time to first token in `ewma_ttft` (least_latency): about the
# last ten answers count, so a backend that slows down or recovers shows it within seconds.
TTFT_EWMA_ALPHA = 0.2


class BackendState:
    __slots__ = ("config", "runtime", "_in_flight", "shared", "healthy", "checked", "discovered_models",
                 "consecutive_failures", "ejections", "ejected_until",
                 "cooling_until", "health_ok_streak", "health_fail_streak", "engine",
                 "ewma_ttft")

    def __init__(self, config: BackendConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self._in_flight = 0
        # Under --workers: the server's count (limits/concurrency.py), which at_capacity reads.
        self.shared: Any = None
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
        self.engine = EngineView()    # what the runtime says of its own load (engine/)
        self.ewma_ttft: float | None = None   # seconds; None until a first answer came

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> float:
        return self.config.weight

    @property
    def in_flight(self) -> int:
        """This process's requests sent to the backend and not yet released."""
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        if self.shared is not None:
            self.shared.add(value - self._in_flight)
        self._in_flight = value

    def count_shared(self, counter: Any) -> None:
        """Count in the server's count from now on (a reload may set max_concurrency while
        requests run: they are added, so that their ends do not take from the others')."""
        if counter is not None:
            counter.add(self._in_flight)
        self.shared = counter

    @property
    def at_capacity(self) -> bool:
        cap = self.config.max_concurrency
        if cap is None:
            return False
        if self.shared is not None:
            return self.shared.value() >= cap
        return self._in_flight >= cap

    @property
    def load(self) -> int:
        """Requests this backend is busy with, for least_busy and the affinity bound.

        Without a fresh engine reading: the gateway's own in-flight count. With one:
        the runtime's running + waiting, which already counts the gateway's requests in
        flight when it was read, moved by what the gateway itself sent or finished since
        (in_flight - in_flight_then), and never below in_flight, which the runtime may
        not have seen yet. Adding in_flight on top would count the gateway's share twice.
        """
        eng = self.engine
        busy = eng.busy
        if busy is None or time.monotonic() >= eng.expires_at:
            return self.in_flight
        return max(self.in_flight, busy + self.in_flight - eng.in_flight_then)

    def saturated(self, now: float, engine: EngineConfig) -> bool:
        """Past engine.max_queue or engine.max_kv_usage by a fresh reading of its own."""
        eng = self.engine
        return (now < eng.expires_at and eng.reading is not None
                and saturated(eng.reading, engine.max_queue, engine.max_kv_usage))

    def observe_ttft(self, seconds: float, busy: float = 1) -> None:
        """One answer's time to first token (a whole answer's time when not streamed),
        sent while the backend was busy with `busy` requests, this one included.

        The average is of the time per unit of that load: a first token that waited in
        the runtime's queue says the queue was long, not that the runtime is slow, and
        least_latency multiplies by the load it sees now; averaging the raw time would
        count the queue twice (bench.unequal's shared-runtime run showed it)."""
        seconds /= busy
        ewma = self.ewma_ttft
        self.ewma_ttft = seconds if ewma is None else ewma + TTFT_EWMA_ALPHA * (seconds - ewma)

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
