"""Session affinity: one session sticks to one backend while it is a candidate.

The session comes from X-Session-ID or the body's `user`. Placement is the same
consistent hashing with bounded loads as prefix affinity, keyed by the session,
so one busy session cannot overload its backend and losing a backend only moves
the sessions that were on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import Candidate, RouteRequest

if TYPE_CHECKING:
    from ..endpoints import Endpoint
from .ring import BoundedAffinity


class SessionAffinity:
    name = "session_affinity"
    uses_load = True
    __slots__ = ("_affinity",)

    def __init__(self, load_factor: float = 1.25) -> None:
        self._affinity = BoundedAffinity(load_factor)

    def route_key(self, endpoint: Endpoint, payload: Mapping[str, Any],
                  headers: Mapping[str, str]) -> RouteRequest:
        user = payload.get("user")
        return RouteRequest(session=headers.get("X-Session-ID")
                            or (user if isinstance(user, str) else None))

    def pick(self, candidates: Sequence[Candidate], request: RouteRequest) -> Candidate:
        session = request.session
        key = session.encode("utf-8", "surrogatepass") if session else None
        return self._affinity.pick_by_key(candidates, key)
