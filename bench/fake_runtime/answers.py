"""What the fake runtime answers to a POST, whole or streamed, with its switches applied.

Each API is one path and a pair of formats: the whole answer, and the stream as
SSE events (`formats`, `formats_responses`, `formats_messages`). One writer sends
every stream, so the stream switches (time to first token, keep-alives, a break,
an error in place of the first event, a split or unterminated `[DONE]`) work the
same on every API.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from . import formats, formats_messages, stored
from .apis import (APIS, CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES, SPEECH, Api,
                   first_event_error)
from .forms import form_fields

if TYPE_CHECKING:
    from .runtime import Behaviour, FakeRuntime

NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())   # when none are kept
FORMS = frozenset(path for path, api in APIS.items() if api.form)   # their headers are read
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n%s\r\n")


def header_lines(headers: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


class Call:
    """One POST as read: what was asked, with which switches, and whether it fails."""

    __slots__ = ("path", "headers", "body", "model", "b", "failed", "stream", "tokens",
                 "usage", "api", "done")

    def __init__(self, rt: FakeRuntime, path: str, api: Api, headers: CIMultiDictProxy[str],
                 body: dict[str, Any]) -> None:
        self.path, self.headers, self.body = path, headers, body
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        self.b: Behaviour = rt.by_model.get(self.model, rt) if rt.by_model else rt
        self.failed = self.b.failing()
        self.api = api
        self.stream = (body.get("stream") is True and api.events is not None) or path == SPEECH
        self.tokens = min(self.b.words, formats.MAX_TOKENS)
        if rt.tokens_from_request:
            wanted = body.get("max_output_tokens" if path == RESPONSES else "max_tokens")
            if type(wanted) is int and wanted > 0:
                self.tokens = min(wanted, formats.MAX_TOKENS)
        options = body.get("stream_options")
        self.usage = isinstance(options, dict) and options.get("include_usage") is True
        self.done: dict[str, Any] | None = None      # the response a Responses call makes

    def credentials(self) -> str:
        return f"{self.headers.get('Authorization')} {self.headers.get('api-key')}"


class Answers:
    """The POST half of a `protocol.Connection`."""

    __slots__ = ()
    rt: FakeRuntime
    transport: asyncio.Transport
    paused: asyncio.Future | None

    def post(self, path: str, query: str, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        rt = self.rt
        api = APIS.get(path)
        if api is None and path.startswith(stored.PREFIX):
            stored.answer(self, "POST", path, query)
            return
        if api is None or (rt.missing and path in rt.missing) or (path == EMBEDDINGS
                                                                   and rt.kind == "tgi"):
            self.send(404, orjson.dumps(formats.error(f"no route {path}", 404)))
            return
        if api.form:
            body = form_fields(headers.get("Content-Type", ""), raw)
        else:
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
        call = Call(rt, path, api, headers, body)
        if path == RESPONSES and not stored.create(self, call):
            return
        self.start(call)

    def start(self, call: Call) -> None:
        """Answer now, or in a task that holds the connection's later requests."""
        if self.rt.batch is not None:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._in_batch(call))
        elif call.b.hang_s or call.b.ttft_s or (call.stream and not call.failed):
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._answer_later(call))
        else:
            self._answer(call)

    def _answer(self, call: Call) -> None:
        if call.failed:
            self._fail(call)
        else:
            self.send(200, self.rt.dumps(call.api.whole(self.rt, call)), self.rt.extra_headers)

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

    async def _in_batch(self, call: Call) -> None:
        """Wait for a place in the batch, then answer; a caller that leaves frees it."""
        rt, batch = self.rt, self.rt.batch
        clock = asyncio.get_running_loop().time
        arrived = clock()
        rt.waiting += 1
        try:
            await batch.acquire()
        except asyncio.CancelledError:
            rt.cancelled += 1
            self.task, self.busy = None, False
            return
        finally:
            rt.waiting -= 1
        queued = clock() - arrived
        rt.running += 1
        try:
            await self._answer_later(call, paced=True)
        finally:
            rt.running -= 1
            rt.served += 1
            rt.queue_time_s += queued            # vLLM's request_queue_time_seconds
            rt.latency_s += clock() - arrived    # and e2e_request_latency_seconds
            batch.release()

    async def _answer_later(self, call: Call, paced: bool = False) -> None:
        try:
            if call.b.hang_s:
                await asyncio.sleep(call.b.hang_s)
            if call.stream and not call.failed:
                await self._stream(call)
            else:
                if call.b.ttft_s and not call.failed:
                    await asyncio.sleep(call.b.ttft_s)
                if paced and not call.failed:
                    await asyncio.sleep(call.b.chunk_delay * (call.tokens - 1))
                self._answer(call)
        except asyncio.CancelledError:
            self.rt.cancelled += 1      # the caller went away: stop generating
            return
        finally:
            self.task = None
            self.busy = False
        self._drain()

    def _chunk(self, data: bytes) -> None:
        if self.rt.keep_sent:
            self.rt.sent += data
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def _stream(self, call: Call) -> None:
        rt, b = self.rt, call.b
        rt.streams += 1
        rt.in_flight += 1
        try:
            self.transport.write(STREAM_HEAD % (call.api.content_type,
                                                header_lines(rt.extra_headers)))
            if b.ttft_s:
                await asyncio.sleep(b.ttft_s)
            for _ in range(b.keepalives):
                self._chunk(formats.KEEPALIVE)
                await asyncio.sleep(b.keepalive_every_s)
            if b.first_event_error:
                self._chunk(first_event_error(rt, call))
            elif not await self._write_events(call):
                return
            self.transport.write(b"0\r\n\r\n")
        finally:
            rt.in_flight -= 1

    async def _write_events(self, call: Call) -> bool:
        """Each event its own chunk, `chunk_delay` apart; False if the stream was broken."""
        rt, b = self.rt, call.b
        odd_done = b.split_done or b.done_unterminated
        # `chunk_delay` after each token; what follows the finish event comes at once.
        paced = (call.tokens if call.path in (CHAT, COMPLETIONS) and not rt.answer
                 else formats.MAX_TOKENS * 2)
        # Chat's chunks carry `chunk_bytes` in their text; other event streams get an SSE
        # comment of that size before each event (a client skips it; it still takes room).
        pad = (b": " + b"x" * b.chunk_bytes + b"\n" if b.chunk_bytes and call.path not in (
            CHAT, COMPLETIONS) and call.api.content_type == b"text/event-stream" else b"")
        for i, event in enumerate(call.api.events(rt, call)):
            if b.close_after is not None and i >= b.close_after:
                self._close()               # the runtime dies mid-stream
                return False
            if 0 < i <= paced and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            if odd_done and event is formats.DONE:
                await self._odd_done(b)
            else:
                self._chunk(pad + event if pad else event)
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
