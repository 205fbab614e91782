"""What the fake runtime answers to a POST, whole or streamed, with its switches applied.

Each API is one path and a pair of formats: the whole answer, and the stream as
SSE events (`formats`, `formats_responses`, `formats_messages`). One writer sends
every stream, so the stream switches (time to first token, keep-alives, a break,
an error in place of the first event, a split or unterminated `[DONE]`) work the
same on every API.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterable

import orjson
from multidict import CIMultiDictProxy

from . import formats, formats_messages, formats_responses

if TYPE_CHECKING:
    from .runtime import Behaviour, FakeRuntime

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
RESPONSES, MESSAGES = "/v1/responses", "/v1/messages"
COUNT_TOKENS, TOKENIZE = "/v1/messages/count_tokens", "/tokenize"
POST_PATHS = frozenset((CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES, COUNT_TOKENS,
                        TOKENIZE))
STREAMED = frozenset((CHAT, COMPLETIONS, RESPONSES, MESSAGES))
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n%s\r\n")


def header_lines(headers: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


class Call:
    """One POST as read: what was asked, with which switches, and whether it fails."""

    __slots__ = ("path", "headers", "body", "model", "b", "failed", "stream", "tokens",
                 "usage")

    def __init__(self, rt: FakeRuntime, path: str, headers: CIMultiDictProxy[str],
                 body: dict[str, Any]) -> None:
        self.path, self.headers, self.body = path, headers, body
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        self.b: Behaviour = rt.by_model.get(self.model, rt) if rt.by_model else rt
        self.failed = self.b.failing()
        self.stream = body.get("stream") is True and path in STREAMED
        wanted = body.get("max_output_tokens" if path == RESPONSES else "max_tokens")
        asked = rt.tokens_from_request and type(wanted) is int and wanted > 0
        self.tokens = min(wanted if asked else self.b.words, formats.MAX_TOKENS)
        options = body.get("stream_options")
        self.usage = isinstance(options, dict) and options.get("include_usage") is True

    def credentials(self) -> str:
        return f"{self.headers.get('Authorization')} {self.headers.get('api-key')}"


def tokenized(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """/tokenize: llama-server's `{"tokens"}` of `content`; vLLM's count of a prompt or of
    the messages' words."""
    if kind == "llamacpp":
        return {"tokens": list(range(len(str(body.get("content", "")).split())))}
    if "messages" in body:
        count = sum(len(str(m.get("content")).split()) for m in body["messages"])
    else:
        count = len(str(body.get("prompt", "")).split())
    return {"count": count, "max_model_len": 4096, "tokens": list(range(count)),
            "token_strs": None}


class Answers:
    """The POST half of a `protocol.Connection`."""

    __slots__ = ()
    rt: FakeRuntime
    transport: asyncio.Transport
    paused: asyncio.Future | None

    def post(self, path: str, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        rt = self.rt
        if path not in POST_PATHS or path in rt.missing or (path == EMBEDDINGS
                                                             and rt.kind == "tgi"):
            self.send(404, orjson.dumps(formats.error(f"no route {path}", 404)))
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.send(400, orjson.dumps(formats.error("the body is not a JSON object", 400)))
            return
        rt.answered += 1
        if rt.record:
            rt.requests.append(body)
            rt.request_paths.append(path)
            rt.headers_seen.append(headers)
            rt.peers.append(self.peer)
        call = Call(rt, path, headers, body)
        if call.b.hang_s or call.b.ttft_s or (call.stream and not call.failed):
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._answer_later(call))
        else:
            self._answer(call)

    def _answer(self, call: Call) -> None:
        if call.failed:
            self._fail(call)
        else:
            self.send(200, self._whole(call), self.rt.extra_headers)

    def _whole(self, call: Call) -> bytes:
        rt, path, body = self.rt, call.path, call.body
        if path == EMBEDDINGS:
            return rt.dumps(formats.embeddings(call.model, body.get("input")))
        if path == RESPONSES:
            return rt.dumps(formats_responses.response(call.model, call.tokens,
                                                       body.get("previous_response_id")))
        if path == MESSAGES:
            return rt.dumps(formats_messages.message(self._script(call), call.model))
        if path == COUNT_TOKENS:
            messages = body.get("messages")
            return rt.dumps({"input_tokens": formats_messages.INPUT_TOKENS
                             + (len(messages) if isinstance(messages, list) else 0)})
        if path == TOKENIZE:
            return rt.dumps(tokenized(rt.tokenizer, body))
        if rt.answer is not None and path == CHAT:
            return rt.dumps(formats_messages.chat_completion(rt.answer, call.model))
        return rt.dumps(formats.completion(path == CHAT, call.model, call.tokens,
                                           call.b.send_usage))

    def _script(self, call: Call) -> formats_messages.Answer:
        return self.rt.answer or formats_messages.of_tokens(call.tokens)

    def _fail(self, call: Call) -> None:
        rt, status = self.rt, call.b.status
        body = (rt.error_body or (formats_messages.failure(status) if call.path == MESSAGES
                                  else formats.failure(status)))
        headers = dict(rt.extra_headers)
        if call.b.retry_after:
            headers["Retry-After"] = call.b.retry_after
        if rt.echo_credentials:         # as a runtime that quotes a bad key back does
            echoed = call.credentials()
            body = {**body, "error": {**body["error"], "escaped": orjson.dumps(echoed).decode(),
                                      "message": body["error"]["message"] + f": {echoed}"}}
            headers["WWW-Authenticate"] = f"Bearer error={echoed!r}"
        self.send(status, rt.dumps(body), headers)

    async def _answer_later(self, call: Call) -> None:
        try:
            if call.b.hang_s:
                await asyncio.sleep(call.b.hang_s)
            if call.stream and not call.failed:
                await self._stream(call)
            else:
                if call.b.ttft_s and not call.failed:
                    await asyncio.sleep(call.b.ttft_s)
                self._answer(call)
        except asyncio.CancelledError:
            self.rt.cancelled += 1      # the caller went away: stop generating
            return
        finally:
            self.task = None
            self.busy = False
        self._drain()

    def _events(self, call: Call) -> Iterable[bytes]:
        rt, path, b = self.rt, call.path, call.b
        if path == RESPONSES:
            return formats_responses.events(rt.dumps, call.model, call.tokens)
        if path == MESSAGES:
            return formats_messages.message_events(self._script(call), call.model)
        if rt.answer is not None and path == CHAT:
            return formats_messages.chat_chunks(rt.answer, call.model, call.usage)
        base = formats.chunk_base(path == CHAT, call.model)
        if b.null_usage and call.usage:
            base["usage"] = None        # on every chunk, as OpenAI's own API does
        pad = "x" * max(0, b.chunk_bytes - 200)
        return formats.chat_events(rt.dumps, base, path == CHAT, call.tokens,
                                   call.usage and b.send_usage, pad)

    def _first_event_error(self, call: Call) -> bytes:
        rt = self.rt
        if call.path == MESSAGES:
            return formats_messages.overloaded()
        message = "model overloaded"
        if rt.echo_credentials:
            message += f" (key {call.credentials()})"
        if call.path == RESPONSES:
            return formats_responses.error_event(rt.dumps, message)
        return formats.event(rt.dumps(formats.error(message, 503, "server_error")))

    def _chunk(self, data: bytes) -> None:
        if self.rt.keep_sent:
            self.rt.sent += data
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def _stream(self, call: Call) -> None:
        rt, b = self.rt, call.b
        rt.streams += 1
        rt.in_flight += 1
        try:
            self.transport.write(STREAM_HEAD % header_lines(rt.extra_headers))
            if b.ttft_s:
                await asyncio.sleep(b.ttft_s)
            for _ in range(b.keepalives):
                self._chunk(formats.KEEPALIVE)
                await asyncio.sleep(b.keepalive_every_s)
            if b.first_event_error:
                self._chunk(self._first_event_error(call))
            elif not await self._write_events(call):
                return
            self.transport.write(b"0\r\n\r\n")
        finally:
            rt.in_flight -= 1

    async def _write_events(self, call: Call) -> bool:
        """Each event its own chunk, `chunk_delay` apart; False if the stream was broken."""
        rt, b = self.rt, call.b
        odd_done = b.split_done or b.done_unterminated
        for i, event in enumerate(self._events(call)):
            if b.close_after is not None and i >= b.close_after:
                self._close()               # the runtime dies mid-stream
                return False
            if i and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            if odd_done and event is formats.DONE:
                await self._odd_done(b)
            else:
                self._chunk(event)
            rt.events += 1
            if self.paused is not None:
                await self.paused           # the reader is behind: wait, as a server does
        if call.usage and b.send_usage and call.path in (CHAT, COMPLETIONS) and not rt.answer:
            rt.events -= 1                  # the usage event is counted on its own
            rt.usage_events += 1
        return True

    async def _odd_done(self, b: Behaviour) -> None:
        """`data: [DONE]` with its blank line in a write of its own, or with none at all."""
        self._chunk(b"data: [DONE]\n")
        if b.split_done:
            await asyncio.sleep(0.05)       # a read of its own on the caller's side
            self._chunk(b"\n")
