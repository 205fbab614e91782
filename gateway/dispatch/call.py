"""What one request asks of the dispatcher (`Call`), and how each try of it is shaped.

A `Call` is built once by the API handler and read by every try: the route table the
request started with (its one config snapshot), the pool, the endpoint row, the body,
the record, the routing key, the plan, and where a stored response pins it. The plan
(`TryPlan`, made by the API layer) turns the call into one backend's try (`Shaped`):
the endpoint and body that backend gets, extra headers, the model names to rewrite in
its answer, and the stream format the answer comes in. The dispatcher reads the
format only through `FirstEvent`: when a stream's first event is whole, and whether
it is an error; it never parses a body or an answer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Protocol

from ..config import BackendConfig
from ..endpoints import Endpoint
from ..record import RequestRecord
from ..routing import RouteRequest

if TYPE_CHECKING:
    from .backend import BackendState
    from .pool import Pool
    from .table import RouteTable

Patterns = tuple[tuple[bytes, bytes], ...]


class FirstEvent(Protocol):
    """What the dispatcher needs of a stream format before it commits to a backend."""

    @staticmethod
    def first_complete(block: bytes) -> bool:
        """True once `block` holds the stream's first whole event (or, for bytes, any)."""
        ...

    @staticmethod
    def first_error(block: bytes) -> dict[str, Any] | None:
        """The error object when the first event is an error instead of an answer."""
        ...


class Shaped(NamedTuple):
    """One try, as one backend gets it (a tuple: made on every try, cheaply)."""
    endpoint: Endpoint                        # the row whose upstream path it goes to
    body: Any                                 # JSON object, multipart body, or None
    headers: Mapping[str, str] | None         # extra upstream headers
    fmt: type[FirstEvent] | None              # the answer's stream format (None: whole)
    patterns: Patterns = ()                   # runtime model ids -> public names
    drop_usage: bool = False                  # the gateway asked for stream usage itself


class TryPlan(Protocol):
    """How each try of a request is shaped for its backend (api/plans.py)."""

    selective: bool   # whether `accepts` can say no: else it is not asked

    def accepts(self, backend: BackendConfig) -> bool:
        """Whether this backend can serve the request at all (else it is not tried)."""
        ...

    def prepare(self, backend: BackendConfig, public: str, stream: bool) -> Shaped:
        ...


@dataclass(slots=True)
class Call:
    table: RouteTable          # the request's one config snapshot, for every try
    pool: Pool
    endpoint: Endpoint
    payload: Any
    rec: RequestRecord
    route: RouteRequest
    plan: TryPlan
    pinned: BackendState | None = None   # the one backend holding a stored response
    target: str | None = None            # the upstream path, when it is not the row's
