"""Applying edits of gateway.yaml while serving: file watch, SIGHUP, POST /admin/reload.

A reload builds and validates the whole new config before anything changes;
then `Gateway.apply()` swaps it in. An invalid edit changes nothing: its
problems are logged exactly as `gateway check` prints them, counted, and kept
for GET /admin/config until a later reload succeeds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web

from .config import Config, ConfigError, load_config
from .log import config_logger
from .state import Gateway
from .typedefs import CONFIG_PATH, CONFIG_SEEN, GATEWAY, SUPERVISOR

POLL_S = 0.25      # how often the file's identity is looked at
SETTLE_S = 0.3     # an edit must stay unchanged this long: no half-written files
EVERYWHERE_WAIT_S = 5.0   # POST /admin/reload's wait for the master's SIGHUP to come back


@dataclass
class ReloadResult:
    ok: bool
    problems: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"status": "ok" if self.ok else "error", "problems": self.problems,
                "restart_required": self.restart_required, "at": self.at}


def reload_config(gateway: Gateway, path: str) -> ReloadResult:
    try:
        config = load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            config_logger.error("reload refused: %s", problem)
        gateway.metrics.config_reloads.labels("error").inc()
        result = ReloadResult(False, err.problems)
        gateway.last_reload_error = result
        gateway.reloads += 1
        return result
    restart = restart_required(gateway.config, config)
    for item in restart:
        config_logger.warning("reload: %s needs a restart to take effect", item)
    gateway.apply(config)
    gateway.metrics.config_reloads.labels("ok").inc()
    gateway.last_reload_error = None
    gateway.reloads += 1
    config_logger.info("config reloaded: %d backends, %d models", len(config.backends),
                       len(gateway.table.model_names))
    result = gateway.last_reload = ReloadResult(True, restart_required=restart)
    return result


async def reload_everywhere(app: web.Application, path: str) -> ReloadResult:
    """POST /admin/reload: this process, or under --workers every worker.

    A worker asks the master, which sends SIGHUP to every worker, this one
    included; its answer is this worker's own reload. Should the master not
    answer in time, this worker at least reloads itself.
    """
    gateway = app[GATEWAY]
    master = app.get(SUPERVISOR)
    if master is None:
        return reload_config(gateway, path)
    seen = gateway.reloads
    try:
        os.kill(master, signal.SIGHUP)
    except ProcessLookupError:
        return reload_config(gateway, path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVERYWHERE_WAIT_S
    while gateway.reloads == seen and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if gateway.reloads == seen:
        config_logger.warning("the master passed no SIGHUP on; this worker reloads alone")
        return reload_config(gateway, path)
    return gateway.last_reload_error or gateway.last_reload


def restart_required(old: Config, new: Config) -> list[str]:
    """Settings bound when the listener was made: reported, never half-applied."""
    changed = []
    # cors_origins shapes the routes themselves (aiohttp-cors wraps them at start-up).
    for key in ("host", "port", "cors_origins"):
        if getattr(old.server, key) != getattr(new.server, key):
            changed.append(f"server.{key}")
    # The tracer and its exporter thread live as long as the app (tracing/setup.py).
    if old.tracing != new.tracing:
        changed.append("tracing")
    if old.state.redis != new.state.redis:
        changed.append("state.redis")   # the limiter is chosen once, at start
    if old.state.sqlite != new.state.sqlite:
        changed.append("state.sqlite")  # so is the budgets' store
    return changed


def file_identity(path: str) -> tuple | None:
    """Changes when the file is edited in place, replaced by rename, or its symlink swapped."""
    try:
        st = os.stat(path)   # follows symlinks: a ConfigMap swap changes the target
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, os.path.realpath(path))
    except OSError:
        return None


async def watch_file(gateway: Gateway, path: str, seen: tuple | None = None) -> None:
    """`seen`: the file as it was when the running config was read, if known; an edit
    made since then (a worker still starting up) is reloaded at once."""
    seen = seen or file_identity(path)
    while True:
        await asyncio.sleep(POLL_S)
        current = file_identity(path)
        if current == seen or current is None:
            continue
        # Debounce: wait until the file stops changing before reading it.
        while True:
            await asyncio.sleep(SETTLE_S)
            settled = file_identity(path)
            if settled == current:
                break
            current = settled
        seen = current
        if current is not None:
            reload_config(gateway, path)


async def config_watch(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: watch the config file and reload on SIGHUP, when serving from a file."""
    path = app.get(CONFIG_PATH)
    if not path:
        yield
        return
    gateway = app[GATEWAY]
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watch_file(gateway, path, app.get(CONFIG_SEEN)))

    def on_hup() -> None:
        # Under --workers the master passes SIGHUP to every worker: each reloads itself.
        reload_config(gateway, path)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        hup = True
    except (NotImplementedError, RuntimeError, ValueError):
        hup = False   # not the main thread (tests), or no signals on this platform
    yield
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
