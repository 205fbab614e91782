"""Running the app in one process: event loop, listener, signals and draining."""

from __future__ import annotations

import gc
import os
import signal
import socket

from aiohttp import web
from prometheus_client import disable_created_metrics

from ..log import StderrAccessLog
from ..app import create_app
from ..config import Config
from .listener import listen
from ..log import quiet_client_faults, quiet_trace_exporter, server_logger


def prepare_process() -> None:
    """The process-wide settings, made once before any app is built."""
    # `_created` series double the exposition and no dashboard reads them.
    disable_created_metrics()
    quiet_client_faults()
    quiet_trace_exporter()


def run(config: Config, path: str, host: str, port: int) -> int:
    """One process serving: no supervisor (`--workers N` is workers/supervise.py)."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    # Until the app installs its reload handler, a SIGHUP must not kill the process
    # (its default action): the listener is bound, so a supervisor may already send one.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    prepare_process()
    tune_gc()
    _serve(config, path, listen(host, port))
    return 0


# Objects allocated (net of those freed) between two young-generation collections.
# CPython's 700 made a collection every ~25 requests, each walking the young objects
# an asyncio request leaves around: 15-30 us per request (measured with gc.callbacks).
# Nearly all of a request's garbage is freed by reference counting; cycles are still
# collected, only in bigger, rarer batches.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Make the garbage collector's work per request small.

    The startup heap (config, metrics registry, imported modules) lives as long as the
    process: frozen, later collections no longer walk it, and forked workers keep
    sharing its pages instead of copying them when the collector touches them
    (workers/supervise.py calls this before the workers are forked).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _serve(config: Config, path: str, sock: socket.socket) -> None:
    async def make_app() -> web.Application:
        # Built inside run_app's loop: the ClientSession's connector needs a running loop.
        return create_app(config, path, access_log=StderrAccessLog())

    host, port = sock.getsockname()[:2]
    server_logger.info("serving on http://%s:%s (pid %s)", host, port, os.getpid())
    web.run_app(make_app(), sock=sock, print=None, access_log=None, handler_cancellation=True,
                # The app's own drain (on_shutdown) bounds streams by drain_s and ends the
                # rest with an error event; aiohttp's cancellation is only the backstop.
                shutdown_timeout=config.server.drain_s + 5)
