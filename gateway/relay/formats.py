"""The one interface every stream format has, and which format each kind of stream is.

The relay (`stream.relay`) drives any of them alike; each format knows its own bytes:

| `Streams` kind        | format                        | ends with                    | broken: |
|---|---|---|---|
| CHAT                  | `chat.StreamRewriter`         | `data: [DONE]`               | `data: {"error": ...}` |
| AUDIO                 | `chat.AudioStream`            | [DONE] or transcript.text.done | the same |
| RESPONSES             | `events.EventRewriter`        | response.completed/failed/incomplete | `event: error` |
| ANTHROPIC             | `anthropic.NativeEvents`      | message_stop                 | Anthropic's `event: error` |
| ANTHROPIC_FROM_CHAT   | `anthropic.TranslatedEvents`  | chat's [DONE], as message_stop | the same |
| BYTES                 | `bytes.ByteStream`            | the runtime's close          | cut off (no event can say it) |
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from ..endpoints import Streams
from ..errors import GatewayError
from .anthropic import NativeEvents, TranslatedEvents
from .bytes import ByteStream
from .chat import AudioStream, StreamRewriter
from .events import EventRewriter

if TYPE_CHECKING:
    from ..dispatch import Opened
    from ..tracing.spans import RequestTrace
    from .response_ids import IdRewriter


class StreamFormat(Protocol):
    """Per-stream state of one format: whole events in, the client's bytes out."""

    usage: dict[str, Any] | None   # in chat's terms, once the stream said it
    saw_token: bool                # some generated text has passed
    finished: bool                 # the end event is out: read no further
    failed: str | None             # the runtime's own error event was relayed, and why

    @classmethod
    def make(cls, opened: Opened, ids: IdRewriter | None,
             trace: RequestTrace | None) -> StreamFormat: ...

    def headers(self) -> Mapping[str, str]:
        """The answer's headers (content type, caching)."""
        ...

    def feed(self, data: bytes) -> bytes:
        """The client's bytes for what the runtime sent (a partial line waits)."""
        ...

    def flush(self) -> bytes:
        """What is left once the runtime closed."""
        ...

    def closed_cleanly(self) -> bool:
        """Whether the runtime closing now is the stream's end, not a break."""
        ...

    def error_event(self, err: GatewayError) -> bytes | None:
        """How this format says the stream broke; None: it cannot, cut the connection."""
        ...

    @staticmethod
    def first_complete(block: bytes) -> bool: ...

    @staticmethod
    def first_error(block: bytes) -> dict[str, Any] | None: ...


FORMATS: Mapping[Streams, type[StreamFormat]] = MappingProxyType({
    Streams.CHAT: StreamRewriter,
    Streams.AUDIO: AudioStream,
    Streams.RESPONSES: EventRewriter,
    Streams.ANTHROPIC: NativeEvents,
    Streams.ANTHROPIC_FROM_CHAT: TranslatedEvents,
    Streams.BYTES: ByteStream,
})
