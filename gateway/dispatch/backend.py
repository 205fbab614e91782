"""Runtime state of one backend: its transport, load, health and cooldowns.

Survives config reloads for as long as the backend's kind and URL stay equal.
What changes the ejection and cooldown fields is in ejection.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from ..config import BackendConfig, EngineConfig
from ..engine.signals import saturated, specs_for
from ..engine.view import EngineView
from ..routing import FRESH, NO_READING, NOT_EXPOSED, STALE
from ..routing.least_latency import queue_factor
from ..runtimes import Runtime

# Weight of the newest time to first token in `ewma_ttft` (least_latency): about the
# last ten answers count, so a backend that slows down or recovers shows it within seconds.
TTFT_EWMA_ALPHA = 0.2
# The same for `service_time`, one answer's whole time without a queue (least_latency).
SERVICE_EWMA_ALPHA = 0.2


class BackendState:
    __slots__ = ("config", "runtime", "_in_flight", "shared", "healthy", "checked", "discovered_models",
                 "consecutive_failures", "ejections", "ejected_until",
                 "cooling_until", "health_ok_streak", "health_fail_streak", "engine",
                 "ewma_ttft", "own_service", "scraped")

    def __init__(self, config: BackendConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self._in_flight = 0
        # Under --workers: the server's count (limits/concurrency.py), which at_capacity reads.
        self.shared: Any = None
        # A backend is assumed healthy until its first active check says otherwise;
        # the health checker flips this to False for a backend still loading. A member
        # found by discovery gets traffic only once it passed a check.
        self.healthy = config.member_of is None
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
        self.own_service: float | None = None    # seconds; None until a first answer ended
        self.scraped = bool(specs_for(config.kind))   # its kind exposes load

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

    @property
    def batch(self) -> int:
        return self.engine.batch

    @property
    def service_time(self) -> float | None:
        """One request's time with no queue ahead (least_latency): the runtime's own
        measure where it gives one (vLLM's histograms: every client's requests, known from
        the first reading), else the gateway's measure of its own answers."""
        service = self.engine.service
        return service if service is not None else self.own_service

    @property
    def signal(self) -> str:
        """Where `load` comes from now (routing.SIGNALS)."""
        eng = self.engine
        if eng.busy is not None:
            return FRESH if time.monotonic() < eng.expires_at else STALE
        # A reading without counts (Ollama's /api/ps) is a kind that exposes none.
        return NO_READING if self.scraped and eng.reading is None else NOT_EXPOSED

    def saturated(self, now: float, engine: EngineConfig) -> bool:
        """Past engine.max_queue or engine.max_kv_usage by a fresh reading of its own.

        The queue is the reading's, moved by what the gateway itself sent or finished
        since (as `load` moves running + waiting): a reading is up to `interval_s` old,
        and a backend over the bound by the last reading would otherwise get nothing until
        the next scrape even after the gateway's own requests there have ended, then all
        at once (bench.unequal showed the swing)."""
        eng = self.engine
        reading = eng.reading
        if reading is None or now >= eng.expires_at:
            return False
        moved = self.in_flight - eng.in_flight_then
        waiting = reading.waiting
        if moved and waiting is not None:
            if moved < 0:      # ended: as many waiting moved into the batch
                waiting = max(0.0, waiting + moved)
            elif eng.batch:    # sent: they fill the batch's room first, then wait
                waiting += max(0.0, moved - max(0.0, eng.batch - (reading.running or 0)))
            # (sent, batch never seen: whether they wait is unknown; the reading stands)
            reading = replace(reading, waiting=waiting)
        return saturated(reading, engine.max_queue, engine.max_kv_usage)

    def asleep(self, now: float) -> bool:
        """Its runtime's fresh reading says it is asleep as a whole (vLLM's sleep mode):
        no requests until woken. An Ollama without the model is not: it loads on demand."""
        eng = self.engine
        reading = eng.reading
        return (reading is not None and reading.loaded is False
                and reading.loaded_models is None and now < eng.expires_at)

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

    def observe_service(self, seconds: float, busy: float = 1) -> None:
        """One answer's whole time, from sending to its end, sent while the backend was
        busy with `busy` requests, this one included: least_latency's `service_time` is
        that time without the queue ahead of it (the queue factor of routing/least_latency)."""
        seconds /= queue_factor(busy - 1, self.engine.batch)
        mean = self.own_service
        self.own_service = (seconds if mean is None
                            else mean + SERVICE_EWMA_ALPHA * (seconds - mean))

    def available(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.healthy and now >= self.ejected_until and now >= self.cooling_until

    def model_id(self, public: str) -> str:
        return self.config.model_id(public)

    def serves(self) -> tuple[str, ...]:
        models = self.config.models
        return tuple(models) if models is not None else self.discovered_models
