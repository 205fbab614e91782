"""Active health checks and model discovery, run in the background for the app's lifetime.

Each backend's health path is polled every `interval_s` (with jitter, so many
gateways don't beat in step) and flips state only after `unhealthy_after` /
`healthy_after` consecutive results. A backend is not trusted before its first
check: one still loading at start-up gets no traffic until it answers.
Backends with no `models` list are asked for their models on every round.
Checks decide only `healthy`: a passing check ends what failing checks did, never
a passive ejection (see `dispatch/ejection.py`).
Under `--workers N` one worker runs the rounds for the server and the others take
its results (health/checks_share.py).
"""

from __future__ import annotations

import asyncio
import random
from typing import AsyncIterator

from aiohttp import web

from ..config import HealthConfig
from ..dispatch import BackendState
from ..errors import UpstreamError
from .checks_share import FOLLOW_POLL_S, HealthShare
from ..log import health_logger
from ..record import new_request_id
from ..state import Gateway
from ..typedefs import GATEWAY, LEADER, RUN_DIR


async def check_round(gateway: Gateway) -> dict[str, bool]:
    """One round over every backend: which answered its probe."""
    states = list(gateway.states.values())
    results = await asyncio.gather(*(check_backend(gateway, s) for s in states))
    if any(changed for _, changed in results):
        gateway.rebuild()
    gateway.publish_backend_up()
    return {state.name: ok for state, (ok, _) in zip(states, results)}


async def check_backend(gateway: Gateway, state: BackendState) -> tuple[bool, bool]:
    """Probe one backend: (it answered, its discovered models changed)."""
    timeout = gateway.config.health.timeout_s
    runtime = state.runtime
    try:
        ok = await runtime.probe(new_request_id(), timeout)
    except UpstreamError:
        ok = False
    apply_result(state, ok, gateway.config.health)
    if ok and state.config.models is None:
        return ok, await discover_models(state, timeout)
    return ok, False


def apply_result(state: BackendState, ok: bool, health: HealthConfig) -> None:
    """Count one check; flip health exactly at the configured thresholds."""
    was = state.healthy
    if ok:
        state.health_ok_streak += 1
        state.health_fail_streak = 0
        if not state.checked or state.health_ok_streak >= health.healthy_after:
            state.healthy = True
        # A passive ejection is not ended here: /health may answer while completions
        # hang (vLLM does). It stands for its cooldown, then a real request decides.
    else:
        state.health_fail_streak += 1
        state.health_ok_streak = 0
        if not state.checked or state.health_fail_streak >= health.unhealthy_after:
            state.healthy = False
    state.checked = True
    if was != state.healthy:
        health_logger.warning("backend %s is now %s", state.name,
                              "healthy" if state.healthy else "unhealthy")


async def discover_models(state: BackendState, timeout: float) -> bool:
    try:
        models = await state.runtime.list_models(new_request_id(), timeout)
    except UpstreamError:
        return False
    if models is None or models == state.discovered_models:
        return False
    state.discovered_models = models
    health_logger.info("backend %s serves %s", state.name, ", ".join(models) or "no model")
    return True


async def health_checks(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one round before serving, then a round every interval."""
    gateway = app[GATEWAY]
    run = app.get(RUN_DIR)
    share = HealthShare(run, app[LEADER]) if run is not None else None
    if share is None:
        await check_round(gateway)
    else:
        await first_shared_round(gateway, share)
    task = asyncio.create_task(rounds(gateway) if share is None else shared_rounds(gateway, share))
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    if share is not None:
        share.release()


async def rounds(gateway: Gateway) -> None:
    while True:
        interval = gateway.config.health.interval_s
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
        await safe_round(gateway)


async def safe_round(gateway: Gateway) -> dict[str, bool] | None:
    try:
        return await check_round(gateway)
    except Exception:
        health_logger.exception("health check round failed")
        return None


async def first_shared_round(gateway: Gateway, share: HealthShare) -> None:
    """Before serving: the leader's first round, or (a follower) its results.

    A worker that joins a running server finds them at once; at the server's start
    the followers wait for the leader's round, and run one of their own only if
    none comes (the leader died starting up): no backend is trusted unchecked.
    """
    if share.lead():
        share.publish(gateway, await check_round(gateway))
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gateway.config.health.timeout_s + 2
    while loop.time() < deadline:
        if share.follow(gateway):
            return
        await asyncio.sleep(0.05)
    await check_round(gateway)


async def shared_rounds(gateway: Gateway, share: HealthShare) -> None:
    """The leader checks every interval; a follower reads, and tries to lead each interval."""
    loop = asyncio.get_running_loop()
    while True:
        interval = gateway.config.health.interval_s
        if share.leading:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            answered = await safe_round(gateway)
            if answered is not None:
                share.publish(gateway, answered)
            continue
        deadline = loop.time() + interval * random.uniform(0.9, 1.1)
        while loop.time() < deadline:
            share.follow(gateway)
            await asyncio.sleep(FOLLOW_POLL_S)
        if share.lead():   # the leader is gone: check now, not an interval later
            answered = await safe_round(gateway)
            if answered is not None:
                share.publish(gateway, answered)
