"""The stream format of answers of any content type (speech audio, images): bytes as
they come.

Nothing is parsed on the way: the bytes reach the client as the runtime sends them.
Such an answer has no error event to end with, so one that breaks after its first
byte is cut off (the connection closes before the body's end), never ended cleanly.
A JSON answer's usage, when it has one (gpt-image style), is read from its last bytes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

import orjson

from ..errors import GatewayError
from .chat import api_usage

if TYPE_CHECKING:
    from ..dispatch import Opened
    from ..tracing.spans import RequestTrace
    from .response_ids import IdRewriter

TAIL = 4096
# A usage object with at most one level of nesting (`input_tokens_details`).
_USAGE = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')


class ByteStream:
    __slots__ = ("content_type", "has_usage", "_tail")

    saw_token = True    # every byte is the answer
    finished = False    # only the runtime's close ends it
    failed = None

    def __init__(self, content_type: str, has_usage: bool) -> None:
        self.content_type = content_type
        self.has_usage = has_usage and "json" in content_type
        self._tail = b""

    @classmethod
    def make(cls, opened: Opened, ids: IdRewriter | None,
             trace: RequestTrace | None) -> ByteStream:
        return cls(opened.response.content_type, opened.shaped.endpoint.has_usage)

    def headers(self) -> Mapping[str, str]:
        return {"Content-Type": self.content_type, "Cache-Control": "no-cache"}

    def feed(self, data: bytes) -> bytes:
        if self.has_usage:
            self._tail = data[-TAIL:] if len(data) >= TAIL else (self._tail + data)[-TAIL:]
        return data

    def flush(self) -> bytes:
        return b""

    def closed_cleanly(self) -> bool:
        return True

    @staticmethod
    def error_event(err: GatewayError) -> None:
        return None

    @staticmethod
    def first_complete(block: bytes) -> bool:
        return bool(block)

    @staticmethod
    def first_error(block: bytes) -> None:
        return None

    @property
    def usage(self) -> dict[str, Any]:
        """The usage at the end of a JSON answer; {} when there is none (audio, most
        images): such an answer reports none, so none is missing."""
        if not self.has_usage:
            return {}
        found = _USAGE.findall(self._tail)
        if not found:
            return {}
        try:
            return api_usage(orjson.loads(found[-1])) or {}
        except orjson.JSONDecodeError:
            return {}
