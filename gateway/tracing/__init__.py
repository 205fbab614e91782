"""OpenTelemetry traces: one SERVER span per API request, one CLIENT span per upstream try.

Nothing here imports OpenTelemetry: with no `tracing` section the SDK is never loaded,
`Gateway.tracing` stays None and every call site is one `is not None` test.

    setup.py     the tracer provider, sampler, batch processor and exporter of one app
    export.py    the exporter guard: a collector that is down is counted and logged once
    spans.py     `RequestTrace`: a request's span, its tries' spans, its GenAI attributes
    decision.py  the routing decision as span attributes: candidates, chosen, why
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web


async def tracing(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: start the tracer when the config asks for it; flush and stop it at
    the end. Made in the serving process (after any fork), as the exporter is a thread."""
    from ..typedefs import GATEWAY
    gateway = app[GATEWAY]
    config = gateway.config.tracing
    if config is None:
        yield
        return
    from .setup import start_tracing
    live = gateway.tracing = start_tracing(config, gateway.metrics)
    try:
        yield
    finally:
        gateway.tracing = None
        # A thread: the last export may go to a collector served by this very loop.
        await asyncio.get_running_loop().run_in_executor(None, live.shutdown)
