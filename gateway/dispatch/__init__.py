"""Which backend answers a request: the route table, backend state and the dispatcher.

    call.py       Call: what one request asks (a typed value read by every try); TryPlan,
                  Shaped: each try as its backend gets it
    table.py      RouteTable: every public model's pool, one snapshot of the config
    pool.py       Pool: one model's backends, strategy and fallbacks
    fallbacks.py  Stage: the pool, then each fallback, in the order a request walks
    backend.py    BackendState: a backend's transport, load, health and cooldowns
    ejection.py   passive ejection and 429 cooldowns: what real traffic says
    scheduler.py  the waiting room: who goes next when a pool or a key is full (classes,
                  fair share by tokens, FCFS per key, promotion, max_wait_s)
    tickets.py    KeyState and Ticket: a key's scheduling state, a request's place
    retries.py    Dispatcher: the walk (tries, retries, fallbacks) to a first answer
    outcome.py    the error when the walk found no answer

The strategies that pick one backend of a pool are pure and live in `gateway.routing`.
"""

from .backend import BackendState
from .call import Call, Shaped, TryPlan
from .pool import Pool
from .retries import Dispatcher, Opened
from .table import RouteTable

__all__ = ["BackendState", "Call", "Dispatcher", "Opened", "Pool", "RouteTable", "Shaped",
           "TryPlan"]
