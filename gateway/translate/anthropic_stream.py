"""A streamed chat completion as Anthropic's streamed events, one chunk at a time.

The event sequence is Anthropic's: message_start, ping, then per content block a
content_block_start, its deltas and a content_block_stop, then message_delta (stop reason
and final usage) and message_stop. Blocks follow the order the runtime produces them in:
reasoning becomes a thinking block (closed with a signature_delta carrying the SIGNATURE
placeholder, without which Anthropic clients drop the block), text a text block, and each
tool call (one per chat tool-call index) a tool_use block opened once its name is known.
A change of kind closes the open block first.

Tool arguments are relayed fragment by fragment as `input_json_delta`, as the runtime
streams them, once their first character shows a JSON object is coming. Arguments that do
not start like an object are held back and sent whole at the block's end as
`{"_raw": ...}` (as in the non-streamed answer): relaying them would make the Anthropic SDK
fail on the partial JSON. Two runtime habits are tolerated: every call sent with index 0
but its own id (a new id starts a new block), and fragments of a call arriving after
another block began (sent with the call's own block index, which the SDK accumulates).

The usage chunk (`choices: []`) comes after the finish chunk, so message_delta and
message_stop are only made in finish(), at `[DONE]`. A chunk carrying an `error` object
ends the stream with Anthropic's `event: error`. Hot deltas are built from byte templates:
the translation must cost little more per event than relaying a chat chunk does.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.translate.anthropic_errors import error_event, sse_event
from gateway.translate.anthropic_response import (
    SIGNATURE, matched_stop, message_id, message_usage, reasoning_of, stop_reason,
    tool_input, tool_use_id)

_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
_TEXT = _DELTA + b'"delta":{"type":"text_delta","text":%s}}\n\n'
_THINKING = _DELTA + b'"delta":{"type":"thinking_delta","thinking":%s}}\n\n'
_JSON = _DELTA + b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n'
_SIGNATURE = (_DELTA + b'"delta":{"type":"signature_delta","signature":'
              + orjson.dumps(SIGNATURE).replace(b"%", b"%%") + b"}}\n\n")
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


class _ToolCall:
    """One chat tool call on its way to becoming a tool_use block."""

    __slots__ = ("id", "name", "index", "held", "mode")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.index: int | None = None    # its Anthropic block index, once started
        self.held: list[str] = []        # argument text not sent yet
        self.mode: str | None = None     # None undecided, "stream", or "hold" (not an object)


class ChatStreamToMessages:
    """Feed each parsed chat.completion.chunk; get back complete Anthropic SSE events."""

    __slots__ = ("_model", "_id", "_input_tokens", "_started", "_done", "_kind", "_index",
                 "_next", "_tool", "_tools", "_saw_tool", "_finish_reason", "_matched",
                 "_usage")

    def __init__(self, model: str, message_id: str | None = None, input_tokens: int = 0
                 ) -> None:
        self._model = model
        self._id = message_id              # None: made from the first chunk's id
        self._input_tokens = input_tokens  # for message_start, when known beforehand
        self._started = self._done = self._saw_tool = False
        self._kind: str | None = None      # the open block: "thinking", "text", "tool"
        self._index = -1                   # the open block's index
        self._next = 0                     # the next block's index
        self._tool: _ToolCall | None = None
        self._tools: dict[Any, _ToolCall] = {}
        self._finish_reason: str | None = None
        self._matched: str | None = None
        self._usage: dict[str, Any] | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The runtime's last chat usage object (prompt/completion tokens), if it sent one."""
        return self._usage

    @property
    def done(self) -> bool:
        """True once the stream has ended (finish() ran, or an error event was made)."""
        return self._done

    def start(self, chunk: dict[str, Any] | None = None) -> bytes:
        """message_start and a ping; feed() calls it on the first chunk. Idempotent."""
        if self._started:
            return b""
        self._started = True
        if self._id is None:
            self._id = message_id(chunk.get("id") if chunk else None)
        usage: dict[str, int] = {"input_tokens": self._input_tokens, "output_tokens": 0}
        if chunk and isinstance(chunk.get("usage"), dict):
            known = message_usage(chunk["usage"])
            known["output_tokens"] = 0
            usage = known
        message = {"id": self._id, "type": "message", "role": "assistant",
                   "model": self._model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": usage}
        return sse_event("message_start", {"type": "message_start", "message": message}) + _PING

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events one chunk makes (often one delta, sometimes none)."""
        if self._done or not isinstance(chunk, dict):
            return b""
        out = self.start(chunk) if not self._started else b""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            error = chunk.get("error")
            return out + self._error(error) if error else out
        choice = choices[0] if isinstance(choices, list) else None
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            return out
        reasoning = reasoning_of(delta)
        if reasoning:
            out += self._thinking(reasoning)
        text = delta.get("content")
        if text and isinstance(text, str):
            out += self._text(text)
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    out += self._tool_call(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
            self._matched = matched_stop(choice)
        return out

    def finish(self) -> bytes:
        """Close the open block, then message_delta and message_stop (at `[DONE]`)."""
        if self._done:
            return b""
        out = self.start()
        for call in self._tools.values():
            if call.index is None and (call.held or call.id):
                call.name = ""   # never named by the runtime: still not lost
                out += self._start_tool(call)
        out += self._close()
        stop, sequence = stop_reason(self._finish_reason, self._matched, self._saw_tool)
        usage = message_usage(self._usage) if self._usage else {"output_tokens": 0}
        self._done = True
        return out + sse_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": sequence},
            "usage": usage}) + _MESSAGE_STOP

    def _error(self, error: Any) -> bytes:
        message = error.get("message") if isinstance(error, dict) else error
        self._done = True
        return self._close() + error_event("api_error", str(message or "the runtime failed"))

    def _thinking(self, text: str) -> bytes:
        head = b"" if self._kind == "thinking" else self._open(
            "thinking", {"type": "thinking", "thinking": "", "signature": ""})
        return head + _THINKING % (self._index, orjson.dumps(text))

    def _text(self, text: str) -> bytes:
        head = b"" if self._kind == "text" else self._open("text", {"type": "text", "text": ""})
        return head + _TEXT % (self._index, orjson.dumps(text))

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        function = call.get("function")
        args = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(args, str):
            args = "" if args is None else orjson.dumps(args).decode()
        state = self._tools.get(_call_index(call))
        # The fast path: the next fragment of the open, streaming call.
        if state is self._tool and state is not None and state.mode == "stream" \
                and not call.get("id"):
            return _JSON % (state.index, orjson.dumps(args)) if args else b""
        state = self._call_state(call)
        if args:
            state.held.append(args)
        if state.index is None:
            return self._start_tool(call=state) if state.name else b""
        if state is not self._tool:   # a late fragment of a closed block
            return self._release(state) if state.mode == "stream" else b""
        return self._release(state)

    def _call_state(self, call: dict[str, Any]) -> _ToolCall:
        key = _call_index(call)
        cid = call.get("id")
        cid = cid if isinstance(cid, str) and cid else None
        state = self._tools.get(key)
        if state is None or cid and state.id and cid != state.id:
            state = self._tools[key] = _ToolCall()
        if cid and not state.id:
            state.id = cid
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name and isinstance(name, str) and not state.name:
            state.name = name
        return state

    def _start_tool(self, call: _ToolCall) -> bytes:
        call.id = call.id or tool_use_id()
        head = self._open("tool", {"type": "tool_use", "id": call.id, "name": call.name,
                                   "input": {}})
        call.index, self._tool, self._saw_tool = self._index, call, True
        return head + self._release(call)

    def _release(self, call: _ToolCall) -> bytes:
        """Send held argument text once it is known to start a JSON object."""
        if call.mode == "hold" or not call.held:
            return b""
        text = "".join(call.held)
        if call.mode is None:
            first = text.lstrip()[:1]
            if not first:
                return b""
            call.mode = "stream" if first == "{" else "hold"
            if call.mode == "hold":
                call.held = [text]
                return b""
        call.held.clear()
        return _JSON % (call.index, orjson.dumps(text))

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._kind, self._index = kind, self._next
        self._next += 1
        return out + sse_event("content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": block})

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        out = b""
        if self._kind == "thinking":
            out = _SIGNATURE % self._index
        elif self._tool is not None:
            call, self._tool = self._tool, None
            if call.mode == "hold":
                out = _JSON % (call.index, orjson.dumps(orjson.dumps(
                    tool_input("".join(call.held))).decode()))
                call.held.clear()
        self._kind = None
        return out + _BLOCK_STOP % self._index


def _call_index(call: dict[str, Any]) -> int:
    index = call.get("index")
    return index if isinstance(index, int) else 0
