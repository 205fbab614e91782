"""Routing policies: which backend of a pool takes a request.

Each strategy lives in its own module behind one small interface and does no
I/O, so it is tested with plain stubs. The dispatcher hands a strategy only the
backends that may take the request right now (healthy, not yet tried for this
request, under their concurrency cap, not saturated by their runtime's own report);
the strategy picks one of them. Each
strategy also says what of a request it keys on (`route_key`), so the HTTP layer
never needs to know which strategy a route uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from ..endpoints import Endpoint


class Candidate(Protocol):
    """What a strategy may look at: a backend's name, weight and current load.

    `load` is the gateway's in-flight count blended with what the runtime last reported
    of its own running and waiting requests (`dispatch.BackendState.load`); without a
    fresh report it is `in_flight`. `ewma_ttft`: the moving average of the backend's
    time to first token in seconds, None before its first answer. `service_time`: the
    moving average of one answer's whole time with no queue ahead of it (least_latency),
    None before a first answer ended. `batch`: the most requests the runtime has said it
    runs at once (0: it never said). `signal`: where `load` came from, one of SIGNALS.
    """

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def load(self) -> int: ...

    @property
    def ewma_ttft(self) -> float | None: ...

    @property
    def service_time(self) -> float | None: ...

    @property
    def batch(self) -> int: ...

    @property
    def signal(self) -> str: ...


# Where a candidate's `load` came from: a fresh engine reading blended with the gateway's
# own count; or the gateway's count alone because the reading is stale, because there is
# none yet (a kind that exposes load, never read or failing since the start), or because
# the kind exposes none.
FRESH, STALE, NO_READING, NOT_EXPOSED = "fresh", "stale", "no_reading", "not_exposed"
SIGNALS = (FRESH, STALE, NO_READING, NOT_EXPOSED)


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """The parts of a request that affinity strategies key on."""

    prefix: bytes | None = None    # the prompt's conversation prefix (see prefix_key())
    session: str | None = None     # X-Session-ID header, else the body's `user`
    # A chat's whole message list, and the list as its previous turn sent it (without the
    # last assistant reply and user message), hashed: prefix_affinity follows a
    # conversation to the backend that served its previous turn (see turn_keys()).
    turn: bytes | None = None
    previous: bytes | None = None


NO_AFFINITY = RouteRequest()   # what every strategy that keys on nothing uses


class Strategy(Protocol):
    name: str
    uses_load: bool     # whether picks read `Candidate.load` (then readings matter)

    def route_key(self, endpoint: Endpoint, payload: Mapping[str, Any],
                  headers: Mapping[str, str]) -> RouteRequest:
        """What of this request the strategy keys on (once per request)."""
        ...

    def pick(self, candidates: Sequence[Candidate], request: RouteRequest) -> Candidate:
        """One of `candidates` (never empty)."""
        ...


class KeysOnNothing:
    """For strategies that pick by load or turn alone."""

    __slots__ = ()
    uses_load = True

    def route_key(self, endpoint: Endpoint, payload: Mapping[str, Any],
                  headers: Mapping[str, str]) -> RouteRequest:
        return NO_AFFINITY


def make_strategy(name: str) -> Strategy:
    """A fresh strategy for one route pool; it keeps its state across picks."""
    # Imported here: the strategy modules import Candidate and RouteRequest from
    # this package, so a top-level import would be circular.
    from .least_busy import LeastBusy
    from .least_latency import LeastLatency
    from .prefix_affinity import PrefixAffinity
    from .session_affinity import SessionAffinity
    from .weighted import WeightedRoundRobin

    factories = {cls.name: cls for cls in
                 (WeightedRoundRobin, LeastBusy, PrefixAffinity, SessionAffinity, LeastLatency)}
    try:
        return factories[name]()
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; expected one of "
                         f"{', '.join(factories)}") from None
