"""A request's place in the fleet: its key's scheduling state and its own class.

`KeyState` is one key's (kept across reloads while its name stays): class, share,
`max_concurrency`, requests in flight, and `served`, its tokens divided by its share
(the scheduler's virtual-token counter, scheduler.py). `Ticket` is one request's: its
key, its class (the key's, lowered by the client: limits/classes.py), and whether it
holds one of its key's slots. A request takes a slot when it is sent, charged its
key's usual tokens; it gives it back when it ends, corrected by its real usage.
"""

from __future__ import annotations

from typing import Any

from ..config import PRIORITIES
from ..errors import GatewayError

CLASSES = len(PRIORITIES)
STANDARD = PRIORITIES.index("standard")
# Weight of a finished request's tokens in its key's usual tokens per request.
ESTIMATE_ALPHA = 0.2


class KeyState:
    """What the scheduler knows of one key; kept across reloads while its name stays."""

    __slots__ = ("name", "cls", "share", "cap", "in_flight", "served", "estimate", "shared",
                 "budget")

    def __init__(self, name: str) -> None:
        self.name = name
        self.cls = STANDARD
        self.share = 1.0
        self.cap: int | None = None
        self.in_flight = 0             # this process's requests sent and not yet ended
        self.served = 0.0              # tokens served / share (virtual time)
        self.estimate = 1.0            # usual tokens per request, charged ahead
        self.shared: Any = None        # a limits/concurrency.py counter under --workers
        self.budget: Any = None        # a limits/budgets.py KeyBudget, None without one

    def has_room(self) -> bool:
        cap = self.cap
        if cap is None:
            return True
        if self.shared is not None:
            return self.shared.value() < cap
        return self.in_flight < cap


class Ticket:
    """One request's place: its key, its class, whether it holds one of the key's slots."""

    __slots__ = ("key", "cls", "holding", "charged")

    def __init__(self, key: KeyState, cls: int) -> None:
        self.key = key
        self.cls = cls
        self.holding = False
        self.charged = 0.0

    def lower(self, cls: int) -> None:
        """The client asked for a class: it may lower its own, never raise it."""
        if cls > self.cls:
            self.cls = cls

    def refusal(self) -> GatewayError | None:
        """Why this request may not be sent now (its key's budget is spent), or None."""
        budget = self.key.budget
        return budget.refusal() if budget is not None else None

    def take(self) -> None:
        """The request is sent: one of its key's slots, and its usual tokens charged."""
        if self.holding:
            return
        key = self.key
        self.holding = True
        key.in_flight += 1
        if key.shared is not None:
            key.shared.add(1)
        self.charged = key.estimate
        key.served += key.estimate / key.share

    def done(self, tokens: int) -> bool:
        """The request ended having used `tokens`; True when it gave a slot back."""
        if not self.holding:
            return False
        key = self.key
        self.holding = False
        key.in_flight -= 1
        if key.shared is not None:
            key.shared.add(-1)
        key.served += (tokens - self.charged) / key.share
        if tokens:
            key.estimate += ESTIMATE_ALPHA * (tokens - key.estimate)
        return True
