"""Scraping each runtime's own load, off the request path, every `engine.interval_s`.

A round asks every backend whose kind exposes load (`signals.SPECS`) for each of its
paths at once, through the backend's own runtime (its URL, headers and key), reads the
answers with `signals.parse`, merges them with `signals.combine` and records the reading
in the backend's `EngineView`. A round that gets no reading (a hang, a refused
connection, a 5xx, garbage) only counts the failure: the last reading goes stale after
`engine.stale_after_s` and routing falls back to the gateway's own in-flight count. No
request waits on a scrape, and none fails because of one.

    scrape_backend(state, engine)   one backend's answers: a Scrape (readings, failures)
    record(state, scrape, ...)      a Scrape into the backend's view; failures counted
    scrape_round(gateway, ...)      every backend, then the gauges, then the queue's waiters
    run_scrapes(gateway, share)     the loop, a round every interval_s; under --workers
                                    only in the leading worker, the others follow its
                                    readings (share.py)
    engine_scrapes(app)             cleanup_ctx: run_scrapes for the app's lifetime
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterable

from aiohttp import web

from ..config import EngineConfig
from ..dispatch import BackendState
from ..errors import UpstreamError
from ..log import engine_logger
from ..metrics import Metrics
from ..record import new_request_id
from ..runtimes import BodyTooLarge
from ..state import Gateway
from ..typedefs import GATEWAY, LEADER, RUN_DIR
from .scraper_share import FOLLOW_POLL_S, EngineShare
from ..engine.signals import EngineLoad, ParseError, ScrapeSpec, combine, parse, specs_for

# A path the runtime does not serve (404/405/501) is asked again this much later.
UNSUPPORTED_RETRY_S = 60.0


@dataclass(frozen=True, slots=True)
class Scrape:
    """One backend's answers of one round, and when they were all in (monotonic)."""

    answers: tuple[tuple[str, EngineLoad | str], ...]   # per path: a reading or why none
    at: float

    @property
    def readings(self) -> list[EngineLoad]:
        return [a for _, a in self.answers if isinstance(a, EngineLoad)]

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(path, a) for path, a in self.answers if isinstance(a, str)]


async def scrape_backend(state: BackendState, engine: EngineConfig) -> Scrape | None:
    """Ask each load path of the backend's kind at once; None when there is none to ask."""
    now = time.monotonic()
    paths = [s for s in specs_for(state.config.kind)
             if state.engine.skip_until.get(s.path, 0.0) <= now]
    if not paths:
        return None
    answers = await asyncio.gather(*(_scrape_path(state, s, engine.interval_s)
                                     for s in paths))
    return Scrape(tuple(zip((s.path for s in paths), answers)), time.monotonic())


async def _scrape_path(state: BackendState, spec: ScrapeSpec,
                       timeout_s: float) -> EngineLoad | str:
    """The reading at one path, or the reason (a fixed label) it gave none."""
    kind = state.config.kind
    try:
        status, body = await state.runtime.scrape(spec.path, new_request_id(), timeout_s)
        return parse(kind, spec.path, status, body, _runtime_models(state))
    except ParseError as err:
        return err.reason
    except UpstreamError as err:
        return str(err.reason)
    except BodyTooLarge:
        return "too_large"
    except Exception as exc:  # noqa: BLE001 - one backend's oddity must not stop the round
        engine_logger.debug("scraping %s of backend %s failed: %s: %s", spec.path,
                            state.name, type(exc).__name__, exc)
        return "error"


def _runtime_models(state: BackendState) -> tuple[str, ...] | None:
    """The runtime's own ids of the backend's models (Ollama's `loaded` compares them)."""
    models = state.config.models
    if models is not None:
        return tuple(models.values())
    return state.discovered_models or None


def record(state: BackendState, scrape: Scrape, engine: EngineConfig,
           metrics: Metrics) -> None:
    """Apply one backend's Scrape: a fresh reading, or failures that let the last one age."""
    view = state.engine
    for path, answer in scrape.answers:
        if not isinstance(answer, str):
            view.skip_until.pop(path, None)
            continue
        metrics.engine_scrape_failures.labels(state.config.label, answer).inc()
        if answer == "unsupported":
            if path not in view.skip_until:
                engine_logger.info("backend %s does not serve %s; asking again every %g s",
                                   state.name, path, UNSUPPORTED_RETRY_S)
            view.skip_until[path] = scrape.at + UNSUPPORTED_RETRY_S
        else:
            view.skip_until.pop(path, None)
    reading = combine(scrape.readings)
    if reading is not None:
        if view.failure is not None:
            engine_logger.info("engine load of backend %s is readable again", state.name)
        view.record(reading, scrape.at, engine.stale_after_s, state.in_flight)
    else:
        reason = scrape.failures[0][1] if scrape.failures else "none"
        if view.failure is None:
            engine_logger.warning("engine load of backend %s unreadable (%s): routing on "
                                  "the gateway's own count once the last reading is stale",
                                  state.name, reason)
        view.fail(reason)


async def scrape_round(gateway: Gateway, blocked: Iterable[str] = ()) -> frozenset[str]:
    """Scrape every backend that exposes load, publish the gauges, and wake the queue's
    waiters when a backend that was saturated has room now (or its reading went stale).
    Returns the names of the backends saturated after this round, for the next one."""
    engine = gateway.config.engine

    async def one(state: BackendState) -> None:
        scrape = await scrape_backend(state, engine)
        # A reload may have replaced the backend meanwhile: its answer is of no use then.
        if scrape is not None and gateway.states.get(state.name) is state:
            record(state, scrape, engine, gateway.metrics)

    await asyncio.gather(*(one(s) for s in list(gateway.states.values())
                           if specs_for(s.config.kind)))
    now = time.monotonic()
    publish(gateway, now)
    return wake_waiters(gateway, blocked, now)


def wake_waiters(gateway: Gateway, blocked: Iterable[str], now: float) -> frozenset[str]:
    """Wake the queue's waiters when a backend of `blocked` is no longer saturated;
    returns the backends saturated now."""
    saturated = frozenset(s.name for s in gateway.states.values()
                          if s.saturated(now, gateway.config.engine))
    if set(blocked) - saturated:
        gateway.dispatcher.queue.notify()
    return saturated


def publish(gateway: Gateway, now: float) -> None:
    """The engine gauges: a series only for a value the kind exposes and a fresh reading;
    the reading's age for every backend that is scraped, fresh or not. A discover
    backend's members make one series under its name: queue and running summed, KV usage
    the mean of the members that report it."""
    m = gateway.metrics
    ages: dict[str, float] = {}   # a discover backend's: its oldest member's
    for state in gateway.states.values():
        if state.scraped:
            age = state.engine.age(now)
            label = state.config.label
            ages[label] = max(ages.get(label, 0.0), math.inf if age is None else age)
    for name, age in ages.items():
        m.signal_age.labels(name).set(age)
    for name, readings in _by_backend(gateway, now).items():
        for gauge, field, mean in ((m.engine_queue, "waiting", False),
                                   (m.engine_running, "running", False),
                                   (m.engine_kv, "kv_usage", True)):
            values = [v for r in readings if (v := getattr(r, field)) is not None]
            value = (sum(values) / len(values) if mean else sum(values)) if values else None
            m.set_engine(gauge, name, value)


def _by_backend(gateway: Gateway, now: float) -> dict[str, list]:
    """The fresh readings per configured backend (a member's under its backend)."""
    readings: dict[str, list] = {name: [] for name in gateway.config.backends}
    for state in gateway.states.values():
        reading = state.engine.fresh(now)
        found = readings.setdefault(state.config.label, [])
        if reading is not None:
            found.append(reading)
    return readings


async def run_scrapes(gateway: Gateway, share: EngineShare | None = None) -> None:
    """A round every engine.interval_s (from the start of the last one), until cancelled.

    With a `share` (--workers N): rounds only while this worker leads; otherwise the
    leader's readings, read a few times per interval, and a try at the lock each time,
    so a leader that died is replaced within a poll."""
    loop = asyncio.get_running_loop()
    saturated: frozenset[str] = frozenset()
    while True:
        started = loop.time()
        interval = gateway.config.engine.interval_s
        try:
            if share is None or share.lead():
                saturated = await scrape_round(gateway, saturated)
                if share is not None:
                    share.publish(gateway)
            else:
                share.follow(gateway)
                saturated = wake_waiters(gateway, saturated, time.monotonic())
                interval = min(interval, FOLLOW_POLL_S)
        except Exception:
            engine_logger.exception("engine scrape round failed")
        await asyncio.sleep(max(0.0, started + interval - loop.time()))


async def engine_scrapes(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: scraping runs in the background; serving starts without waiting for it.
    Under --workers the lock is the health checks' (released by them, after this)."""
    run = app.get(RUN_DIR)
    share = EngineShare(run, app[LEADER]) if run is not None else None
    task = asyncio.create_task(run_scrapes(app[GATEWAY], share))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
