"""The keys as tenants of a shared fleet: class, share, concurrency, budget, usage.

`Tenants` holds one `KeyState` per configured key (dispatch/scheduler.py; kept
across reloads while the name stays, so served counts and in-flight slots carry
over), plus the anonymous key `""` every request has without `auth.keys`. Per
request it gives a `Ticket` (the key and the request's class), and when the request
ends it gives the key's slot back and counts its tokens (limits/budgets.py).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..config import ApiKey
from .tickets import KeyState, Ticket
from .budgets import Budgets, KeyBudget
from .buckets import usage_tokens
from .classes import CLASS_OF, header_class

ANONYMOUS = ""


class Tenants:
    def __init__(self, budgets: Budgets | None = None) -> None:
        self.budgets = budgets or Budgets()
        self.anonymous = KeyState(ANONYMOUS)
        self._states: dict[str, KeyState] = {}
        self._keys: dict[str, ApiKey] = {}
        self.shared: Any = None    # limits/concurrency.py's counters under --workers

    def apply(self, keys: Iterable[ApiKey]) -> None:
        states: dict[str, KeyState] = {}
        self._keys = {}
        for key in keys:
            state = self._states.get(key.name) or KeyState(key.name)
            state.cls = CLASS_OF[key.priority]
            state.share = float(key.share)
            state.cap = key.max_concurrency
            state.budget = KeyBudget(self.budgets, key) if key.budget is not None else None
            if self.shared is not None and state.shared is None:
                counter = self.shared.counter("key:" + key.name)
                if counter is not None:
                    counter.add(state.in_flight)   # its requests already running count too
                state.shared = counter
            states[key.name] = state
            self._keys[key.name] = key
        self._states = states
        self.budgets.watch(states)

    def ticket(self, key: ApiKey | None, priority: str | None) -> Ticket:
        """`priority`: the X-Priority header (a 400 when it names no class)."""
        state = self.anonymous if key is None else self._states.get(key.name)
        if state is None:   # a key of a config being swapped in this very moment
            state = KeyState(key.name)   # type: ignore[union-attr]
        ticket = Ticket(state, state.cls)
        if priority is not None:
            ticket.lower(header_class(priority))
        return ticket

    def finished(self, ticket: Ticket, usage: dict[str, Any] | None) -> bool:
        """The request ended: True when a slot of its key came free."""
        tokens = usage_tokens(usage)
        self.budgets.add(ticket.key.name, tokens)
        return ticket.done(tokens)

    def entries(self) -> list[tuple[ApiKey | None, KeyState]]:
        if not self._keys:
            return [(None, self.anonymous)]
        return [(key, self._states[name]) for name, key in self._keys.items()]

    def entry_of(self, key: ApiKey | None) -> tuple[ApiKey | None, KeyState]:
        if key is None:
            return None, self.anonymous
        return key, self._states.get(key.name) or KeyState(key.name)
