"""Relaying Anthropic Messages answers: a runtime's own, or a chat answer translated.

Two stream formats (`formats.StreamFormat`), which the one relay drives like any other:

    NativeEvents      a runtime serving /v1/messages: its events as they come, the model
                      rewritten with one byte replace; only message_start and message_delta
                      (two events a stream) are parsed, for usage
    TranslatedEvents  a chat completions stream, each chunk parsed and translated into
                      Anthropic's events (gateway.translate.anthropic)

A stream that breaks after its first byte ends with Anthropic's `event: error`; a runtime's
own error event is relayed as it is and ends the stream too. Usage is kept in the gateway's
form (prompt_tokens, completion_tokens) via `anthropic_usage`, for tpm and metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..errors import GatewayError, Reason, UpstreamError
from .chat import rewrite_model
from ..translate.anthropic import (ChatStreamToMessages, anthropic_usage, chat_to_message,
                                  error_event, error_type_for_status)
from .wire import LineCarry, SseStart, loads_object

if TYPE_CHECKING:
    from ..dispatch import Opened
    from ..tracing.spans import RequestTrace
    from .response_ids import IdRewriter

_STOP_LINES = (b"event: message_stop", b'data: {"type":"message_stop"',
               b'data: {"type": "message_stop"')
_ERROR_LINES = (b"event: error", b'data: {"type":"error"', b'data: {"type": "error"')


def stream_error_event(err: GatewayError) -> bytes:
    return error_event(error_type_for_status(err.status), err.message)


class _AnthropicEvents(SseStart):
    """What the two share: Anthropic's error event, and the start of a stream (chat's
    error chunk, or Anthropic's `{"type": "error", "error": {...}}` event, is an error)."""

    __slots__ = ()

    @staticmethod
    def error_event(err: GatewayError) -> bytes:
        return stream_error_event(err)

    def closed_cleanly(self) -> bool:
        return self.finished   # type: ignore[attr-defined]


class NativeEvents(_AnthropicEvents):
    __slots__ = ("patterns", "usage", "saw_token", "finished", "failed", "_lines")

    @classmethod
    def make(cls, opened: Opened, ids: IdRewriter | None,
             trace: RequestTrace | None) -> NativeEvents:
        return cls(opened.shaped.patterns)

    def __init__(self, patterns: tuple[tuple[bytes, bytes], ...]) -> None:
        self.patterns = patterns
        self.usage: dict[str, Any] | None = None
        self.saw_token = False
        self.finished = False
        self.failed: str | None = None    # the runtime's own error event, relayed
        self._lines = LineCarry()

    def feed(self, data: bytes) -> bytes:
        data = self._lines.whole_lines(data)
        if not data:
            return b""
        if self.patterns:
            data = rewrite_model(data, self.patterns)
        if not self.saw_token and b"content_block_delta" in data:
            self.saw_token = True
        if b"message_" in data:     # a token event (most of them) has no such name
            if b"message_start" in data or b"message_delta" in data:
                self._take_usage(data)
            if b"message_stop" in data and _has_line(data, _STOP_LINES):
                self.finished = True
                return data
        if b"error" in data and _has_line(data, _ERROR_LINES):
            self.finished = True
            self.failed = _error_message(data)
        return data

    def flush(self) -> bytes:
        rest = self._lines.rest()
        return self.feed(rest) if rest else b""

    def _take_usage(self, block: bytes) -> None:
        for line in block.split(b"\n"):
            if line.startswith(b"data:") and (b"message_start" in line
                                              or b"message_delta" in line):
                event = loads_object(line[5:])
                if event is not None:
                    self.usage = anthropic_usage(event, self.usage)


class TranslatedEvents(_AnthropicEvents):
    __slots__ = ("translator", "saw_token", "finished", "failed", "_lines")

    @classmethod
    def make(cls, opened: Opened, ids: IdRewriter | None,
             trace: RequestTrace | None) -> TranslatedEvents:
        return cls(opened.public)

    def __init__(self, public: str) -> None:
        self.translator = ChatStreamToMessages(public)
        self.saw_token = False
        self.finished = False
        self.failed: str | None = None
        self._lines = LineCarry()

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.translator.usage

    def feed(self, data: bytes) -> bytes:
        data = self._lines.whole_lines(data)
        out = b""
        translator = self.translator
        for line in data.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            raw = line[5:].strip()
            if raw == b"[DONE]":
                out += translator.finish()
                self.finished = True
                break
            chunk = loads_object(raw)
            if chunk is not None:
                out += translator.feed(chunk)
                if translator.done:   # the runtime sent an error chunk: an error event
                    self.finished = True
                    self.failed = _chunk_error(chunk)
                    break
        if not self.saw_token and b"content_block_delta" in out:
            self.saw_token = True
        return out

    def flush(self) -> bytes:
        rest = self._lines.rest()
        return self.feed(rest) if rest else b""


def native_whole(body: bytes) -> dict[str, Any] | None:
    """The usage of a runtime's own whole Anthropic message (read after it was sent)."""
    return anthropic_usage(loads_object(body))


def translated_whole(body: bytes, public: str) -> tuple[bytes, dict[str, Any] | None]:
    """A whole chat completion as an Anthropic message, and its usage."""
    chat = loads_object(body)
    if chat is None:
        raise UpstreamError("the runtime's answer is not a JSON object", reason=Reason.ERROR)
    message = chat_to_message(chat, public)
    return orjson.dumps(message), anthropic_usage(message)


def tokenizer_count(body: bytes) -> bytes:
    """`{"input_tokens": N}` from a tokenizer's answer: vLLM's `count`, or the length of
    `tokens` (llama-server's answer has only that)."""
    answer = loads_object(body) or {}
    count = answer.get("count")
    if not isinstance(count, int) or isinstance(count, bool):
        tokens = answer.get("tokens")
        if not isinstance(tokens, list):
            raise UpstreamError("the runtime's tokenizer answered without a token count",
                                reason=Reason.ERROR)
        count = len(tokens)
    return orjson.dumps({"input_tokens": count})


def _has_line(block: bytes, starts: tuple[bytes, ...]) -> bool:
    """True when a line of `block` starts with one of `starts` (not when a token merely
    contains the word: inside JSON strings, newlines are escaped)."""
    for line in block.split(b"\n"):
        if line.startswith(starts):
            return True
    return False


def _error_message(block: bytes) -> str:
    for line in block.split(b"\n"):
        if line.startswith(b"data:") and b'"error"' in line:
            event = loads_object(line[5:]) or {}
            inner = event.get("error")
            if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                return "the runtime's stream failed: " + inner["message"]
    return "the runtime's stream failed"


def _chunk_error(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return f"the runtime's stream failed: {message or 'no message'}"
