"""`gateway serve --workers N`: N worker processes under gunicorn's arbiter.

The process `gateway serve` started is the master (gunicorn's `Arbiter`); each worker
runs the app with aiohttp's gunicorn worker class. What the gateway changes in it:

- Listening: one SO_REUSEPORT socket per worker slot, all on the port, bound by the
  master; each worker accepts on its slot's socket only, and the kernel spreads new
  connections over them. With one socket shared by all workers (gunicorn's default),
  the worker that wakes first accepts a whole burst (its event loop accepts until the
  queue is empty) and its keep-alive clients stay. gunicorn's `reuse_port` has each
  worker bind its own socket instead, which spreads connections as well, but a worker's
  socket then dies with it and the connections waiting in it are reset; a slot's socket
  stays open in the master, and the worker that replaces a dead one takes it over.
- SIGHUP: gunicorn's own replaces every worker; here it is passed to every worker,
  whose app reloads gateway.yaml in place (gateway/reload.py), dropping no request.
  `POST /admin/reload` on any worker asks the master for the same.
- No worker outlives the master, however it dies: each worker asks the kernel for
  SIGKILL when its parent exits (PR_SET_PDEATHSIG).
- SIGTERM reaches every worker at once; each drains (relay/drain.py) within `server.drain_s`,
  and the master waits drain_s + 5 s before it kills what is left.
- A worker that dies is replaced; its live gauges are dropped from the metrics.
- The per-server directory (workers/rundir.py) is made before the first worker and removed
  at exit; prometheus-client's multiprocess mode keeps its files there.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
import sys
import tempfile
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker, GunicornWebWorker
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.sock import TCP6Socket, TCPSocket

from ..config import Config, ConfigError, load_config
from .listener import bound, listen
from ..log import server_logger
from ..workers.rundir import OwnedRunDir, RunDir

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run(config: Config, path: str, host: str, port: int, workers: int) -> int:
    # prometheus-client picks its value class when first imported: before the app is.
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the multiprocess dir was set")
    try:
        owned = OwnedRunDir()
    except OSError as exc:
        print(f"server: cannot make the workers' shared directory under "
              f"{tempfile.gettempdir()} (set TMPDIR): {exc.strerror or exc}", file=sys.stderr)
        return 1
    master = os.getpid()
    os.environ[MULTIPROC_ENV] = owned.run.metrics
    try:
        from .serve import prepare_process, tune_gc
        prepare_process()
        port = check_port(host, port)
        slots = [listen(host, port, reuse_port=True) for _ in range(workers)]
        tune_gc()   # before the forks: the workers share the frozen startup heap's pages
        server_logger.info("serving on http://%s:%s (pid %s, %d workers)",
                           host, port, master, workers)
        GunicornApp(options(config, host, port, workers, owned),
                    worker_app(config, path, owned.run), slots).run()
    except SystemExit as done:   # gunicorn's way out, in the master and in each worker
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    finally:
        if os.getpid() == master:   # a worker leaves through here too, after fork
            owned.remove()
    return 0


def options(config: Config, host: str, port: int, workers: int,
            owned: OwnedRunDir) -> dict:
    def pre_fork(arbiter: Arbiter, worker: GunicornWebWorker) -> None:
        # The lowest free slot: a replacement takes over the dead worker's socket.
        taken = {getattr(w, "slot", None) for w in arbiter.WORKERS.values()}
        free = [i for i in range(workers) if i not in taken]
        worker.slot = free[0] if free else worker.age % workers   # (SIGTTIN: more workers)

    def post_fork(_arbiter: Arbiter, _worker: GunicornWebWorker) -> None:
        owned.release_in_child()

    def child_exit(_arbiter: Arbiter, worker: GunicornWebWorker) -> None:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid, owned.run.metrics)   # its live gauges

    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": f"{__name__}.GatewayWorker",
        "backlog": 1024,
        # The app's drain is bounded by drain_s; the master's SIGKILL is the backstop.
        "graceful_timeout": math.ceil(config.server.drain_s + 5),   # whole seconds
        "timeout": 30,   # a worker whose event loop stalls this long is replaced
        "worker_tmp_dir": owned.run.path,
        "control_socket_disable": True,   # it would be a file in the working directory
        "logger_class": f"{__name__}.GatewayLog",
        "proc_name": "gateway",
        "pre_fork": pre_fork,
        "post_fork": post_fork,
        "child_exit": child_exit,
    }


def check_port(host: str, port: int) -> int:
    """Fail at once, with one line, when the port is taken; resolve port 0.

    Bound without SO_REUSEPORT: the slots' sockets must not join another server's
    SO_REUSEPORT group on the same port by mistake.
    """
    with bound(host, port) as probe:
        return probe.getsockname()[1]


class Supervisor(Arbiter):
    def __init__(self, app: BaseApplication, slots: list[socket.socket]) -> None:
        self._slots = slots
        super().__init__(app)

    def start(self) -> None:
        # Handed to gunicorn as already listening sockets, so it binds none itself.
        kind = TCP6Socket if self._slots[0].family == socket.AF_INET6 else TCPSocket
        self.LISTENERS = [kind(s.getsockname(), self.cfg, self.log, fd=s.detach())
                          for s in self._slots]
        super().start()

    def handle_hup(self) -> None:
        """Reload every worker in place instead of replacing them all."""
        self.log.info("SIGHUP: every worker reloads its config")
        self.kill_workers(signal.SIGHUP)

    def handle_usr2(self) -> None:
        # A re-exec'd master would share the run directory with this one.
        self.log.warning("SIGUSR2 (binary upgrade) is not supported; ignored")


class GunicornApp(BaseApplication):
    def __init__(self, settings: dict, factory: Callable[[], Awaitable[web.AppRunner]],
                 slots: list[socket.socket]) -> None:
        self._settings, self._factory, self._slots = settings, factory, slots
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._settings.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[[], Awaitable[web.AppRunner]]:
        return self._factory

    def run(self) -> None:
        Supervisor(self, self._slots).run()


def worker_app(config: Config, path: str, run: RunDir) -> Callable[[], Awaitable[web.AppRunner]]:
    """The coroutine that builds a worker's app in its own event loop, after the fork."""
    async def make() -> web.AppRunner:
        from ..log import StderrAccessLog
        from ..app import create_app
        from ..reload import file_identity
        from ..typedefs import CONFIG_SEEN, SUPERVISOR
        # Before the read: a SIGHUP or an edit while this worker starts is not lost, as
        # the file watch then compares against the file this config came from.
        seen = file_identity(path)
        app = create_app(current_config(config, path), path, access_log=StderrAccessLog(),
                         run_dir=run)
        app[SUPERVISOR] = os.getppid()
        if seen is not None:
            app[CONFIG_SEEN] = seen
        app.on_startup.append(_ready)
        return web.AppRunner(app, handle_signals=False, access_log=None,
                             handler_cancellation=True,
                             shutdown_timeout=config.server.drain_s + 5)
    return make


async def _ready(_app: web.Application) -> None:
    # After the app's start-up (first health round included): the worker accepts now.
    server_logger.info("worker %s ready", os.getpid())


def current_config(started_with: Config, path: str) -> Config:
    """A replacement worker starts on the file as it is now, like its siblings."""
    try:
        return load_config(path)
    except ConfigError:
        server_logger.warning("gateway.yaml is invalid now; this worker starts on the "
                              "config the server started with")
        return started_with


class GatewayWorker(GunicornUVLoopWebWorker):
    def init_process(self) -> None:
        die_with_parent(self.ppid)
        mine = self.sockets[self.slot]
        for other in self.sockets:
            if other is not mine:
                other.close()   # the master keeps every slot's socket open
        self.sockets = [mine]
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        # Until the app installs its reload handler a SIGHUP must not kill the worker
        # (the default action): the master passes every SIGHUP on.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the master exits, by any death.

    aiohttp's worker also notices a new parent, but only once a second and then
    drains for up to drain_s; a killed master must not leave workers serving.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass   # not Linux: aiohttp's parent check is what is left
    if os.getppid() != parent:
        os._exit(1)   # the master died before prctl took effect


class GatewayLog(glogging.Logger):
    """gunicorn's records go through the gateway's JSON log handler; no access log."""

    def setup(self, cfg) -> None:
        self.cfg = cfg
        self.error_log.setLevel(logging.INFO)
        self.error_log.propagate = True
        self.error_log.addFilter(_closed_twice)
        self.access_log.disabled = True


def _closed_twice(record: logging.LogRecord) -> bool:
    # aiohttp's shutdown already closed the worker's socket; gunicorn's close after it
    # fails with EBADF and would log an "Error" line at every clean exit.
    return not record.getMessage().startswith("Error while closing socket")
