"""Chat's stream format (and the audio APIs', its cousin): model-name rewriting and usage.

The model is rewritten with one byte replace (the runtime's model id becomes the public
name), here for streams and in whole.py for whole answers. Streams are relayed in whole SSE lines as they arrive, never buffered whole; a
chunk is parsed only when it carries usage or an error, so the per-chunk cost
stays a few byte scans. Every event reaches the client with its terminator,
`data: [DONE]` included; a `"usage": null` the gateway's own `include_usage`
caused is taken out again for a client that did not ask for usage.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import GatewayError
from .wire import LineRewriter, SseStart, loads_object

if TYPE_CHECKING:
    from ..dispatch import Opened
    from ..tracing.spans import RequestTrace
    from .response_ids import IdRewriter

# A chunk carries a token once some content/text/arguments string is non-empty
# (`delta` is a streamed transcription's text).
_TOKEN = re.compile(rb'"(?:content|text|arguments|reasoning_content|delta)":\s*"[^"]')


@functools.lru_cache(maxsize=1024)
def model_patterns(runtime_id: str, public: str) -> tuple[tuple[bytes, bytes], ...]:
    """Exact byte patterns of the `"model"` key, compact and spaced, as serialisers write it."""
    if runtime_id == public:
        return ()
    old, new = orjson.dumps(runtime_id), orjson.dumps(public)
    return ((b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new))


def rewrite_model(data: bytes, patterns: tuple[tuple[bytes, bytes], ...]) -> bytes:
    for old, new in patterns:
        if old in data:
            data = data.replace(old, new)
    return data


def error_event(err: GatewayError) -> bytes:
    return b"data: " + err.to_json() + b"\n\n"


def api_usage(usage: Any) -> dict[str, Any] | None:
    """Any API's usage object in chat's terms (prompt/completion/total tokens), which the
    metrics, the log line and tpm read: Responses, Anthropic and OpenAI audio and images
    count `input_tokens`/`output_tokens`, rerank only `total_tokens` (all of it input)."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return usage
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    total = usage.get("total_tokens")
    if prompt is None and completion is None:
        prompt = total
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


class StreamRewriter(SseStart, LineRewriter):
    """Per-stream state: carries partial lines, rewrites the model, captures usage.

    `saw_done` is set at the `data: [DONE]` line, `finished` once that event's
    blank line is out too: a runtime may write the two apart. `end_marker`, when
    given, is a chunk that makes the stream `complete` without [DONE] (OpenAI's
    streamed transcriptions end with `transcript.text.done`, vLLM's with [DONE]): the
    relay then goes on to [DONE] or the runtime's close, and either is a clean end.
    """

    __slots__ = ("patterns", "drop_usage", "usage", "saw_token", "complete", "end_marker")

    failed = None   # a chat stream's error chunk after its first is relayed as any chunk
    END_MARKER: bytes | None = None

    @classmethod
    def make(cls, opened: Opened, ids: IdRewriter | None,
             trace: RequestTrace | None) -> StreamRewriter:
        shaped = opened.shaped
        if trace is not None:
            # The same rewriter, also noting each choice's finish reason for the span.
            return trace.stream_rewriter(shaped.patterns, shaped.drop_usage, cls.END_MARKER)
        return cls(shaped.patterns, shaped.drop_usage, cls.END_MARKER)

    def closed_cleanly(self) -> bool:
        return self.saw_done or self.complete

    def __init__(self, patterns: tuple[tuple[bytes, bytes], ...], drop_usage: bool,
                 end_marker: bytes | None = None) -> None:
        super().__init__()
        self.patterns = patterns
        self.drop_usage = drop_usage
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self.saw_token = False
        self.end_marker = end_marker

    @staticmethod
    def error_event(err: GatewayError) -> bytes:
        """How this API's stream says it broke: a `data: {"error": ...}` event."""
        return error_event(err)

    def _rewrite(self, data: bytes) -> bytes:
        if self.patterns:
            data = rewrite_model(data, self.patterns)
        if b'"usage"' in data:
            data = self._usage(data)
        if not self.saw_token and _TOKEN.search(data):
            self.saw_token = True
        if b"[DONE]" in data:
            end = _done_end(data)
            if end >= 0:
                self.saw_done = True
                data = self._done(data, end)
        if self.end_marker is not None and self.end_marker in data:
            self.complete = True
        return data

    def _done(self, data: bytes, end: int) -> bytes:
        """`data` up to the `data: [DONE]` line ending at `end`, then that event's blank
        line if it came with it (else it is still to come); nothing after it."""
        if end == len(data):
            return data
        self.finished = True
        return data[:end] + (_blank_line(data[end:]) or b"\n")

    def _usage(self, data: bytes) -> bytes:
        """`"usage":null` rides on every chunk once usage is asked for: out with it when
        the gateway asked, not the client; only real usage is parsed. The usual form
        costs one replace and one scan (bytes.replace returns `data` itself when it
        finds nothing)."""
        if self.drop_usage:
            data = data.replace(b',"usage":null', b"")
            if b'"usage"' not in data:
                return data
            data = strip_null_usage(data)
        if b'"usage":{' in data or b'"usage": {' in data:
            data = self._take_usage(data)
        return data

    def _take_usage(self, block: bytes) -> bytes:
        lines = block.split(b"\n")
        keep: list[bytes] = []
        skip_blank = False
        for line in lines:
            if skip_blank and not line.strip():
                skip_blank = False
                continue
            skip_blank = False
            if line.startswith(b"data:") and b'"usage"' in line:
                chunk = loads_object(line[5:])
                usage = chunk.get("usage") if chunk else None
                if isinstance(usage, dict):
                    self.usage = api_usage(usage)
                    if self.drop_usage and not chunk.get("choices"):
                        skip_blank = True
                        continue
            keep.append(line)
        return b"\n".join(keep)


# `"usage": null` as serialisers write it, with the comma that joins it to its chunk.
_NULL_USAGE = ((b'"usage":null', (b',"usage":null', b'"usage":null,')),
               (b'"usage": null', (b', "usage": null', b'"usage": null, ')))


def strip_null_usage(data: bytes) -> bytes:
    """`data` with every `"usage": null` member taken out of its chunks."""
    for field, forms in _NULL_USAGE:
        for form in forms:
            if field not in data:
                break
            data = data.replace(form, b"")
    return data


def _blank_line(data: bytes) -> bytes | None:
    """The blank line `data` starts with, if it does."""
    if data.startswith(b"\n"):
        return b"\n"
    if data.startswith(b"\r\n"):
        return b"\r\n"
    return None


def _done_end(block: bytes) -> int:
    """Where the `data: [DONE]` line of `block` ends (after its newline), or -1: a token
    that merely says "[DONE]" is no such line.

    Inside a JSON string a newline is always escaped, so a real event is the one
    whose line starts with `data:`. `block` holds whole lines only.
    """
    at = block.find(b"[DONE]")
    while at != -1:
        line_start = block.rfind(b"\n", 0, at) + 1
        if block[line_start:at].rstrip() == b"data:":
            return block.find(b"\n", at) + 1
        at = block.find(b"[DONE]", at + 1)
    return -1


class AudioStream(StreamRewriter):
    """A streamed transcription: OpenAI's ends with `transcript.text.done` (no [DONE]),
    vLLM's with [DONE]; either is a clean end."""

    __slots__ = ()
    END_MARKER = b"transcript.text.done"
