"""Active health checks and model discovery, run in the background for the app's lifetime.

Each backend's health path is polled every `interval_s` (with jitter, so many
gateways don't beat in step) and flips state only after `unhealthy_after` /
`healthy_after` consecutive results. A backend is not trusted before its first
check: one still loading at start-up gets no traffic until it answers.
Backends with no `models` list are asked for their models on every round.
Checks decide only `healthy`: a passing check ends what failing checks did, never
a passive ejection (see `dispatch/ejection.py`).
"""

from __future__ import annotations

import asyncio
import random
from typing import AsyncIterator

from aiohttp import web

from .config import HealthConfig
from .dispatch import BackendState
from .errors import UpstreamError
from .log import health_logger
from .record import new_request_id
from .state import Gateway
from .typedefs import GATEWAY


async def check_round(gateway: Gateway) -> None:
    states = list(gateway.states.values())
    changed = await asyncio.gather(*(check_backend(gateway, s) for s in states))
    if any(changed):
        gateway.rebuild()
    gateway.publish_backend_up()


async def check_backend(gateway: Gateway, state: BackendState) -> bool:
    """Probe one backend; True when its discovered models changed."""
    timeout = gateway.config.health.timeout_s
    runtime = state.runtime
    try:
        ok = await runtime.probe(new_request_id(), timeout)
    except UpstreamError:
        ok = False
    apply_result(state, ok, gateway.config.health)
    if ok and state.config.models is None:
        return await discover_models(state, timeout)
    return False


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
    await check_round(gateway)

    async def loop() -> None:
        while True:
            interval = gateway.config.health.interval_s
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                await check_round(gateway)
            except Exception:
                health_logger.exception("health check round failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
