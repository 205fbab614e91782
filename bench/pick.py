"""The CPU of one pick: a pool of 2 backends against a discover pool of 50 members.

A pick is what the dispatcher does per try to choose a backend (`Dispatcher._choose`:
which are healthy, untried, available, below their cap and not saturated, the Ollama
preference, then the route's strategy). It runs in process, with no I/O: the states
are real `BackendState`s of a real `Gateway`, the 50 members made by the member
expansion of a `discover` backend (dispatch/members.py) as DNS answers would. Each
pick's request is counted in flight on its backend and the oldest of the last 8 is
released, so the load strategies see loads that move.

    python -m bench.pick [--picks N] [--repeat R] [--strategies weighted,least_busy]

Prints per strategy the microseconds of CPU per pick with 2 backends and with 50
members, and their ratio (the goal: at most 1.2). The figure is the best of R runs
(process time), so another process on the machine inflates it less.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from types import MappingProxyType

from gateway.config import (STRATEGIES, Config, DiscoverConfig, RouteConfig, backend)
from gateway.dispatch.fallbacks import Stage
from gateway.metrics import Metrics
from gateway.routing import RouteRequest
from gateway.state import Gateway

MODEL = "llama"


def gateway_with(strategy: str, members: int) -> Gateway:
    """Two static backends, or one discover backend whose host gave `members` addresses."""
    route = MappingProxyType({MODEL: RouteConfig(strategy=strategy)})
    if members == 0:
        backends = {n: backend(n, "vllm", f"http://127.0.0.{i + 2}:8000", models=[MODEL])
                    for i, n in enumerate(("a", "b"))}
        return Gateway(Config(backends=MappingProxyType(backends), routes=route), None,
                       Metrics())
    pool = backend("pool", "vllm", "http://pool.test:8000", models=[MODEL],
                   discover=DiscoverConfig(dns=True))
    gateway = Gateway(Config(backends=MappingProxyType({"pool": pool}), routes=route), None,
                      Metrics())
    gateway.members.set("pool", [f"127.0.{1 + i // 250}.{2 + i % 250}"
                                 for i in range(members)])
    gateway.apply(gateway.config)
    for state in gateway.states.values():
        state.healthy = state.checked = True   # as a passed health check leaves them
    gateway.rebuild()
    return gateway


def cpu_per_pick(gateway: Gateway, picks: int) -> float:
    """Microseconds of process time per `_choose`, in-flight counts moving."""
    table = gateway.table
    pool = table.pool(MODEL)
    assert pool is not None
    stage: Stage = table.stages(pool)[0]
    capable = stage.capable("chat")
    cfg = table.config
    choose = gateway.dispatcher._choose
    route = RouteRequest(prefix=b"conversation", session="s")
    recent: deque = deque()
    tried: set[str] = set()
    started = time.process_time()
    for _ in range(picks):
        chosen = choose(cfg, stage, capable, tried, route, False)
        chosen.in_flight += 1
        recent.append(chosen)
        if len(recent) > 8:
            recent.popleft().in_flight -= 1
    spent = time.process_time() - started
    return spent / picks * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--picks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args(argv)
    print(f"{'strategy':<18} {'2 backends':>12} {'50 members':>12} {'ratio':>7}")
    for strategy in args.strategies.split(","):
        two = min(cpu_per_pick(gateway_with(strategy, 0), args.picks)
                  for _ in range(args.repeat))
        fifty = min(cpu_per_pick(gateway_with(strategy, 50), args.picks)
                    for _ in range(args.repeat))
        print(f"{strategy:<18} {two:>10.2f}us {fifty:>10.2f}us {fifty / two:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
