"""Relaying streams of named events (`event:` + `data:`), as the Responses API sends them.

Such a stream has no `[DONE]`: it ends with the API's terminal event, and one that
breaks ends with the API's own error event. What differs between APIs (which events
end it, which carry usage or text, how an error event looks) is one `EventFormat`.
Like chat chunks, events are relayed in whole lines as they arrive and parsed only when their name says they end
the stream or carry usage, so the cost per event stays a few byte scans. Another API of
named events is another `EventFormat` and a subclass naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import orjson

from ..errors import GatewayError
from .chat import api_usage
from .response_ids import IdRewriter
from .wire import LineRewriter, SseStart, loads_object

if TYPE_CHECKING:
    from ..dispatch import Opened
    from ..tracing.spans import RequestTrace


@dataclass(frozen=True, slots=True)
class EventFormat:
    terminal: frozenset[bytes]                      # event names that end the stream
    usage_events: frozenset[bytes]                  # event names whose data carry usage
    token: re.Pattern[bytes]                        # a block that carries generated text
    usage_of: Callable[[dict, dict | None], dict | None]   # (event data, usage so far)
    error_event: Callable[[GatewayError, bytes], bytes]    # (error, last bytes relayed)
    first_error: Callable[[dict], dict | None]      # the first event's error, if it is one
    watched: re.Pattern[bytes]                      # any name of terminal | usage_events: a
                                                    # block it finds is parsed (one regex
                                                    # scan costs less than one `in` per name)


# -- the Responses API -------------------------------------------------------------------

_SEQUENCE = re.compile(rb'"sequence_number":\s*(\d+)')


def _responses_usage(data: dict, _: dict | None) -> dict | None:
    response = data.get("response")
    return api_usage(response.get("usage")) if isinstance(response, dict) else None


def _responses_error_event(err: GatewayError, last: bytes) -> bytes:
    """`event: error` with the Responses error object, numbered after the last event."""
    found = _SEQUENCE.findall(last)
    body = {"type": "error", "code": err.code, "message": err.message, "param": err.param,
            "sequence_number": int(found[-1]) + 1 if found else 0}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


def _responses_first_error(data: dict) -> dict | None:
    kind = data.get("type")
    if kind == "error":
        return {"message": data.get("message") or "the runtime sent an error event"}
    if kind == "response.failed":
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        return error if isinstance(error, dict) else {"message": "the response failed"}
    return None


_RESPONSES_END = frozenset({b"response.completed", b"response.failed", b"response.incomplete"})
RESPONSES = EventFormat(
    terminal=_RESPONSES_END, usage_events=_RESPONSES_END,
    token=re.compile(rb"response\.(?:output_text|reasoning_text|reasoning_summary_text|"
                     rb"refusal|function_call_arguments)\.delta"),
    usage_of=_responses_usage, error_event=_responses_error_event,
    first_error=_responses_first_error,
    watched=re.compile(rb"response\.(?:completed|failed|incomplete)"))



# -- the relay ---------------------------------------------------------------------------

class EventRewriter(SseStart, LineRewriter):
    """The Responses API's stream format: complete lines out, the model and response ids
    rewritten, usage and the terminal event noticed."""

    __slots__ = ("patterns", "ids", "fmt", "usage", "saw_token", "_ids_known", "_last")

    failed = None
    FORMAT = RESPONSES

    @classmethod
    def make(cls, opened: Opened, ids: IdRewriter | None,
             trace: RequestTrace | None) -> EventRewriter:
        return cls(opened.shaped.patterns, ids, cls.FORMAT)

    def closed_cleanly(self) -> bool:
        return self.saw_done

    @classmethod
    def first_error(cls, block: bytes) -> dict | None:
        for _, event in _events(block):
            return cls.FORMAT.first_error(event)
        return None

    def __init__(self, patterns: tuple[tuple[bytes, bytes], ...], ids: IdRewriter | None,
                 fmt: EventFormat) -> None:
        super().__init__()
        self.patterns = patterns
        self.ids = ids
        self.fmt = fmt
        self.usage: dict[str, Any] | None = None
        self.saw_token = False
        self._ids_known = ids is None
        self._last = b""

    def _rewrite(self, data: bytes) -> bytes:
        for old, new in self.patterns:
            if old in data:
                data = data.replace(old, new)
        ids = self.ids
        if ids is not None:
            if not self._ids_known and b'"response"' in data:
                self._learn_ids(data)
            data = ids.apply(data)
            if ids.previous is not None and b'"response"' in data:
                data = _say_previous(data, ids)
            if ids.keeper is not None:
                ids.keeper.see_events(data)
        if not self.saw_token and self.fmt.token.search(data):
            self.saw_token = True
        if self.fmt.watched.search(data):
            self._scan(data)
            if self.saw_done and (data.endswith(b"\n\n") or data.endswith(b"\r\n\r\n")):
                self.finished = True
        self._last = data
        return data

    def error_event(self, err: GatewayError) -> bytes:
        return self.fmt.error_event(err, self._last)

    def _learn_ids(self, block: bytes) -> None:
        for _, event in _events(block):
            if self.ids.learn_from(event.get("response")):   # type: ignore[union-attr]
                self._ids_known = True
                return

    def _scan(self, block: bytes) -> None:
        fmt = self.fmt
        for name, event in _events(block, fmt.terminal | fmt.usage_events):
            if name in fmt.usage_events:
                self.usage = fmt.usage_of(event, self.usage) or self.usage
            if name in fmt.terminal:
                self.saw_done = True


def _events(block: bytes, only: frozenset[bytes] | None = None):
    """(name, parsed data) of the events in `block` (named by `event:`, else by `type`)."""
    name = b""
    for line in block.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            if only is None or name in only or not name:
                event = loads_object(line[5:])
                if event is not None:
                    own = name or str(event.get("type", "")).encode()
                    if only is None or own in only:
                        yield own, event
            name = b""
        elif not line.strip():
            name = b""


def _say_previous(block: bytes, ids: IdRewriter) -> bytes:
    """`block` with the response objects its events carry (`response.created`,
    `response.completed`, ...) saying the client's previous_response_id."""
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data:") and b'"response"' in line:
            event = loads_object(line[5:])
            if event is not None and ids.say_previous(event.get("response")):
                lines[i] = b"data: " + orjson.dumps(event) + (b"\r" if line.endswith(b"\r")
                                                              else b"")
    return b"\n".join(lines)


def rewrite_stored(body: bytes, ids: IdRewriter) -> bytes:
    """A whole answer of the Responses API with its response ids made public (and the
    client's previous_response_id, when the gateway answered the follow-up)."""
    parsed = loads_object(body)
    if parsed is not None:
        ids.learn_from(parsed)
    body = ids.apply(body)
    if ids.previous is not None and parsed is not None:
        parsed = loads_object(body)
        if parsed is not None and ids.say_previous(parsed):
            body = orjson.dumps(parsed)
    if ids.keeper is not None:
        ids.keeper.see_whole(body)
    return body
