"""Prometheus metrics: one `Metrics` per app, owning its own registry (no globals).

Label values are bounded: `model` is always a configured public name (callers
pass "" for a name that is not configured) and `backend` a configured backend.

Under `--workers N` (workers/supervise.py) prometheus-client runs in multiprocess mode:
each worker's values live in files of the server's run directory, and a scrape of
any worker sums them all (`expose`). Each gauge says how workers combine:
in-flight requests add up (`livesum`); `backend_up` is 1 while any live worker
may send to the backend (`livemax`: health is shared, but each worker ejects on
its own traffic, so a backend one worker ejected still gets the others' requests);
the state backend is up only while every worker reaches it (`livemin`); the engine
gauges are one reading per backend, written by the worker that scrapes for the server
(health/scraper_share.py), so the latest write counts (`livemostrecent`), never a sum. "live":
a worker that exits takes its gauges with it (workers/supervise.py marks it dead).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Collection, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from .config import PRIORITIES, backend_label
from .record import RequestRecord

# Time to first token: from a cached 10 ms answer to a 60 s queue on a busy GPU.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Whole requests: long generations run for minutes.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Decode speed per token: 1 ms (fast small models) to 1 s (overloaded CPU runtimes).
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
# Time spent in the waiting room: from a moment to queue.max_wait_s (and longer settings).
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
# The gateway's own cost per request: tens of microseconds when all is well.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1)

CONTENT_TYPE = CONTENT_TYPE_LATEST


# The engine gauges: a value the runtime did not give (or no longer fresh) has no series.
ENGINE_GAUGES = ("gateway_backend_queue_depth", "gateway_backend_running_requests",
                 "gateway_backend_kv_cache_usage")
# Gauges labelled by backend: a removed backend's files cannot be edited, so a scrape
# leaves out the backends the scraping worker's config no longer has.
PER_BACKEND_GAUGES = ("gateway_in_flight_requests", "gateway_backend_up",
                      "gateway_backend_members", "gateway_backend_signal_age_seconds",
                      *ENGINE_GAUGES)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: the workers' shared files (only under --workers N)."""
        self.multiprocess_dir = multiprocess_dir
        self._state_backend_up: Gauge | None = None
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests", "Requests answered, by final status.",
            ["model", "backend", "endpoint", "status"], registry=r)
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Time from arrival to the last byte sent.",
            ["model", "backend", "endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from arrival to the first content chunk sent to the client.",
            ["model", "backend"], buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram(
            "gateway_time_per_output_token_seconds",
            "Time from the first to the last token, divided by completion tokens - 1.",
            ["model", "backend"], buckets=TPOT_BUCKETS, registry=r)
        self.tokens = Counter(
            "gateway_tokens", "Tokens as reported by the runtime's usage.",
            ["model", "backend", "type"], registry=r)
        self.in_flight = Gauge(
            "gateway_in_flight_requests", "Requests currently sent to a backend.",
            ["backend"], registry=r, multiprocess_mode="livesum")
        self.backend_up = Gauge(
            "gateway_backend_up", "1 when the backend is healthy and not ejected.",
            ["backend"], registry=r, multiprocess_mode="livemax")
        self.fallbacks = Counter(
            "gateway_fallbacks", "Requests that went to a fallback after their pool failed.",
            ["model", "to"], registry=r)
        self.retries = Counter(
            "gateway_retries", "Extra tries on another backend, by what failed.",
            ["backend", "reason"], registry=r)
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Backend failures, by kind of failure.",
            ["backend", "reason"], registry=r)
        self.stream_aborts = Counter(
            "gateway_stream_aborts", "Streams that ended before the runtime finished.",
            ["backend", "reason"], registry=r)
        self.usage_missing = Counter(
            "gateway_usage_missing", "Answers whose runtime reported no token usage.",
            ["model", "backend"], registry=r)
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself, upstream wait excluded.",
            ["endpoint"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.config_reloads = Counter(
            "gateway_config_reloads", "Config reloads, by result.",
            ["result"], registry=r)
        # `key` is a configured key's name ("" without auth), never the key itself.
        self.key_requests = Counter(
            "gateway_key_requests", "Requests per client key, by model and final status.",
            ["key", "model", "status"], registry=r)
        self.key_tokens = Counter(
            "gateway_key_tokens", "Tokens per client key, as reported by the runtime's usage.",
            ["key", "model", "type"], registry=r)
        self.key_in_flight = Gauge(
            "gateway_key_in_flight", "A client key's requests sent and not yet ended.",
            ["key"], registry=r, multiprocess_mode="livesum")
        # Every worker reads the same shared counts: the latest reading, not a sum.
        self.key_budget_remaining = Gauge(
            "gateway_key_budget_remaining_tokens",
            "Tokens left in a client key's budget for the UTC day or month.",
            ["key", "period"], registry=r, multiprocess_mode="livemostrecent")
        self.queue_depth = Gauge(
            "gateway_queue_depth", "Requests waiting in the gateway's queue, by their class.",
            ["model", "priority"], registry=r, multiprocess_mode="livesum")
        self.queue_wait_seconds = Histogram(
            "gateway_queue_wait_seconds",
            "Time requests that waited spent in the gateway's queue, by their class.",
            ["model", "priority"], buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused by a client key's rate limit.",
            ["key", "limit"], registry=r)
        # What each runtime says of its own load (health/scraper.py): a series only while
        # the backend's kind exposes the value and its last reading is fresh.
        last_reported = functools.partial(Gauge, labelnames=["backend"], registry=r,
                                          multiprocess_mode="livemostrecent")
        self.engine_queue = last_reported(
            "gateway_backend_queue_depth",
            "Requests waiting in the runtime's own queue, as it last reported.")
        self.engine_running = last_reported(
            "gateway_backend_running_requests",
            "Requests the runtime is running, as it last reported.")
        self.engine_kv = last_reported(
            "gateway_backend_kv_cache_usage",
            "The runtime's KV-cache usage (0..1), as it last reported.")
        # Every scraped backend has a series: the age of its last reading, growing while
        # the reading is stale (+Inf before a first one), so an alert can see it.
        self.signal_age = last_reported(
            "gateway_backend_signal_age_seconds",
            "Seconds since the backend's last engine reading (+Inf: none yet).")
        self.signal_fallbacks = Counter(
            "gateway_routing_signal_fallbacks",
            "Picks of a load-reading strategy where a candidate's load was the gateway's "
            "own count, by why its runtime's reading could not be used.",
            ["strategy", "reason"], registry=r)
        self.engine_scrape_failures = Counter(
            "gateway_engine_scrape_failures",
            "Scrapes of a runtime's load endpoint that gave no reading, by why.",
            ["backend", "reason"], registry=r)
        # Discover backends (gateway/discovery): members by state, and the wake hook's calls.
        self.backend_members = Gauge(
            "gateway_backend_members",
            "Members of a discover backend, by state (available, unavailable, draining).",
            ["backend", "state"], registry=r, multiprocess_mode="livemax")
        self.wake_calls = Counter(
            "gateway_wake_calls", "Calls of a backend's wake hook, by result.",
            ["backend", "result"], registry=r)
        for result in ("ok", "error"):
            # Present from the start, so increase() sees the first reload of either kind.
            self.config_reloads.labels(result)
        # Label children of the per-request metrics, by (metric, label values): .labels()
        # takes a lock and re-validates every value, a dict lookup does neither.
        self._children: dict[tuple, Any] = {}
        # The per-key counters' increments since they were last copied in (publish_keys):
        # a request adds to a dict, the counters are written when scraped (and each
        # second under --workers), as the in-flight gauges are.
        self._key_requests: dict[tuple[str, str, str], int] = {}
        self._key_tokens: dict[tuple[str, str, str], int] = {}

    @property
    def state_backend_up(self) -> Gauge:
        """1 while the shared state (Redis) answers; only there when one is configured."""
        if self._state_backend_up is None:
            self._state_backend_up = Gauge(
                "gateway_state_backend_up",
                "1 while the shared rate-limit state (Redis) is reachable.",
                registry=self.registry, multiprocess_mode="livemin")
        return self._state_backend_up

    def set_in_flight(self, name: str, value: int) -> None:
        """Written per backend at scrape time (and each second under --workers), so
        requests pay no gauge update: a multiprocess gauge cannot read a function."""
        self._child(self.in_flight, name).set(value)

    def queue_depth_step(self, model: str, cls: int, step: int) -> None:
        self._child(self.queue_depth, model, PRIORITIES[cls]).inc(step)

    def queue_wait(self, model: str, cls: int, seconds: float) -> None:
        self._child(self.queue_wait_seconds, model, PRIORITIES[cls]).observe(seconds)

    def forget_key(self, name: str) -> None:
        """A key removed by a reload: its gauges would otherwise report its last values
        forever (its counters stay: what it was served is history)."""
        self._children.clear()
        if self.multiprocess_dir:
            return   # the files keep them, as a removed backend's
        for gauge, labels in ((self.key_in_flight, (name,)),
                              (self.key_budget_remaining, (name, "day")),
                              (self.key_budget_remaining, (name, "month"))):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def publish_keys(self, tenants: Any, queue: Any) -> None:
        """Per-key metrics, written when scraped (and each second under --workers)."""
        for counts, counter in ((self._key_requests, self.key_requests),
                                (self._key_tokens, self.key_tokens)):
            for labels, n in counts.items():
                self._child(counter, *labels).inc(n)
            counts.clear()
        budgets = tenants.budgets
        for key, state in tenants.entries():
            self._child(self.key_in_flight, state.name).set(state.in_flight)
            if key is None or key.budget is None:
                continue
            for period, left in zip(("day", "month"), budgets.left(key.name, key.budget)):
                if left is not None:
                    self._child(self.key_budget_remaining, key.name, period).set(left)

    def set_engine(self, gauge: Gauge, name: str, value: float | None) -> None:
        """One engine gauge of a backend; None: no series (never a made-up 0). A series
        cannot be removed from the multiprocess files: NaN stands for none there, and
        expose() leaves it out."""
        if value is not None:
            self._child(gauge, name).set(value)
        elif self.multiprocess_dir:
            self._child(gauge, name).set(math.nan)
        else:
            self._children.pop((gauge, (name,)), None)
            try:
                gauge.remove(name)
            except KeyError:
                pass

    def count_signal_fallback(self, strategy: str, reason: str) -> None:
        self._child(self.signal_fallbacks, strategy, reason).inc()

    def forget_backend(self, name: str) -> None:
        """A removed backend's gauges would otherwise report stale values forever."""
        self._children.clear()
        if self.multiprocess_dir:
            return   # the files keep them; expose() leaves them out
        for gauge in (self.backend_up, self.in_flight, self.engine_queue, self.engine_running,
                      self.engine_kv, self.signal_age):
            try:
                gauge.remove(name)
            except KeyError:
                pass
        for state in ("available", "unavailable", "draining"):
            try:
                self.backend_members.remove(name, state)
            except KeyError:
                pass

    def expect_wakes(self, name: str) -> None:
        """A backend with a wake hook: its calls' series exist from 0 on, so the first call
        is an increase, not a series appearing at 1."""
        for result in ("ok", "error"):
            self.wake_calls.labels(name, result)

    def _child(self, metric: Any, *labels: str) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def record_request(self, rec: RequestRecord, duration: float) -> None:
        # A discovered member counts under its configured backend's name.
        model, backend, child = rec.model, backend_label(rec.backend), self._child
        ticket = rec.ticket
        key = ticket.key.name if ticket is not None else None
        status = str(rec.status)
        child(self.requests, model, backend, rec.endpoint, status).inc()
        if key is not None:
            counts = self._key_requests
            labels = (key, model, status)
            counts[labels] = counts.get(labels, 0) + 1
        child(self.duration, model, backend, rec.endpoint).observe(duration)
        child(self.overhead, rec.endpoint).observe(max(0.0, duration - rec.upstream_wait))
        if rec.aborted:
            child(self.stream_aborts, backend, rec.aborted).inc()
        if not backend or rec.status != 200 and not rec.aborted:
            return
        if rec.stream and rec.first_token_at is not None:
            child(self.ttft, model, backend).observe(rec.first_token_at - rec.started)
        usage = rec.usage
        if usage is None:
            child(self.usage_missing, model, backend).inc()
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        key_tokens = self._key_tokens
        if isinstance(prompt, int) and prompt > 0:
            child(self.tokens, model, backend, "prompt").inc(prompt)
            if key is not None:
                labels = (key, model, "prompt")
                key_tokens[labels] = key_tokens.get(labels, 0) + prompt
        if isinstance(completion, int) and completion > 0:
            child(self.tokens, model, backend, "completion").inc(completion)
            if key is not None:
                labels = (key, model, "completion")
                key_tokens[labels] = key_tokens.get(labels, 0) + completion
            if (rec.stream and completion > 1 and rec.first_token_at is not None
                    and rec.last_token_at is not None):
                child(self.tpot, model, backend).observe(
                    (rec.last_token_at - rec.first_token_at) / (completion - 1))

    def expose(self, backends: Collection[str] = ()) -> bytes:
        """The exposition; under --workers every worker's, summed. `backends`: the
        configured ones, whose per-backend gauges are shown."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_AllWorkers(self.multiprocess_dir, frozenset(backends)))
        return generate_latest(registry)


class _AllWorkers:
    """Every worker's files, less the gauges of backends no longer configured and the
    engine gauges' NaN (a value no longer known)."""

    def __init__(self, path: str, backends: frozenset[str]) -> None:
        self.path, self.backends = path, backends

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector
        for family in MultiProcessCollector(None, self.path).collect():
            if family.name in PER_BACKEND_GAUGES:
                family.samples = [s for s in family.samples
                                  if s.labels.get("backend") in self.backends]
            if family.name in ENGINE_GAUGES:
                family.samples = [s for s in family.samples if not math.isnan(s.value)]
            yield family
