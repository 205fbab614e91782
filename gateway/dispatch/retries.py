"""Choosing a backend and getting a first answer from it: retries, then fallbacks.

Tries happen only before the client got a byte. A try fails over to another
backend on connect errors, timeouts, 429/5xx and a stream whose first data event
is an error (comments before it are held, not committed to: until that event, a
retry is still possible); a runtime's other 4xx is the client's answer and is
passed through.
Each backend is tried at most once per request, within one overall deadline.
Every setting comes from the request's own route table, so a reload during the
request changes nothing for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from ..config import BackendConfig, Config, HealthConfig, backend_label
from ..errors import (DeadlineExceeded, Reason, UpstreamError, UpstreamStatus,
                      UpstreamTimeout)
from ..metrics import Metrics
from ..routing import FRESH, RouteRequest
from ..runtimes.scrub import scrub_text
from .decision import as_header, explain
from . import ejection
from .backend import BackendState
from .call import Call, FirstEvent, Shaped
from .cold import ColdPools, prefer_loaded
from .fallbacks import Stage
from .outcome import give_up
from .sample import SAMPLE_ABOVE, sampled_pick
from .scheduler import FULL, Scheduler
from ..limits.tickets import STANDARD, KeyState, Ticket


class Opened:
    """A backend that answered 200, with the try as it was shaped for it; the caller
    relays it, then calls finish()."""

    __slots__ = ("backend", "config", "public", "shaped", "response", "chunks", "first",
                 "span", "timed", "_dispatcher", "_health")

    def __init__(self, dispatcher: Dispatcher, backend: BackendState, config: BackendConfig,
                 public: str, shaped: Shaped, response: Any, health: HealthConfig) -> None:
        self._dispatcher = dispatcher
        self._health = health
        self.backend = backend
        self.config = config     # the backend's settings in the request's snapshot
        self.public = public
        self.shaped = shaped
        self.response = response
        self.chunks: AsyncIterator[bytes] | None = None
        self.first = b""
        self.span: Any = None   # this try's tracing.spans.TrySpan, when tracing
        # (perf_counter when sent, the load it was sent into): least_latency's service time
        self.timed: tuple[float, float] | None = None

    @property
    def patterns(self) -> tuple[tuple[bytes, bytes], ...]:
        return self.shaped.patterns

    def finish(self, error: BaseException | None = None) -> None:
        """Give the connection back (or drop it after a failure) and count the outcome."""
        if error is None:
            if self.timed is not None:
                self.backend.observe_service(time.perf_counter() - self.timed[0],
                                             self.timed[1])
            self.response.release()
        else:
            self.response.close()
        self._dispatcher.release(self.backend, error, self._health)
        if self.span is not None:
            self.span.end(error)


# What Dispatcher._choose returns when every backend it could pick is at max_concurrency.
AT_CAPACITY: Any = FULL


class Dispatcher:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.queue = Scheduler(metrics)   # scheduler.py: who goes next when full
        self.cold = ColdPools(self.queue)   # cold.py: waits for a pool none of which is up
        self._explained: dict[tuple, tuple[str, ...]] = {}   # decision.explain's cache

    # -- the walk ------------------------------------------------------------

    async def open(self, call: Call) -> Opened:
        """The first backend that answered. `call.pinned`: the one backend that may (it
        holds a stored response), tried once."""
        table, pool, rec, route = call.table, call.pool, call.rec, call.route
        cfg = table.config
        capability = call.endpoint.capability_for(call.payload)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.retries.deadline_s
        tried: set[str] = set()
        failures: list[UpstreamError] = []
        capable_seen = False
        stages = ((Stage(pool.model, pool, (call.pinned,), 1),) if call.pinned is not None
                  else table.stages(pool))
        if rec.ticket is not None and (refusal := rec.ticket.refusal()) is not None:
            raise refusal   # its key's budget is spent (checked again if it waits)
        if call.pinned is None and self.cold.is_cold(stages, capability, call.plan):
            # Nothing was sent yet: the walk starts on the table of the moment the pool
            # warmed, which holds the members that came up meanwhile.
            table, pool = await self.cold.wait(cfg, table, pool, capability, call.plan,
                                               deadline)
            call.table, call.pool = table, pool
            stages = table.stages(pool)
        for index, stage in enumerate(stages):
            capable = stage.capable(capability)
            if call.plan.selective:
                capable = tuple(b for b in capable if call.plan.accepts(table.bound(b)[0]))
            capable_seen = capable_seen or bool(capable)
            tries = stage.tries
            last_stage = index == len(stages) - 1
            while tries > 0:
                desperate = last_stage   # nothing left after this stage: try the ejected
                backend = (self._choose(cfg, stage, capable, tried, route, desperate)
                           if self.queue.may_skip(rec.ticket, stage.public) else AT_CAPACITY)
                if backend is AT_CAPACITY:
                    backend = await self._queue_for(cfg, stage, capable, tried, route,
                                                    deadline, desperate, rec.ticket)
                elif backend is not None and rec.ticket is not None:
                    rec.ticket.take()   # one of its key's slots, until the request ends
                if backend is None:
                    break
                if rec.trace is not None:
                    rec.trace.routed(index, stage, capable, tried, route, backend,
                                     cfg.engine)
                if rec.explain:
                    rec.route = as_header(explain(index, stage, capable, tried, route,
                                                  backend, self._explained, cfg.engine))
                tries -= 1
                if tried:
                    rec.retries += 1
                    self.metrics.retries.labels(backend_label(rec.backend),
                                                failures[-1].reason).inc()
                tried.add(backend.name)
                rec.backend = backend.name
                if stage.fallback_to and rec.fallback != stage.fallback_to:
                    rec.fallback = stage.fallback_to
                    self.metrics.fallbacks.labels(pool.model, stage.fallback_to).inc()
                try:
                    return await self._try(call, backend, stage.public, deadline)
                except UpstreamError as err:
                    failures.append(err)
                    if isinstance(err, DeadlineExceeded):
                        break
            if loop.time() >= deadline:
                break
        raise give_up(pool, capability, capable_seen, failures, tried)

    def _choose(self, cfg: Config, stage: Stage, capable: tuple[BackendState, ...],
                tried: set[str], route: RouteRequest, desperate: bool) -> BackendState | None:
        """A backend to try now; None when none is left; AT_CAPACITY when some would do
        but all of those are at their max_concurrency or saturated (engine.max_queue,
        engine.max_kv_usage): those wait in the queue."""
        now = time.monotonic()
        if len(capable) > SAMPLE_ABOVE:   # a large pool of members: look at a few (sample.py)
            sampler = stage.sampler(capable)
            if sampler.applies:
                picked = sampled_pick(sampler, stage.pool.strategy, tried, route,
                                      cfg.engine, now)
                if picked is not None:
                    ejection.start_trial(picked, cfg.health, now)
                    return picked
        fresh: list[BackendState] = []   # not tried yet, not failed its health checks
        free: list[BackendState] = []    # of those, not ejected, cooling, at their cap
        any_ready = False                # or saturated by their runtime's own reading
        engine = cfg.engine
        for b in capable:
            if b.healthy and b.name not in tried:
                fresh.append(b)
                if b.available(now):
                    any_ready = True
                    if not b.at_capacity and not b.saturated(now, engine):
                        free.append(b)
        if not any_ready:
            if desperate and fresh:
                # Every backend is ejected or cooling and nothing is left to fall back
                # to: the one whose cooldown ends first beats failing outright.
                return self._soonest(fresh, now)
            return None
        if not free:
            return AT_CAPACITY
        if len(free) > 1:
            free = prefer_loaded(free, stage.public, now)   # the model loaded, awake (cold.py)
            strategy = stage.pool.strategy
            backend = strategy.pick(free, route)
            if strategy.uses_load:
                self._signal_fallbacks(strategy.name, free)
        else:
            backend = free[0]
        ejection.start_trial(backend, cfg.health, now)   # type: ignore[arg-type]
        return backend  # type: ignore[return-value]

    def _signal_fallbacks(self, strategy: str, free: list[BackendState]) -> None:
        """Count a pick that read load the runtime could not vouch for, once per reason:
        a stale reading, none yet, or a kind that exposes none (the gateway's count)."""
        seen: list[str] = []
        for b in free:
            signal = b.signal
            if signal != FRESH and signal not in seen:
                seen.append(signal)
                self.metrics.count_signal_fallback(strategy, signal)

    async def _queue_for(self, cfg: Config, stage: Stage, capable: tuple[BackendState, ...],
                         tried: set[str], route: RouteRequest, deadline: float,
                         desperate: bool, ticket: Ticket | None) -> BackendState | None:
        """Wait in the scheduler (scheduler.py) until it is this request's turn and
        `_choose` finds a backend with room, or refuse."""
        loop = asyncio.get_running_loop()
        timeout = min(deadline, loop.time() + cfg.queue.max_wait_s) - loop.time()

        def pick() -> Any:
            backend = self._choose(cfg, stage, capable, tried, route, desperate)
            if backend is not AT_CAPACITY and backend is not None:
                backend.in_flight += 1   # held for this waiter until it sends (_try)
            return backend

        def undo(backend: BackendState) -> None:
            backend.in_flight -= 1
            self.queue.notify()

        backend = await self.queue.wait(
            ticket or Ticket(KeyState(""), STANDARD), stage.public,
            stage.public if not tried else object(), pick, timeout, cfg.queue.max_size,
            cfg.queue.promote_after_s, undo)
        if backend is not None:
            backend.in_flight -= 1       # _try counts it again before it awaits anything
        return backend

    @staticmethod
    def _soonest(backends: list[BackendState], now: float) -> BackendState | None:
        cooling = [b for b in backends if b.cooling_until > now]
        if len(cooling) == len(backends):
            return None  # all rate limited: answer 429, don't hammer them
        ejected = [b for b in backends if b.cooling_until <= now]
        return min(ejected, key=lambda b: b.ejected_until)

    async def _try(self, call: Call, backend: BackendState, public: str,
                   deadline: float) -> Opened:
        rec = call.rec
        cfg = call.table.config
        bcfg, runtime = call.table.bound(backend)
        shaped = call.plan.prepare(bcfg, public, rec.stream)
        endpoint = shaped.endpoint
        # What the backend was busy with when this try was placed: least_latency's
        # estimate is the time to first token per unit of that load (backend.py).
        busy = backend.load + 1 if endpoint.prompt_field is not None else 1
        backend.in_flight += 1
        started = time.perf_counter()
        # first_byte_s runs from the request's sending to the first data event of a
        # stream (to the headers of a whole answer); the retry deadline may end it sooner.
        first_by = asyncio.get_running_loop().time() + bcfg.timeouts.first_byte_s
        span = None
        extra_headers = shaped.headers
        if rec.trace is not None:
            span = rec.trace.start_try(backend, bcfg.model_id(public))
            extra_headers = ({**extra_headers, **span.headers} if extra_headers
                             else span.headers)
        try:
            response = await runtime.open(endpoint, shaped.body, rec.id_for_runtimes(),
                                          deadline, target=call.target,
                                          extra_headers=extra_headers)
            opened = Opened(self, backend, bcfg, public, shaped, response, cfg.health)
            opened.span = span
            if endpoint.prompt_field is not None:
                opened.timed = (started, busy)
            if shaped.fmt is not None:
                by_deadline = deadline < first_by
                try:
                    async with asyncio.timeout_at(deadline if by_deadline else first_by):
                        await self._first_chunk(opened, shaped.fmt)
                except TimeoutError:
                    if by_deadline:
                        raise DeadlineExceeded() from None
                    raise UpstreamTimeout(
                        f"backend {backend.name} sent no event within "
                        f"{bcfg.timeouts.first_byte_s:g} s",
                        reason=Reason.FIRST_BYTE_TIMEOUT) from None
            if endpoint.prompt_field is not None:
                # least_latency's time to first token: the first data event of a stream,
                # a whole answer's headers (which come with the whole answer).
                backend.observe_ttft(time.perf_counter() - started, busy)
        except UpstreamStatus as err:
            self.release(backend, None, cfg.health)
            if span is not None:
                span.end(err)
            raise
        except BaseException as err:
            self.release(backend, err, cfg.health)
            if span is not None:
                span.end(err)
            raise
        finally:
            rec.upstream_wait += time.perf_counter() - started
        return opened

    async def _first_chunk(self, opened: Opened, fmt: type[FirstEvent]) -> None:
        """Hold the stream until its first whole event (a bytes answer: its first bytes):
        an error there can still be retried. Comments (keep-alives) before it are held,
        then relayed with it."""
        chunks = opened.response.chunks()
        first = b""
        try:
            async for data in chunks:
                first += data
                if fmt.first_complete(first):
                    break
            else:   # the stream ended: an event without its newline still counts
                first = first if b"data:" in first else b""
        except BaseException:
            opened.response.close()
            raise
        error = fmt.first_error(first) if first else None
        if not first or error is not None:
            await chunks.aclose()
            opened.response.close()
            message = str((error or {}).get(
                "message", "the runtime ended the stream before its first event"))
            message = scrub_text(message, opened.config)
            raise UpstreamError(f"backend {opened.backend.name} failed: {message}",
                                reason=Reason.STREAM_ERROR)
        opened.chunks = chunks
        opened.first = first

    # -- bookkeeping -----------------------------------------------------------

    def release(self, backend: BackendState, error: BaseException | None,
                health: HealthConfig) -> None:
        backend.in_flight -= 1
        self.queue.notify()
        if isinstance(error, UpstreamError):
            self.metrics.upstream_errors.labels(backend.config.label, error.reason).inc()
        ejection.judge(backend, error, health, time.monotonic())
