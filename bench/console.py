"""What the operator console costs the gateway: one refresh of all its JSON, and memory.

Run from the repository root:

    python -m bench.console            # about 10 s

Builds a gateway app with 20 backends (echo, so no runtime is needed) and 10 client keys,
fills its 15-minute history (every point, for every backend) and its tail (200 real
requests), then makes REFRESHES refreshes as the page does, signed in with the session
cookie, from a client in another thread: with the history and the config
(GET /admin/console/state, /admin/config), as at the first refresh and whenever the
history has a new point, and without them (the others; the state carries the keys'
/admin/keys figures and the queue's rows). The server's CPU is its own thread's
(time.thread_time), so the client's work is not counted. Also prints the history ring's
memory (tracemalloc), what the console adds to each proxied request (the tail's append,
timed alone), and the queue's rows with a full waiting room (`queue.max_size` waiters,
timed alone: the refreshes above have nobody waiting).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import timeit
import tracemalloc
from pathlib import Path
from types import MappingProxyType

if __package__ in (None, ""):      # run as a file: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from gateway.log import AccessLog  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import ApiKey, Config, QueueConfig, ServerConfig, backend  # noqa: E402
from gateway.dispatch.scheduler import Scheduler, Waiter  # noqa: E402
from gateway.limits.tickets import KeyState, Ticket  # noqa: E402
from gateway.console.history import BOUNDS, POINTS, Counts, History  # noqa: E402
from gateway.console.tail import Tail  # noqa: E402
from gateway.typedefs import CONSOLE  # noqa: E402

ADMIN = "bench-admin-key"
BACKENDS, KEYS, REFRESHES = 20, 10, 200
PATHS = ("/admin/console/state", "/admin/config")


def fleet() -> Config:
    backends = [backend(f"gpu-{i:02d}", "echo", None, models=(f"model-{i % 5}",),
                        max_concurrency=32) for i in range(BACKENDS)]
    keys = tuple(ApiKey(f"team-{i}", f"sk-bench-{i}", rpm=600) for i in range(KEYS))
    return Config(backends=MappingProxyType({b.name: b for b in backends}),
                  server=ServerConfig(admin_key=ADMIN), auth_keys=keys)


def fill(history: History, names: list[str]) -> None:
    """Every point of the ring, every backend busy (the largest the history gets)."""
    for step in range(POINTS + 1):
        counts = {}
        for i, name in enumerate(names):
            n = step * (10 + i)
            counts[name] = Counts(n, n // 50, [n * j / len(BOUNDS) for j in range(len(BOUNDS))])
        history.add(1_000_000.0 + step * history.step_s, counts)


class ServerThread:
    """The gateway in a thread of its own, so its CPU can be read apart from the client's."""

    def __init__(self, make_app) -> None:
        self.make_app, self.loop = make_app, asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.app = self.loop.run_until_complete(self.make_app())
        self.runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the gateway did not start")

    def cpu(self) -> float:
        """The server thread's CPU seconds so far."""
        return asyncio.run_coroutine_threadsafe(_thread_time(), self.loop).result(10)

    def call(self, fn) -> None:
        """Run `fn` in the server's thread, and wait for it."""
        async def run() -> None:
            fn()
        asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def _thread_time() -> float:
    return time.thread_time()


async def measure(server: ServerThread, refreshes: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{server.port}"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.post(base + "/admin/login", data={"key": ADMIN},
                          allow_redirects=False) as r:
            assert r.status == 303, r.status
        for i in range(200):   # the tail, full
            async with s.post(base + "/v1/chat/completions", headers={
                    "Authorization": f"Bearer sk-bench-{i % KEYS}"}, json={
                    "model": f"model-{i % 5}",
                    "messages": [{"role": "user", "content": "a few words"}]}) as r:
                await r.read()
        async with s.get(base + PATHS[0]) as r:
            first = await r.read()
            version = (await r.json())["history_version"]
        full = PATHS   # a page's first refresh, and one after each new history point
        steady = (f"{PATHS[0]}?history={version}",)   # the others
        costs = {}
        for name, paths in (("full", full), ("steady", steady)):
            per_refresh = []
            for _ in range(refreshes):
                if name == "full":   # as after a new point: the history's JSON made anew
                    server.call(lambda: setattr(server.app[CONSOLE].history, "_json", None))
                before = server.cpu()
                for path in paths:
                    async with s.get(base + path) as r:
                        await r.read()
                per_refresh.append(server.cpu() - before)
            costs[name] = per_refresh
    # The page refreshes every 2 s and the history has a new point every 5 s: 2 in 5
    # refreshes carry it.
    mix = [f * 0.4 + st * 0.6 for f, st in zip(costs["full"], costs["steady"])]
    out = {"state_bytes": len(first)}
    for name, values in (*costs.items(), ("mixed", mix)):
        out[name] = (statistics.fmean(values) * 1000, statistics.median(values) * 1000,
                     statistics.quantiles(values, n=10)[-1] * 1000)
    return out


def history_memory(names: list[str]) -> int:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    history = History()
    fill(history, names)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del history
    return size


def tail_cost_ns() -> float:
    """A request's extra work with the console: the tail's append, next to the bare log."""
    class Off(AccessLog):
        def enabled(self) -> bool:
            return False
    tail = Tail(Off())
    fields = {"request_id": "r", "endpoint": "chat", "model": "m", "backend": "b",
              "status": 200}
    n = 200_000
    return timeit.timeit(lambda: tail.write(fields), number=n) / n * 1e9


def queue_rows_us(waiters: int) -> float:
    """`Scheduler.rows` (what a refresh reads of the waiting room) with `waiters` waiting,
    over 5 models, 3 classes and the KEYS keys."""
    scheduler = Scheduler()
    keys = [KeyState(f"team-{i}") for i in range(KEYS)]
    now = time.monotonic()
    for i in range(waiters):
        model = f"model-{i % 5}"
        scheduler._seq += 1
        scheduler._add(Waiter(Ticket(keys[i % KEYS], i % 3), scheduler._seq, now - i * 0.01,
                              QueueConfig().promote_after_s, model, model, lambda: None))
    n = 200
    return timeit.timeit(scheduler.rows, number=n) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refreshes", type=int, default=REFRESHES)
    args = parser.parse_args()
    names = [f"gpu-{i:02d}" for i in range(BACKENDS)]

    async def make_app() -> web.Application:
        app = create_app(fleet())
        fill(app[CONSOLE].history, names)
        return app
    server = ServerThread(make_app)
    server.start()
    try:
        result = asyncio.run(measure(server, args.refreshes))
    finally:
        server.stop()
    print(f"one refresh, {BACKENDS} backends, {KEYS} keys, full history and tail, "
          f"{args.refreshes} refreshes each; gateway CPU (goal <= 5 ms):")
    what = {"full": "with history (made anew) and config (first, or a new history point)",
            "steady": "state and keys, history unchanged",
            "mixed": "as the page asks over time (2 in 5 with history)"}
    for name, label in what.items():
        mean, p50, p90 = result[name]
        print(f"  {label}: mean {mean:.2f} ms, p50 {p50:.2f} ms, p90 {p90:.2f} ms")
    print(f"  /admin/console/state with history: {result['state_bytes'] / 1024:.0f} KiB")
    print(f"history ring, {BACKENDS} backends x {POINTS} points: "
          f"{history_memory(names) / 1024:.0f} KiB")
    print(f"per proxied request, the tail's append: {tail_cost_ns():.0f} ns")
    full = QueueConfig().max_size
    print(f"the queue's rows with {full} waiting (queue.max_size): "
          f"{queue_rows_us(full):.0f} µs a refresh")


if __name__ == "__main__":
    main()
