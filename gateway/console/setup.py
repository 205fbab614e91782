"""`setup_console(app)`: the console's routes, its parts, and its background work."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from aiohttp import web

from ..workers.leader import Published
from ..log import server_logger
from ..typedefs import ACCESS_LOG, CONSOLE, GATEWAY, LEADER, RUN_DIR
from . import pages, views
from .history import STEP_S, History, read_counts
from .parts import Console, worker_figures
from .session import Sessions
from .share import EVERY_S, WorkerShare
from .tail import Tail, entries

HISTORY_FILE = "console-history.json"


def setup_console(app: web.Application) -> None:
    """After the app's access log and run directory are set (create_app)."""
    run = app.get(RUN_DIR)
    tail = Tail(app[ACCESS_LOG])
    app[CONSOLE] = Console(Sessions(run), tail, History(),
                           WorkerShare(run) if run is not None else None)
    app[ACCESS_LOG] = tail
    app.cleanup_ctx.append(_sampling)
    if run is not None:
        app.cleanup_ctx.append(_publishing)
    add = app.router
    add.add_get("/admin/", pages.console_page)
    add.add_get("/admin", pages.console_page)
    add.add_get("/admin/login", pages.login_page)
    add.add_post("/admin/login", pages.login)
    add.add_post("/admin/logout", pages.logout)
    add.add_get("/admin/static/{name}", pages.asset)
    add.add_get("/admin/console/state", views.state)
    add.add_get("/admin/console/session", views.session)


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    """Every STEP_S one point of history; under --workers the leader (the worker that
    checks health for the server) samples the server's counters and publishes its ring,
    the others take the ring it published."""
    console, gateway = app[CONSOLE], app[GATEWAY]
    leader = app.get(LEADER)
    published = Published(app[RUN_DIR].file(HISTORY_FILE), "console history",
                          server_logger) if leader is not None else None

    async def sample() -> None:
        while True:
            if leader is None or leader.leading:
                console.history.add(time.time(), read_counts(gateway.metrics))
                if published is not None and console.share.is_open():
                    published.write(console.history.dump())
            elif (points := published.read_new()) is not None:
                console.history.load(points)
            await asyncio.sleep(STEP_S)

    task = asyncio.create_task(sample())
    yield
    task.cancel()


async def _publishing(app: web.Application) -> AsyncIterator[None]:
    """Under --workers, while a console is open: this worker's figures and tail, each
    EVERY_S, for the worker that answers the page."""
    console, gateway = app[CONSOLE], app[GATEWAY]
    share = console.share

    async def publish() -> None:
        while True:
            if share.is_open():
                share.publish({**worker_figures(gateway), "tail": entries(console.tail.lines)})
            await asyncio.sleep(EVERY_S)

    task = asyncio.create_task(publish())
    yield
    task.cancel()
    share.remove()
