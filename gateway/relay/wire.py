"""Byte-level pieces every stream relay shares: whole lines out of reads, lenient JSON.

A runtime's read may end inside a line; the relays rewrite and scan whole SSE lines
only, so the partial line waits for the next read (`LineCarry`). Chunks and bodies
are parsed where a relay must look inside them; anything that is not a JSON object
counts as nothing (`loads_object`), never as an error of the gateway's own.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

import orjson


class LineCarry:
    """Carries a partial line over to the next read: events go out whole."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def whole_lines(self, data: bytes) -> bytes:
        """The whole lines received so far; a partial last line waits."""
        if self._tail:
            data = self._tail + data
        cut = data.rfind(b"\n") + 1
        if cut == len(data):      # the usual case: whole events, no copy
            self._tail = b""
            return data
        self._tail = data[cut:]
        return data[:cut]

    def rest(self) -> bytes:
        """The partial line the runtime closed on, terminated (nothing if only blanks)."""
        tail, self._tail = self._tail, b""
        return tail + b"\n" if tail.strip() else b""


def loads_object(raw: bytes) -> dict[str, Any] | None:
    """`raw` parsed when it is a JSON object, else None."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class LineRewriter(LineCarry):
    """What every SSE rewriter shares: whole lines in, and the stream's end once its
    terminal event is out with its blank line (a runtime may write the two apart).

    A subclass rewrites whole lines in `_rewrite` and sets `saw_done` at the terminal
    event's data line (and `finished` when its blank line came with it).
    """

    __slots__ = ("saw_done", "finished")

    def __init__(self) -> None:
        super().__init__()
        self.saw_done = False
        self.finished = False    # the terminal event and its blank line are out

    def feed(self, data: bytes) -> bytes:
        """The complete lines received so far, rewritten; a partial line waits."""
        if self._tail or not data.endswith(b"\n"):
            # Only a partial line costs the carry's call: the usual read is whole events.
            data = self.whole_lines(data)
            if not data:
                return b""
        if self.saw_done:
            # The terminal event's data line went out; its blank line is the next line,
            # and the last.
            self.finished = True
            return b"\r\n" if data.startswith(b"\r\n") else b"\n"
        return self._rewrite(data)

    def flush(self) -> bytes:
        """What is left when the runtime closed: a last line without its newline, and
        the blank line of a terminal event the runtime did not terminate."""
        rest = self.rest()
        out = self.feed(rest) if rest else b""
        if self.saw_done and not self.finished:
            self.finished = True
            out += b"\n"
        return out

    def _rewrite(self, data: bytes) -> bytes:
        raise NotImplementedError


SSE_HEADERS: Mapping[str, str] = MappingProxyType({
    "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class SseStart:
    """What every SSE format shares: its headers, and how its first event looks (a whole
    `data:` line; an error chunk or error event instead of an answer)."""

    __slots__ = ()

    def headers(self) -> Mapping[str, str]:
        return SSE_HEADERS

    @staticmethod
    def first_complete(block: bytes) -> bool:
        return has_data_line(block)

    @staticmethod
    def first_error(block: bytes) -> dict[str, Any] | None:
        return first_event_error(block)


def has_data_line(block: bytes) -> bool:
    """True once `block` holds a whole `data:` line: a stream's first event has come.
    Comments (`: keep-alive`) and other fields before it are no event."""
    at = block.find(b"data:")
    while at != -1:
        if (at == 0 or block[at - 1] in b"\r\n") and block.find(b"\n", at) != -1:
            return True
        at = block.find(b"data:", at + 1)
    return False


def first_event_error(block: bytes) -> dict[str, Any] | None:
    """The error object when a stream's first event is an error instead of a chunk."""
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            if b'"error"' not in line:
                return None
            chunk = loads_object(line[5:])
            if chunk and "error" in chunk and "choices" not in chunk:
                err = chunk["error"]
                return err if isinstance(err, dict) else {"message": str(err)}
            return None
    return None
