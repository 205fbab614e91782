"""The fake runtime on the wire: HTTP/1.1 on a bare asyncio Protocol.

A framework would cost more CPU per request than the proxies the benchmark
measures through it, so this is the least HTTP that real clients need: keep-alive,
requests in order, Content-Length bodies (a chunked one is refused with 411, as
the gateway never sends one), JSON answers, and SSE as chunked transfer encoding
with one write per event. Writes honour the transport's flow control, as a real
server's do: a stream whose reader stops waits instead of piling up in memory.
Answers that wait (a hang, a stream) run as a task that holds the requests behind
it; a caller that goes away cancels it. What to answer is `answers`.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from types import MappingProxyType
from typing import TYPE_CHECKING

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from . import formats
from . import stored
from .answers import FORMS, NO_HEADERS, Answers, header_lines

if TYPE_CHECKING:
    from .runtime import FakeRuntime

MAX_HEAD = 64 * 1024
REASONS = MappingProxyType({s.value: s.phrase.encode() for s in HTTPStatus})


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


class Connection(Answers, asyncio.Protocol):
    """One caller's connection: requests in order; an answer that waits holds the rest."""

    __slots__ = ("rt", "conns", "transport", "peer", "buf", "busy", "closed", "closing",
                 "task", "paused")

    def __init__(self, rt: FakeRuntime, conns: set[Connection]) -> None:
        self.rt = rt
        self.conns = conns
        self.buf = b""
        self.busy = False
        self.closed = False
        self.closing = False             # the server shuts down: this answer is the last
        self.task: asyncio.Task | None = None
        self.paused: asyncio.Future | None = None   # set while the transport is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conns.discard(self)
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.paused = None

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
            path, _, query = target.partition(b" ")[0].decode("latin-1").partition("?")
            rt = self.rt
            headers = (_headers(fields) if rt.record or rt.echo_credentials or path in FORMS
                       else NO_HEADERS)
            if method == b"POST":
                self.post(path, query, headers, body)
            elif method == b"GET":
                self._get(path, query)
            elif path.startswith(stored.PREFIX):
                stored.answer(self, method.decode("latin-1"), path, query)
            else:
                self.send(405, orjson.dumps(formats.error("method not allowed", 405)))

    def _close(self) -> None:
        """Hang up: nothing more is read or written on this connection."""
        self.closed = True
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self.send(status, orjson.dumps(formats.error(message, status)))
        self._close()

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
             content_type: bytes = b"application/json") -> None:
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n%s"
            % (status, REASONS.get(status, b"Unknown"), content_type, len(body),
               header_lines(headers) if headers else b"",
               b"Connection: close\r\n" if self.closing else b"", body))

    def _get(self, path: str, query: str) -> None:
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
        if path in rt.pages:
            self._page(path)
        elif path == "/v1/models":
            self.send(200, rt.dumps(formats.models(rt.models)))
        elif path == "/api/tags" and rt.kind == "ollama":
            self.send(200, rt.dumps(formats.ollama_tags(rt.models)))
        elif path.startswith(stored.PREFIX):
            stored.answer(self, "GET", path, query)
        elif path == "/stats":
            self.send(200, orjson.dumps(rt.stats()))
        else:
            self.send(404, orjson.dumps(formats.error(f"no route {path}", 404)))

    def _page(self, path: str) -> None:
        """A page of `pages`, as its switches say."""
        rt = self.rt
        rt.scrapes[path] += 1
        fault = rt.pages_fault
        if fault == "hang":
            self.busy = True            # nothing more on this connection: the caller gives up
        elif fault in ("500", "404"):
            self.send(int(fault), b"no", content_type=b"text/plain")
        elif fault == "garbage":
            self.send(200, b"<html>{{{ not metrics", content_type=b"text/html")
        elif path in rt.unsupported:
            self.send(501, orjson.dumps(formats.error(
                "This server does not support metrics endpoint. Start it with `--metrics`",
                501, "not_supported_error")))
        else:
            page = rt.pages[path]
            text = page if isinstance(page, str) else page()
            self.send(200, text.encode(), content_type=b"application/json"
                      if text.startswith(("{", "[")) else b"text/plain; version=0.0.4")
