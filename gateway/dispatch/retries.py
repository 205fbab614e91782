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
from typing import Any, AsyncIterator, Mapping, Protocol

from ..config import BackendConfig, Config, HealthConfig
from ..endpoints import BYTES, Endpoint
from ..errors import (DeadlineExceeded, Reason, UpstreamError,
                      UpstreamStatus, UpstreamTimeout)
from ..metrics import Metrics
from ..record import RequestRecord
from ..api.forms import body_for
from ..relay.chat import has_data_line, model_patterns
from ..relay.events import stream_error
from ..routing import RouteRequest
from ..runtimes.priority import engine_priority
from ..runtimes.scrub import scrub_text
from . import ejection
from .backend import BackendState
from .outcome import give_up
from .scheduler import FULL, Scheduler
from .tickets import STANDARD, KeyState, Ticket
from .pool import Pool
from .table import RouteTable
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


class TryPlan(Protocol):
    """How each try of a request is shaped, for an API that some backends serve as it is
    and others only through a translation (Anthropic Messages: api/messages_plan.py)."""

    def accepts(self, backend: BackendConfig) -> bool:
        """Whether this backend can serve the request at all (else it is not tried)."""
        ...

    def prepare(self, backend: BackendConfig, body: dict
                ) -> tuple[Endpoint, dict, Mapping[str, str] | None]:
        """The endpoint, body (model already rewritten) and extra headers of one try."""
        ...


# What Dispatcher._choose returns when every backend it could pick is at max_concurrency.
AT_CAPACITY: Any = FULL


class Dispatcher:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.queue = Scheduler(metrics)   # scheduler.py: who goes next when full

    # -- the walk ------------------------------------------------------------

    async def open(self, table: RouteTable, pool: Pool, endpoint: Endpoint, payload: dict,
                   rec: RequestRecord, route: RouteRequest, *, plan: TryPlan | None = None,
                   pinned: BackendState | None = None, target: str | None = None) -> Opened:
        """The first backend that answered. `plan`: how each try is shaped (an API some
        backends serve only translated); `pinned`: the one backend that may (it holds a
        stored response), tried once; `target`: the upstream path when it is not the row's."""
        cfg = table.config
        capability = endpoint.capability_for(payload)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.retries.deadline_s
        tried: set[str] = set()
        failures: list[UpstreamError] = []
        capable_seen = False
        stages = ((Stage(pool.model, pool, (pinned,), 1),) if pinned is not None
                  else table.stages(pool))
        if rec.ticket is not None and (refusal := rec.ticket.refusal()) is not None:
            raise refusal   # its key's budget is spent (checked again if it waits)
        for index, stage in enumerate(stages):
            capable = stage.capable(capability)
            if plan is not None:
                capable = tuple(b for b in capable if plan.accepts(b.config))
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
                                           rec, deadline, plan, target)
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
        backend = stage.pool.strategy.pick(free, route) if len(free) > 1 else free[0]
        ejection.start_trial(backend, cfg.health, now)   # type: ignore[arg-type]
        return backend  # type: ignore[return-value]

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

    async def _try(self, cfg: Config, backend: BackendState, public: str, endpoint: Endpoint,
                   payload: dict, rec: RequestRecord, deadline: float,
                   plan: TryPlan | None = None, target: str | None = None) -> Opened:
        bcfg = backend.config
        body = body_for(endpoint, payload, backend.model_id(public))
        drop_usage = False
        extra_headers = None
        if plan is not None:
            endpoint, body, extra_headers = plan.prepare(bcfg, body)
        elif rec.stream and endpoint.asks_stream_usage and bcfg.capabilities.get("stream_usage"):
            options = payload.get("stream_options")
            asked = isinstance(options, dict) and bool(options.get("include_usage"))
            drop_usage = not asked
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
        if bcfg.engine_priority and rec.ticket is not None and isinstance(body, dict):
            body["priority"] = engine_priority(bcfg.kind, rec.ticket.cls)
        # What the backend was busy with when this try was placed: least_latency's
        # estimate is the time to first token per unit of that load (backend.py).
        busy = backend.load + 1 if endpoint.prompt_field is not None else 1
        backend.in_flight += 1
        started = time.perf_counter()
        # first_byte_s runs from the request's sending to the first data event of a
        # stream (to the headers of a whole answer); the retry deadline may end it sooner.
        first_by = asyncio.get_running_loop().time() + bcfg.timeouts.first_byte_s
        span = None
        if rec.trace is not None:
            span = rec.trace.start_try(backend, backend.model_id(public))
            extra_headers = ({**extra_headers, **span.headers} if extra_headers
                             else span.headers)
        try:
            response = await backend.runtime.open(endpoint, body, rec.id_for_runtimes(),
                                                  deadline, target=target,
                                                  extra_headers=extra_headers)
            opened = Opened(self, backend, public, response, drop_usage, cfg.health)
            opened.span = span
            if rec.stream or endpoint.streams == BYTES:
                by_deadline = deadline < first_by
                try:
                    async with asyncio.timeout_at(deadline if by_deadline else first_by):
                        await self._first_chunk(opened, endpoint)
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

    async def _first_chunk(self, opened: Opened, endpoint: Endpoint) -> None:
        """Hold the stream until its first data event (a bytes answer: its first bytes):
        an error there can still be retried. Comments (keep-alives) before it are held,
        then relayed with it."""
        chunks = opened.response.chunks()
        first = b""
        try:
            if endpoint.streams == BYTES:
                first = await anext(chunks, b"")
            else:
                first = await _first_event(chunks)
        except BaseException:
            opened.response.close()
            raise
        error = stream_error(endpoint, first) if first and endpoint.streams != BYTES else None
        if not first or error is not None:
            await chunks.aclose()
            opened.response.close()
            message = str((error or {}).get(
                "message", "the runtime ended the stream before its first event"))
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


async def _first_event(chunks: AsyncIterator[bytes]) -> bytes:
    """The bytes up to and with a stream's first whole `data:` line; b"" when the stream
    ended before any event."""
    first = b""
    async for data in chunks:
        first += data
        if has_data_line(first):
            return first
    return first if b"data:" in first else b""
