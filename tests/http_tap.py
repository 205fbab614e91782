"""A transparent TCP relay on 127.0.0.1 that notes every HTTP request passing through it.

llama-server logs no request to /health, /v1/models or /metrics (they are too frequent for its
log), so what the gateway sends a runtime (which paths, which X-Request-ID) can only be seen
on the wire. The relay copies bytes both ways unchanged, as they come (streams stay
incremental), and parses only the client's side: request line and headers, skipping
Content-Length bodies. It runs its own event loop in a thread so that plain synchronous tests
can use it beside their subprocesses.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]   # lower-cased names


def parse_head(head: bytes) -> tuple[Seen, int] | None:
    """The request of one header block and its body length (-1: chunked, not followed)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        length = -1
    else:
        length = int(headers.get("content-length", "0") or 0)
    return Seen(parts[0], parts[1], headers), length


class RequestParser:
    """Feeds on one connection's client bytes; calls `note` once per request head."""

    def __init__(self, note) -> None:
        self.note = note
        self.buf = b""
        self.skip = 0
        self.lost = False   # a chunked request body: the boundaries after it are unknown

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        self.buf += data
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buf))
                self.buf, self.skip = self.buf[taken:], self.skip - taken
                if self.skip:
                    return
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            parsed = parse_head(self.buf[:end])
            self.buf = self.buf[end + 4:]
            if parsed is None:
                self.lost = True
                return
            seen, length = parsed
            self.note(seen)
            if length < 0:
                self.lost = True
                return
            self.skip = length


class HttpTap:
    """Listens on a free port and relays every connection to `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"http-tap-{upstream_port}")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self.listen()

    def listen(self) -> None:
        """Accept connections (again, on the same port after `refuse`)."""
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, HOST, self.port), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Stop listening and drop every connection: with its runtime killed, the gateway then
        meets a refused connection, as it would on the runtime's own port."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.refuse()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def _note(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            try:
                up_r, up_w = await asyncio.open_connection(HOST, self.upstream_port)
            except OSError:
                return   # the runtime is down: the client sees the connection close
            parser = RequestParser(self._note)
            pumps = [asyncio.ensure_future(self._pump(client_r, up_w, parser.feed)),
                     asyncio.ensure_future(self._pump(up_r, client_w, None))]
            try:
                # Either side closing ends the connection, as it would without the relay.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                up_w.close()
        finally:
            client_w.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap) -> None:
        try:
            while data := await reader.read(65536):
                if tap is not None:
                    tap(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
