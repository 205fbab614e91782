"""How each try of a request is shaped for its backend: the plan every API but Anthropic
Messages uses (`AsIs`), and the rules they all follow: stream usage asked for where the
backend can give it, the class as the body's `priority` where the backend wants it.

A plan is made once per request and asked once per try (`dispatch.TryPlan`); what it
returns (`dispatch.Shaped`) is all the dispatcher sends and all the relay reads: the
body with the model as that backend knows it, the model names to rewrite back in its
answer, and the format its answer streams in.
"""

from __future__ import annotations

from typing import Any

from ..config import BackendConfig
from ..dispatch import Shaped
from ..endpoints import Body, Endpoint, Streams
from ..limits.tickets import Ticket
from ..relay.chat import model_patterns
from ..relay.formats import FORMATS
from ..runtimes.priority import engine_priority
from .forms import body_for
from .stored import backend_patterns


def ask_priority(body: Any, backend: BackendConfig, ticket: Ticket | None) -> None:
    """`engine_priority: true`: the request's class as the body's `priority`, in the
    runtime's convention (runtimes/priority.py), read when the try is made (after any
    promotion in the waiting room)."""
    if backend.engine_priority and ticket is not None and isinstance(body, dict):
        body["priority"] = engine_priority(backend.kind, ticket.cls)


def ask_stream_usage(body: dict[str, Any], backend: BackendConfig) -> bool:
    """Ask a chat-style stream for its usage (`stream_options.include_usage`) where the
    backend's `stream_usage` capability says it can give it; True when the client did
    not ask itself, so the relay takes the usage chunk's traces out again."""
    if not backend.capabilities.get("stream_usage"):
        return False
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    body["stream_options"] = {**options, "include_usage": True}
    return not options.get("include_usage")


class AsIs:
    """The request as the client sent it, the model named as each backend knows it."""

    __slots__ = ("endpoint", "payload", "ticket")

    selective = False   # every backend of the walk can take the request as it is

    def __init__(self, endpoint: Endpoint, payload: Any, ticket: Ticket | None = None) -> None:
        self.endpoint = endpoint
        self.payload = payload
        self.ticket = ticket

    def accepts(self, backend: BackendConfig) -> bool:
        return True

    def prepare(self, backend: BackendConfig, public: str, stream: bool) -> Shaped:
        endpoint = self.endpoint
        model_id = backend.model_id(public)
        body = body_for(endpoint, self.payload, model_id)
        drop_usage = False
        if stream and endpoint.asks_stream_usage:
            drop_usage = ask_stream_usage(body, backend)
        ask_priority(body, backend, self.ticket)
        streams = endpoint.streams
        fmt = FORMATS[streams] if streams is not None and (
            stream or streams is Streams.BYTES) else None
        patterns = (backend_patterns(backend) if endpoint.body is Body.NONE
                    else model_patterns(model_id, public))
        return Shaped(endpoint, body, None, fmt, patterns, drop_usage)
