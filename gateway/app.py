"""create_app(): the only place where the gateway's parts are wired together."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp_cors
from aiohttp import hdrs, web

from .log import AccessLog
from .api import admin, info, tenancy
from .api.middleware import gateway_middleware
from .api.messages import messages
from .api.proxy import proxy
from .config import Config
from .console.setup import setup_console
from .conversations import Conversations
from .discovery.run import elastic_pools
from .endpoints import ENDPOINTS, ErrorShape
from .health.scraper import engine_scrapes
from .health.checks import health_checks
from .workers.leader import Leader
from .limits import make_limiter, make_tenants
from .metrics import Metrics
from .reload import config_watch
from .workers.rundir import RunDir
from .runtimes.http import Transport, make_session
from .state import Gateway
from .tracing import tracing
from .typedefs import ACCESS_LOG, CONFIG_PATH, CONVERSATIONS, GATEWAY, LEADER, RUN_DIR

# The gateway reads bodies itself and answers 413 with an OpenAI-shaped error as soon
# as max_body_mb is passed; aiohttp's own cap must not cut in first.
AIOHTTP_BODY_CAP = 1024 ** 4
# aiohttp has no header-read timeout, but its keep-alive timer starts when a connection
# opens and after each answer, and only a complete request head stops it (partial bytes
# do not extend it). Set short, it is the deadline for a request's headers: a client
# trickling them byte by byte (slowloris) is cut off, and an idle connection closes.
HEADER_TIMEOUT_S = 15.0
# The API answered by its own handler rather than `proxy`, by its rows' error shape:
# Anthropic's Messages (its own validation, a plan per try, its own error bodies).
HANDLERS = {ErrorShape.ANTHROPIC: messages}
# Under --workers, how often a worker copies its in-flight counts into the shared gauge.
IN_FLIGHT_EVERY_S = 1.0
# Under --workers, how often a worker's queue looks for room other workers gave back.
WAKE_EVERY_S = 0.02
RATE_LIMIT_HEADERS = tuple(f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens")
                           for what in ("limit", "remaining", "reset"))


def create_app(config: Config, config_path: str | None = None, *,
               header_timeout_s: float = HEADER_TIMEOUT_S,
               access_log: AccessLog | None = None,
               run_dir: RunDir | None = None) -> web.Application:
    """`run_dir`: the directory a server's workers share (workers/supervise.py), None alone."""
    app = web.Application(middlewares=[gateway_middleware], client_max_size=AIOHTTP_BODY_CAP,
                          handler_args={"max_field_size": 16 * 1024, "max_headers": 128,
                                        "keepalive_timeout": header_timeout_s})
    metrics = Metrics(run_dir.metrics if run_dir else None)
    app[GATEWAY] = Gateway(config, Transport(make_session()), metrics,
                           make_limiter(config, run_dir, metrics),
                           make_tenants(config, run_dir, metrics))
    app[ACCESS_LOG] = access_log or AccessLog()
    app[CONVERSATIONS] = Conversations(config)
    if config_path:
        app[CONFIG_PATH] = config_path
    app.cleanup_ctx.append(tracing)   # stopped last: the final spans are flushed
    if run_dir is not None:
        app[RUN_DIR] = run_dir
        app[LEADER] = Leader(run_dir)   # health checks and engine scrapes: one worker
        app.cleanup_ctx.append(_in_flight_gauges)
        app.cleanup_ctx.append(_other_workers_releases)
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_limiter)
    app.cleanup_ctx.append(_conversations)
    app.cleanup_ctx.append(_budgets)
    app.cleanup_ctx.append(health_checks)
    app.cleanup_ctx.append(elastic_pools)   # after the first health round: probes its members
    app.cleanup_ctx.append(engine_scrapes)
    app.cleanup_ctx.append(config_watch)
    app.on_shutdown.append(_start_draining)
    setup_console(app)   # wraps the access log: its tail
    _add_routes(app, config)
    return app


async def _start_draining(app: web.Application) -> None:
    """SIGTERM: the listener is closed already; readiness fails from now on."""
    gateway = app[GATEWAY]
    await gateway.drain.run(gateway.config.server.drain_s)


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[GATEWAY].transport.session.close()
    app[ACCESS_LOG].flush()   # the last lines of a draining gateway


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    limiter = app[GATEWAY].limiter
    await limiter.start()
    yield
    await limiter.close()


async def _conversations(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[CONVERSATIONS].close()


async def _budgets(app: web.Application) -> AsyncIterator[None]:
    """Budget counts: flushed to the state store in the background, the rest at exit."""
    budgets = app[GATEWAY].tenants.budgets
    await budgets.start()
    yield
    await budgets.close()


async def _other_workers_releases(app: web.Application) -> AsyncIterator[None]:
    """Under --workers a slot another worker gave back wakes nobody here: while requests
    wait, the queue looks again every WAKE_EVERY_S."""
    queue = app[GATEWAY].dispatcher.queue

    async def look() -> None:
        while True:
            await asyncio.sleep(WAKE_EVERY_S)
            queue.notify()

    task = asyncio.create_task(look())
    yield
    task.cancel()


async def _in_flight_gauges(app: web.Application) -> AsyncIterator[None]:
    """Under --workers a scrape reads every worker's files: each keeps its share fresh."""
    gateway = app[GATEWAY]

    async def refresh() -> None:
        while True:
            gateway.publish_in_flight()
            gateway.publish_keys()
            await asyncio.sleep(IN_FLIGHT_EVERY_S)

    task = asyncio.create_task(refresh())
    yield
    task.cancel()
    gateway.publish_keys()   # the last second's per-key counts


def _add_routes(app: web.Application, config: Config) -> None:
    proxied = [
        *(app.router.add_route(e.method, path, HANDLERS.get(e.error_shape, proxy))
          for e in ENDPOINTS for path in e.paths),
        app.router.add_get("/v1/models", info.list_models),
    ]
    app.router.add_get("/health", info.health)
    app.router.add_get("/ready", info.ready)
    app.router.add_get("/metrics", info.metrics)
    app.router.add_get("/admin/backends", admin.backends)
    app.router.add_get("/admin/keys", tenancy.admin_keys)
    app.router.add_get("/gateway/key", tenancy.own_key)
    app.router.add_get("/admin/config", admin.active_config)
    app.router.add_post("/admin/reload", admin.reload)
    origins = config.server.cors_origins
    if origins:
        # Browsers send no credentials to an LLM API; "*" with credentials is refused by
        # browsers and a leak risk, so credentials are never allowed.
        options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers=(
            "X-Request-ID", "X-Gateway-Backend", "X-Gateway-Route", "Retry-After",
            *RATE_LIMIT_HEADERS),
            allow_headers="*", allow_methods=["GET", "POST", "DELETE"])
        cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
        for route in proxied:
            cors.add(route)
        app.on_response_prepare.append(_vary_origin)   # after aiohttp-cors' own hook


async def _vary_origin(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp-cors echoes the caller's origin: a cache must not hand it to another origin.
    if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
        response.headers.add(hdrs.VARY, "Origin")
