"""The fake runtime on the wire: HTTP/1.1 on a bare asyncio Protocol.

A framework would cost more CPU per request than the proxies the benchmark
measures through it, so this is the least HTTP that real clients need: keep-alive,
requests in order, Content-Length bodies (a chunked one is refused with 411, as
the gateway never sends one), JSON answers, and SSE as chunked transfer encoding
with one write per event. Answers that wait (a hang, a stream) run as a task
that holds the requests behind it; a caller that goes away cancels it.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from . import formats

if TYPE_CHECKING:
    from .runtime import Behaviour, FakeRuntime

MAX_HEAD = 64 * 1024
CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
POST_PATHS = (CHAT, "/v1/completions", EMBEDDINGS)
REASONS = MappingProxyType({s.value: s.phrase.encode() for s in HTTPStatus})
NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())   # when none are kept


class Call:
    """One POST as read: what was asked, with which switches, and whether it fails."""

    __slots__ = ("path", "headers", "body", "model", "b", "failed", "chat", "stream",
                 "tokens", "usage")

    def __init__(self, rt: FakeRuntime, path: str, headers: CIMultiDictProxy[str],
                 body: dict[str, Any]) -> None:
        self.path, self.headers, self.body = path, headers, body
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        self.b: Behaviour = rt.by_model.get(self.model, rt) if rt.by_model else rt
        self.failed = self.b.failing()
        self.chat = path == CHAT
        self.stream = body.get("stream") is True and path != EMBEDDINGS
        wanted = body.get("max_tokens")
        asked = rt.tokens_from_request and type(wanted) is int and wanted > 0
        self.tokens = min(wanted if asked else self.b.words, formats.MAX_TOKENS)
        options = body.get("stream_options")
        self.usage = isinstance(options, dict) and options.get("include_usage") is True

    def credentials(self) -> str:
        return f"{self.headers.get('Authorization')} {self.headers.get('api-key')}"


def _body_length(head: bytes) -> int | None:
    """The one plain Content-Length a request head declares (0 if none), else None."""
    lowered = head.lower()
    if b"\r\ntransfer-encoding:" in lowered:
        return None
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    if lowered.find(b"\r\ncontent-length:", at + 2) >= 0:
        return None
    value = lowered[at + 17:].partition(b"\r\n")[0].strip()
    return int(value) if value.isdigit() else None


def _headers(fields: bytes) -> CIMultiDictProxy[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for line in fields.split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers.add(name.decode("latin-1").strip(), value.strip().decode("latin-1"))
    return CIMultiDictProxy(headers)


def _header_lines(headers: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


class Connection(asyncio.Protocol):
    """One caller's connection: requests in order; an answer that waits holds the rest."""

    __slots__ = ("rt", "conns", "transport", "peer", "buf", "busy", "closed", "closing",
                 "task")

    def __init__(self, rt: FakeRuntime, conns: set[Connection]) -> None:
        self.rt = rt
        self.conns = conns
        self.buf = b""
        self.busy = False
        self.closed = False
        self.closing = False             # the server shuts down: this answer is the last
        self.task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conns.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def shut_down(self) -> None:
        """No more requests: hang up now if idle, else once the answer under way is sent."""
        self.closing = True
        if not self.busy:
            self._close()

    def _drain(self) -> None:
        """Answer every complete request in the buffer, until one has to wait."""
        while not self.busy and not self.closed:
            if self.closing:
                self._close()
                return
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._refuse(431, "the request head is too large")
                return
            head = self.buf[:head_end]
            length = _body_length(head)
            if length is None:
                self._refuse(411, "send one Content-Length")
                return
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4:end]
            self.buf = self.buf[end:]
            line, _, fields = head.partition(b"\r\n")
            method, _, target = line.partition(b" ")
            path = target.partition(b" ")[0].partition(b"?")[0].decode("latin-1")
            headers = (_headers(fields) if self.rt.record or self.rt.echo_credentials
                       else NO_HEADERS)
            if method == b"POST" and path in POST_PATHS:
                self._post(path, headers, body)
            else:
                self._get(path)

    def _close(self) -> None:
        """Hang up: nothing more is read or written on this connection."""
        self.closed = True
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self.send(status, orjson.dumps(formats.error(message, status)))
        self._close()

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"%s%s\r\n%s" % (status, REASONS.get(status, b"Unknown"), len(body),
                             _header_lines(headers) if headers else b"",
                             b"Connection: close\r\n" if self.closing else b"", body))

    def _get(self, path: str) -> None:
        rt = self.rt
        health_path, healthy = formats.HEALTH[rt.kind]
        if path == health_path:
            rt.health_checks += 1
            if rt.health_status != 200:
                self.send(rt.health_status, orjson.dumps(formats.error(
                    "unhealthy", rt.health_status, "server_error")))
                return
            if healthy is not None:
                self.send(200, healthy)
                return
        if path == "/v1/models":
            self.send(200, rt.dumps(formats.models(rt.models)))
        elif path == "/api/tags" and rt.kind == "ollama":
            self.send(200, rt.dumps(formats.ollama_tags(rt.models)))
        elif path == "/stats":
            self.send(200, orjson.dumps(rt.stats()))
        else:
            self.send(404, orjson.dumps(formats.error(f"no route {path}", 404)))

    def _post(self, path: str, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        rt = self.rt
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.send(400, orjson.dumps(formats.error("the body is not a JSON object", 400)))
            return
        if path == EMBEDDINGS and rt.kind == "tgi":
            self.send(404, orjson.dumps(formats.error("TGI has no embeddings", 404)))
            return
        rt.answered += 1
        if rt.record:
            rt.requests.append(body)
            rt.headers_seen.append(headers)
            rt.peers.append(self.peer)
        call = Call(rt, path, headers, body)
        if call.b.hang_s or call.b.ttft_s or (call.stream and not call.failed):
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._answer_later(call))
        else:
            self._answer(call)

    def _answer(self, call: Call) -> None:
        rt = self.rt
        if call.failed:
            self._fail(call)
        elif call.path == EMBEDDINGS:
            self.send(200, rt.dumps(formats.embeddings(call.model, call.body.get("input"))),
                      rt.extra_headers)
        else:
            self.send(200, rt.dumps(formats.completion(call.chat, call.model, call.tokens,
                                                       call.b.send_usage)), rt.extra_headers)

    def _fail(self, call: Call) -> None:
        rt = self.rt
        body = formats.failure(call.b.status)
        headers = dict(rt.extra_headers)
        if call.b.retry_after:
            headers["Retry-After"] = call.b.retry_after
        if rt.echo_credentials:         # as a runtime that quotes a bad key back does
            echoed = call.credentials()
            body["error"]["message"] += f": {echoed}"
            body["error"]["escaped"] = orjson.dumps(echoed).decode()
            headers["WWW-Authenticate"] = f"Bearer error={echoed!r}"
        self.send(call.b.status, rt.dumps(body), headers)

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

    def _event(self, data: bytes) -> None:
        data = b"data: " + data + b"\n\n"
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def _stream(self, call: Call) -> None:
        rt, b = self.rt, call.b
        rt.streams += 1
        rt.in_flight += 1
        try:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                                 b"%s\r\n" % _header_lines(rt.extra_headers))
            if b.ttft_s:
                await asyncio.sleep(b.ttft_s)
            if b.first_event_error:
                message = "model overloaded"
                if rt.echo_credentials:
                    message += f" (key {call.credentials()})"
                self._event(rt.dumps(formats.error(message, 503, "server_error")))
            elif not await self._tokens(call):
                return
            self.transport.write(b"0\r\n\r\n")
        finally:
            rt.in_flight -= 1

    async def _tokens(self, call: Call) -> bool:
        """The token events, the finish, the usage (if asked) and [DONE]; False if broken."""
        rt, b = self.rt, call.b
        base = formats.chunk_base(call.chat, call.model)
        for i in range(call.tokens):
            if b.close_after is not None and i >= b.close_after:
                self._close()               # the runtime dies mid-stream
                return False
            self._event(rt.dumps(formats.chunk(base, call.chat, formats.PIECES[i])))
            rt.events += 1
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
        self._event(rt.dumps(formats.chunk(base, call.chat, None)))
        if call.usage and b.send_usage:
            self._event(rt.dumps(formats.usage_chunk(base, call.tokens)))
            rt.usage_events += 1
        self._event(b"[DONE]")
        rt.events += 2
        return True
