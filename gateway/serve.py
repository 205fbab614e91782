"""Running the app: event loop, listener, workers, signals and draining."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys

from aiohttp import web
from prometheus_client import disable_created_metrics

from .accesslog import StderrAccessLog
from .app import create_app
from .config import Config
from .log import quiet_client_faults, quiet_trace_exporter, server_logger
from .typedefs import WORKER_PIDS


def prepare_process() -> None:
    """The process-wide settings, made once before any app is built."""
    # `_created` series double the exposition and no dashboard reads them.
    disable_created_metrics()
    quiet_client_faults()
    quiet_trace_exporter()


def run(config: Config, path: str, host: str, port: int, workers: int) -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    # Until the app installs its reload handler, a SIGHUP must not kill the process
    # (its default action): the listener is bound, so a supervisor may already send one.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    prepare_process()
    tune_gc()   # before the fork: the workers share the frozen startup heap's pages
    socks = _listen_all(host, port, workers)
    children = [_fork_worker(config, path, socks, i) for i in range(1, workers)]
    for sock in socks[1:]:
        sock.close()   # each child serves its own
    try:
        _serve(config, path, socks[0], tuple(children))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return 0


def _listen_all(host: str, port: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker, all on the same port with SO_REUSEPORT.

    With one shared socket, the worker that wakes first accepts every pending
    connection (libuv accepts until the queue is empty), and keep-alive clients then
    stay on it: a bench run saw one worker take all 64 connections. With a socket
    each, the kernel spreads new connections over the workers evenly.
    """
    socks = [_listen(host, port, reuse_port=workers > 1)]
    port = socks[0].getsockname()[1]   # port 0: the others join the port the first got
    socks += [_listen(host, port, reuse_port=True) for _ in range(workers - 1)]
    return socks


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"server: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    sock.listen(1024)
    return sock


def _fork_worker(config: Config, path: str, socks: list[socket.socket], index: int) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            for i, sock in enumerate(socks):
                if i != index:
                    sock.close()   # a child holding another's socket would keep it open
            _serve(config, path, socks[index])
        finally:
            os._exit(0)
    return pid


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
    sharing its pages instead of copying them when the collector touches them.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _serve(config: Config, path: str, sock: socket.socket,
           workers: tuple[int, ...] = ()) -> None:
    async def make_app() -> web.Application:
        # Built inside run_app's loop: the ClientSession's connector needs a running loop.
        app = create_app(config, path, access_log=StderrAccessLog())
        app[WORKER_PIDS] = workers   # the first process passes SIGHUP on to the others
        return app

    host, port = sock.getsockname()[:2]
    server_logger.info("serving on http://%s:%s (pid %s)", host, port, os.getpid())
    web.run_app(make_app(), sock=sock, print=None, access_log=None, handler_cancellation=True,
                # The app's own drain (on_shutdown) bounds streams by drain_s and ends the
                # rest with an error event; aiohttp's cancellation is only the backstop.
                shutdown_timeout=config.server.drain_s + 5)
