"""One backend's view of its runtime's own load: the last reading and how old it is.

The scraper writes it off the request path; routing reads it on every pick, so reading
is a couple of attribute loads and a comparison, and a backend that was never scraped
(a kind that exposes nothing) costs one `is None` test. A reading counts only while it
is fresh: younger than `engine.stale_after_s` since its scrape succeeded. After that the
gateway routes on its own in-flight count alone, as if the runtime exposed nothing.
"""

from __future__ import annotations

from .signals import EngineLoad

# Weight of each interval's mean time in the batch in `EngineView.service`: a reading
# averages every request that ended since the last one, so a few intervals count.
SERVICE_ALPHA = 0.3


class EngineView:
    __slots__ = ("reading", "at", "expires_at", "busy", "in_flight_then", "failure",
                 "skip_until", "batch", "service")

    def __init__(self) -> None:
        self.reading: EngineLoad | None = None
        self.at = 0.0                 # monotonic time of the last successful scrape
        self.expires_at = 0.0         # the reading is ignored from then on
        # running + waiting of the reading (None: the kind counts neither), and the
        # gateway's own in-flight count at that moment, for `BackendState.load`.
        self.busy: int | None = None
        self.in_flight_then = 0
        self.failure: str | None = None   # why the last round gave no reading, if it did not
        # Paths the runtime does not serve (404/501: llama-server without --metrics) are
        # asked again only from this time on, not every round.
        self.skip_until: dict[str, float] = {}
        # The most requests the runtime has reported running at once: its batch size once
        # it has been full (requests waiting), a lower bound before; or its slot count,
        # where it lists its slots (llama.cpp's /slots) (least_latency).
        self.batch = 0
        # Seconds one request spends in the runtime's batch (its end-to-end time less its
        # wait in the queue), by the runtime's own histograms: a moving average of each
        # interval's mean (least_latency). None when the kind does not say.
        self.service: float | None = None

    def record(self, reading: EngineLoad, now: float, stale_after_s: float,
               in_flight: int) -> None:
        counts = [v for v in (reading.running, reading.waiting) if v is not None]
        self._service(self.reading, reading)
        self.reading = reading
        self.at = now
        self.expires_at = now + stale_after_s
        self.busy = round(sum(counts)) if counts else None
        most = max(reading.running or 0, reading.slots or 0)
        if most > self.batch:
            self.batch = round(most)
        self.in_flight_then = in_flight
        self.failure = None

    def _service(self, before: EngineLoad | None, now: EngineLoad) -> None:
        """The time in the batch of the requests that ended between two readings; the
        mean since the runtime started for a first reading (or after its restart)."""
        if now.finished is None or now.latency_s is None or now.queued_s is None:
            return
        if (before is not None and before.finished is not None
                and before.latency_s is not None and before.queued_s is not None
                and now.finished >= before.finished):
            ended = now.finished - before.finished
            if ended <= 0:
                return
            mean = ((now.latency_s - before.latency_s)
                    - (now.queued_s - before.queued_s)) / ended
            if mean >= 0:
                old = self.service
                self.service = mean if old is None else old + SERVICE_ALPHA * (mean - old)
        elif now.finished > 0:
            mean = (now.latency_s - now.queued_s) / now.finished
            if mean >= 0:
                self.service = mean

    def fail(self, reason: str) -> None:
        """A round without a reading: the last one stays until it goes stale."""
        self.failure = reason

    def fresh(self, now: float) -> EngineLoad | None:
        """The reading, while it may be trusted; None once stale or when there is none."""
        return self.reading if now < self.expires_at else None

    def age(self, now: float) -> float | None:
        return now - self.at if self.reading is not None else None
