"""`Console`: the console's parts of one app, and what this worker tells the others."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..config import PRIORITIES
from ..state import Gateway
from .history import History
from .session import Sessions
from .share import WorkerShare
from .tail import Tail


@dataclass
class Console:
    sessions: Sessions
    tail: Tail
    history: History
    share: WorkerShare | None = None   # under --workers


def worker_figures(gateway: Gateway) -> dict[str, Any]:
    """This worker's own part of the server's figures: in flight per backend, ejections
    and cooldowns as wall-clock ends, its waiting room (all that wait; per model and
    class, the oldest's arrival as a wall-clock time) and what each key has waiting."""
    now, wall = time.monotonic(), time.time()
    in_flight, ejected, cooling = {}, {}, {}
    for name, state in gateway.states.items():
        in_flight[name] = state.in_flight
        if state.ejected_until > now:
            ejected[name] = wall + state.ejected_until - now
        if state.cooling_until > now:
            cooling[name] = wall + state.cooling_until - now
    queue = gateway.dispatcher.queue
    rows = [{"model": model, "priority": PRIORITIES[cls], "waiting": n,
             "oldest_since": wall - age} for model, cls, n, age in queue.rows()]
    queued = {state.name: n for _, state in gateway.tenants.entries()
              if (n := queue.queued(state))}
    return {"in_flight": in_flight, "ejected_until": ejected, "cooling_until": cooling,
            "waiting": queue.waiting, "queue": rows, "queued": queued}
