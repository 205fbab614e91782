"""Discovery in the background: each discover backend's host resolved every interval.

No request waits on a lookup. A round that finds other addresses than the last
records them in `Gateway.members` and rebuilds the states and route table
(`Gateway.apply` with the config in force): a new member is probed at once and gets
traffic once it passes (health/checks.py), a member that left is in no route table
from then on and drains (its running streams hold its state and finish). A failed
lookup keeps the last members, logged once per outage.

Under `--workers N` the worker that leads (the health checks' and engine scrapes'
leader) looks up for the server and publishes the addresses; the others follow them
(discovery/share.py), so every worker holds the same members and DNS is asked once.
Before serving, each worker looks up once on its own. Each worker keeps its own member
states; members are named by address, so the leader's health results (health.json) and
engine readings reach every worker's same member. A worker probes a member new to it
at once, so that it gets traffic without waiting for the leader's next round.

Every SWEEP_S the loop also ends draining for members whose last request ended,
publishes gateway_backend_members, and tells the cold pools' wake marks which
backends are warm again (discovery/wake.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Sequence

from aiohttp import web

from ..config import BackendConfig
from ..dispatch.members import MEMBER_STATES, host_of
from ..dispatch.sample import warm_rings
from ..health.checks import check_backend
from ..log import discovery_logger
from ..state import Gateway
from ..typedefs import GATEWAY, LEADER, RUN_DIR
from .dns import HostResolver, LookupFailed
from .share import MembersShare
from .wake import Waker

SWEEP_S = 0.5             # draining ends and gauges are this fresh
LOOKUP_TIMEOUT_S = 5.0    # at most; never longer than the backend's interval


class Discovery:
    """The lookups of every discover backend of the gateway's config in force."""

    def __init__(self, gateway: Gateway, share: MembersShare | None = None) -> None:
        self.gateway = gateway
        self.share = share   # under --workers: the leader looks up, the others follow
        self._resolvers: dict[str, tuple[BackendConfig, HostResolver]] = {}
        self._next: dict[str, float] = {}
        self._failing: set[str] = set()
        self._published: set[str] = set()   # backends with gateway_backend_members series

    def _backends(self) -> list[BackendConfig]:
        """The discover backends of the config in force (a reload may change them)."""
        found = [b for b in self.gateway.config.backends.values() if b.discovers]
        names = {b.name for b in found}
        self.gateway.members.forget(names)
        for name in [n for n in self._resolvers if n not in names]:
            del self._resolvers[name]
            self._next.pop(name, None)
            self._failing.discard(name)
        for backend in found:   # a reload changed its URL or discover: look up now
            known = self._resolvers.get(backend.name)
            if known is not None and known[0] != backend:
                self._next.pop(backend.name, None)
        return found

    def _resolver(self, backend: BackendConfig) -> HostResolver:
        known = self._resolvers.get(backend.name)
        if known is None or known[0] != backend:
            discover = backend.discover
            assert discover is not None
            timeout = min(LOOKUP_TIMEOUT_S, discover.interval_s)
            known = self._resolvers[backend.name] = (
                backend, HostResolver(discover.nameservers, timeout))
        return known[1]

    async def round(self, now: float, *, every: bool = False) -> None:
        """Look up every backend due by `now` (all of them with `every`, which every
        worker does once before serving); a follower takes the leader's addresses."""
        backends = self._backends()
        if self.share is not None and not every and not self.share.lead():
            self._next.clear()   # should it lead next: look up at once
            await self._apply(self.share.follow(backends), logged=False)
            return
        due = [b for b in backends if every or self._next.get(b.name, 0.0) <= now]
        if not due:
            return
        for backend in due:
            assert backend.discover is not None
            self._next[backend.name] = now + backend.discover.interval_s
        answers = await asyncio.gather(*(self._lookup(b) for b in due))
        await self._apply({b.name: a for b, a in zip(due, answers) if a is not None},
                          logged=True)
        if self.share is not None and self.share.leader.leading:
            self.share.publish(backends, self.gateway.members.addresses)

    async def _apply(self, found: dict[str, Sequence[str]], *, logged: bool) -> None:
        """Record the addresses found; rebuild when some backend's members changed."""
        changed = False
        for name, addresses in found.items():
            if self.gateway.members.set(name, addresses):
                changed = True
                (discovery_logger.info if logged else discovery_logger.debug)(
                    "backend %s has %d member(s): %s", name, len(addresses),
                    ", ".join(sorted(addresses)) or "none")
        if changed:
            await self.rebuild()

    async def _lookup(self, backend: BackendConfig) -> tuple[str, ...] | None:
        """The host's addresses; None after a failed lookup (logged once per outage)."""
        host = host_of(backend)
        try:
            addresses = await self._resolver(backend).addresses(host)
        except LookupFailed as exc:
            if backend.name not in self._failing:
                self._failing.add(backend.name)
                discovery_logger.warning("backend %s: looking up %s failed (%s); keeping "
                                         "its %d member(s) until a lookup answers",
                                         backend.name, host, exc, len(
                                             self.gateway.members.addresses.get(
                                                 backend.name, ())))
            return None
        if backend.name in self._failing:
            self._failing.discard(backend.name)
            discovery_logger.info("backend %s: %s resolves again", backend.name, host)
        return addresses

    async def rebuild(self) -> None:
        """Swap in states and a route table with the members now known; probe the new."""
        gateway = self.gateway
        old = gateway.states
        gateway.apply(gateway.config)
        gateway.members.retire(s for name, s in old.items() if name not in gateway.states)
        new = [s for name, s in gateway.states.items() if name not in old]
        if new:
            results = await asyncio.gather(*(check_backend(gateway, s) for s in new))
            if any(models_changed for _, models_changed in results):
                gateway.rebuild()
        warm_rings(gateway.table)   # affinity's rings for the new members, off requests
        gateway.publish_backend_up()
        gateway.dispatcher.queue.notify()   # a cold pool's waiters look again

    def sweep(self, waker: Waker | None) -> None:
        """Draining ends; the members gauge; wake marks of backends warm again."""
        gateway = self.gateway
        members = gateway.members
        for name in members.sweep():
            discovery_logger.info("member %s drained", name)
        now = time.monotonic()
        gauge = gateway.metrics.backend_members
        names = [b.name for b in gateway.config.backends.values() if b.discovers]
        for backend, counts in members.counts(names, gateway.states.values(), now).items():
            for state in MEMBER_STATES:
                gauge.labels(backend, state).set(counts[state])
        for gone in self._published - set(names):   # no longer discovers (a reload)
            for state in MEMBER_STATES:
                if gateway.metrics.multiprocess_dir:
                    gauge.labels(gone, state).set(0)   # the workers' files keep a series
                    continue
                with contextlib.suppress(KeyError):
                    gauge.remove(gone, state)
        self._published = set(names)
        if waker is not None:
            waker.sweep(gateway, now)


async def run(discovery: Discovery, waker: Waker | None) -> None:
    """Lookups when due, a sweep every SWEEP_S; until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await discovery.round(time.monotonic())
            discovery.sweep(waker)
        except Exception:
            discovery_logger.exception("discovery round failed")
        await asyncio.sleep(max(0.0, started + SWEEP_S - loop.time()))


async def elastic_pools(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the first lookups before serving (bounded by their timeouts), then
    the loop; the wake hooks of cold pools (discovery/wake.py) for the app's lifetime."""
    gateway = app[GATEWAY]
    run_dir = app.get(RUN_DIR)
    waker = Waker(gateway.transport.session, gateway.metrics, run_dir)
    gateway.dispatcher.cold.waker = waker
    gateway.dispatcher.cold.current = lambda: gateway.table
    share = MembersShare(run_dir, app[LEADER]) if run_dir is not None else None
    discovery = Discovery(gateway, share)
    await discovery.round(time.monotonic(), every=True)
    discovery.sweep(waker)
    task = asyncio.create_task(run(discovery, waker))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await waker.close()
