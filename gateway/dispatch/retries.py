"""Choosing a backend and getting a first answer from it: retries, then fallbacks.

Tries happen only before the client got a byte. A try fails over to another
backend on connect errors, timeouts, 429/5xx and a stream whose first event is
an error; a runtime's other 4xx is the client's answer and is passed through.
Each backend is tried at most once per request, within one overall deadline.
Every setting comes from the request's own route table, so a reload during the
request changes nothing for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from ..config import Config, HealthConfig
from ..endpoints import Endpoint
from ..errors import (DeadlineExceeded, NoHealthyBackend, Reason, UpstreamError,
                      UpstreamStatus)
from ..metrics import Metrics
from ..record import RequestRecord
from ..relay import first_event_error, model_patterns
from ..routing import RouteRequest
from ..runtimes.scrub import scrub_text
from . import ejection
from .backend import BackendState
from .outcome import give_up
from .queue import CapacityQueue
from .table import Pool, RouteTable
from .fallbacks import Stage


class Opened:
    """A backend that answered 200; the caller relays it, then calls finish()."""

    __slots__ = ("backend", "public", "patterns", "response", "chunks", "first",
                 "drop_usage", "span", "_dispatcher", "_health")

    def __init__(self, dispatcher: Dispatcher, backend: BackendState, public: str,
                 response: Any, drop_usage: bool, health: HealthConfig) -> None:
        self._dispatcher = dispatcher
        self._health = health
        self.backend = backend
        self.public = public
        self.patterns = model_patterns(backend.model_id(public), public)
        self.response = response
        self.drop_usage = drop_usage
        self.chunks: AsyncIterator[bytes] | None = None
        self.first = b""
        self.span: Any = None   # this try's tracing.spans.TrySpan, when tracing

    def finish(self, error: BaseException | None = None) -> None:
        """Give the connection back (or drop it after a failure) and count the outcome."""
        if error is None:
            self.response.release()
        else:
            self.response.close()
        self._dispatcher.release(self.backend, error, self._health)
        if self.span is not None:
            self.span.end(error)


# What Dispatcher._choose returns when every backend it could pick is at max_concurrency.
AT_CAPACITY: Any = object()


class Dispatcher:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.queue = CapacityQueue()

    # -- the walk ------------------------------------------------------------

    async def open(self, table: RouteTable, pool: Pool, endpoint: Endpoint, payload: dict,
                   rec: RequestRecord, route: RouteRequest) -> Opened:
        cfg = table.config
        capability = endpoint.capability_for(payload)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.retries.deadline_s
        tried: set[str] = set()
        failures: list[UpstreamError] = []
        capable_seen = False
        stages = table.stages(pool)
        for index, stage in enumerate(stages):
            capable = stage.capable(capability)
            capable_seen = capable_seen or bool(capable)
            tries = stage.tries
            last_stage = index == len(stages) - 1
            while tries > 0:
                desperate = last_stage and not tried
                backend = self._choose(cfg, stage, capable, tried, route, desperate)
                if backend is AT_CAPACITY:
                    backend = await self._queue_for(cfg, stage, capable, tried, route,
                                                    deadline, desperate)
                if backend is None:
                    break
                if rec.trace is not None:
                    rec.trace.routed(index, stage, capable, tried, route, backend)
                tries -= 1
                if tried:
                    rec.retries += 1
                    self.metrics.retries.labels(rec.backend, failures[-1].reason).inc()
                tried.add(backend.name)
                rec.backend = backend.name
                if stage.fallback_to and rec.fallback != stage.fallback_to:
                    rec.fallback = stage.fallback_to
                    self.metrics.fallbacks.labels(pool.model, stage.fallback_to).inc()
                try:
                    return await self._try(cfg, backend, stage.public, endpoint, payload,
                                           rec, deadline)
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
        but all of those are at their max_concurrency."""
        now = time.monotonic()
        fresh: list[BackendState] = []   # not tried yet, not failed its health checks
        free: list[BackendState] = []    # of those, not ejected, cooling or at their cap
        any_ready = False
        for b in capable:
            if b.healthy and b.name not in tried:
                fresh.append(b)
                if b.available(now):
                    any_ready = True
                    if not b.at_capacity:
                        free.append(b)
        if not any_ready:
            if desperate and fresh:
                # Every backend is ejected or cooling and nothing is left to fall back
                # to: the one whose cooldown ends first beats failing outright.
                return self._soonest(fresh, now)
            return None
        if not free:
            return AT_CAPACITY
        backend = stage.pool.strategy.pick(free, route) if len(free) > 1 else free[0]
        ejection.start_trial(backend, cfg.health, now)   # type: ignore[arg-type]
        return backend  # type: ignore[return-value]

    async def _queue_for(self, cfg: Config, stage: Stage, capable: tuple[BackendState, ...],
                         tried: set[str], route: RouteRequest, deadline: float,
                         desperate: bool) -> BackendState | None:
        """Wait in the queue until `_choose` finds a backend below its cap, or refuse."""
        loop = asyncio.get_running_loop()
        queue_deadline = min(deadline, loop.time() + cfg.queue.max_wait_s)
        while True:
            remaining = queue_deadline - loop.time()
            if self.queue.waiting >= cfg.queue.max_size or remaining <= 0:
                raise NoHealthyBackend("every backend of this model is at its concurrency "
                                       "limit; try again shortly", retry_after=1)
            if not await self.queue.wait(remaining):
                raise NoHealthyBackend("every backend of this model stayed at its concurrency "
                                       "limit for the whole queue wait", retry_after=1)
            backend = self._choose(cfg, stage, capable, tried, route, desperate)
            if backend is not AT_CAPACITY:
                return backend

    @staticmethod
    def _soonest(backends: list[BackendState], now: float) -> BackendState | None:
        cooling = [b for b in backends if b.cooling_until > now]
        if len(cooling) == len(backends):
            return None  # all rate limited: answer 429, don't hammer them
        ejected = [b for b in backends if b.cooling_until <= now]
        return min(ejected, key=lambda b: b.ejected_until)

    async def _try(self, cfg: Config, backend: BackendState, public: str, endpoint: Endpoint,
                   payload: dict, rec: RequestRecord, deadline: float) -> Opened:
        bcfg = backend.config
        body = dict(payload)
        body["model"] = backend.model_id(public)
        drop_usage = False
        if rec.stream and bcfg.capabilities.get("stream_usage"):
            options = payload.get("stream_options")
            asked = isinstance(options, dict) and bool(options.get("include_usage"))
            drop_usage = not asked
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
        backend.in_flight += 1
        started = time.perf_counter()
        span = rec.trace.start_try(backend, body["model"]) if rec.trace is not None else None
        try:
            response = await backend.runtime.open(endpoint, body, rec.id_for_runtimes(), deadline,
                                                  span.headers if span is not None else None)
            opened = Opened(self, backend, public, response, drop_usage, cfg.health)
            opened.span = span
            if rec.stream:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._first_chunk(opened)
                except TimeoutError:
                    raise DeadlineExceeded() from None
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

    async def _first_chunk(self, opened: Opened) -> None:
        """Hold the stream until its first bytes: an error there can still be retried."""
        chunks = opened.response.chunks()
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except BaseException:
            opened.response.close()
            raise
        error = first_event_error(first) if first else None
        if not first or error is not None:
            await chunks.aclose()
            opened.response.close()
            message = str((error or {}).get("message", "the runtime sent an empty stream"))
            message = scrub_text(message, opened.backend.config)
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
            self.metrics.upstream_errors.labels(backend.name, error.reason).inc()
        ejection.judge(backend, error, health, time.monotonic())
