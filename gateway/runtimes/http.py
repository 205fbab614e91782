"""A model server over HTTP: URLs, headers, timeouts, the one ClientSession.

`HttpRuntime.open()` sends a request and returns an `HttpResponse` once the
runtime's headers are in; every aiohttp or asyncio error on the way is
translated by `failures.translated`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import AsyncIterator, Mapping

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from ..config import BackendConfig
from ..endpoints import Body, Endpoint, Streams
from . import BodyTooLarge
from .failures import Phase, status_error, translated

# A runtime's load endpoint: vLLM's /metrics with many LoRA adapters and data-parallel
# ranks is a few hundred kB; anything past this is not a metrics answer.
SCRAPE_MAX_BYTES = 8 * 1024 * 1024


# Idle keep-alive connections kept per backend (host and port); more in use is fine.
MAX_IDLE_PER_BACKEND = 100


class IdleBoundConnector(aiohttp.TCPConnector):
    """A TCPConnector that keeps at most `max_idle` idle connections per host.

    aiohttp bounds connections in use (`limit_per_host`, which would queue streams)
    and idle time (`keepalive_timeout`), not the idle count: after a burst of 1,000
    streams about 900 idle connections stayed open for the whole keep-alive. A
    connection given back to a full idle pool is closed instead.

    aiohttp (3.14) has no public means to bound the idle count: `_release` (where a
    connection comes back) and `_conns` (the idle pool per key) are the connector's own
    hook and state. tests/test_faults.py::test_the_idle_upstream_pool_is_bounded_per_backend
    fails if an aiohttp release changes them.
    """

    def __init__(self, *, max_idle: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_idle = max_idle

    def _release(self, key, protocol, *, should_close: bool = False) -> None:
        idle = self._conns.get(key)
        if idle is not None and len(idle) >= self.max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


def make_session(*, limit: int = 0,
                 max_idle: int = MAX_IDLE_PER_BACKEND) -> aiohttp.ClientSession:
    """The app's one ClientSession: pooled keep-alive, no hidden caps on use.

    aiohttp's defaults cap at 100 connections and cut every request at 300 s;
    long generations and many streams need neither. Per-request timeouts come
    from each backend's config instead. What is capped is the idle pool.
    """
    connector = IdleBoundConnector(max_idle=max_idle, limit=limit, limit_per_host=0,
                                   keepalive_timeout=60, ttl_dns_cache=300,
                                   enable_cleanup_closed=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
        # No cookie jar: a cookie one runtime sets must never reach another client's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Every aiohttp auto header is set in BackendConfig.request_headers, so none is
        # skipped: skip_auto_headers costs a header-set copy per request.
        auto_decompress=False,
        json_serialize=None)  # type: ignore[arg-type]


class HttpResponse:
    """A runtime's answer whose headers have arrived; the body is read on demand."""

    __slots__ = ("status", "content_type", "_resp", "_backend")

    def __init__(self, resp: aiohttp.ClientResponse, backend: BackendConfig) -> None:
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")
        self._resp = resp
        self._backend = backend

    async def read(self) -> bytes:
        """The whole body. The connection goes back with release() (or close() after
        a failure), which the caller does once the client has its answer."""
        content = self._resp.content
        with translated(Phase.READ, self._backend):
            if content.is_eof():
                # The usual case: the whole body came with the headers and is taken from
                # the buffer as it is, with no timer and no wait.
                return content.read_nowait()
            async with asyncio.timeout(self._backend.timeouts.idle_s):
                return await self._resp.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamTimeout after idle_s of silence.

        Silence is time spent waiting here for the runtime: while the caller holds a
        chunk (writing it to a slow client) the idle clock stands still.
        """
        content = self._resp.content
        loop = asyncio.get_running_loop()
        with translated(Phase.STREAM, self._backend):
            async with asyncio.timeout(None) as deadline:
                watch = IdleWatch(loop, self._backend.timeouts.idle_s, deadline)
                try:
                    while True:
                        data = await content.readany()
                        if not data:
                            return
                        watch.waiting = False
                        yield data
                        watch.last = loop.time()
                        watch.waiting = True
                finally:
                    watch.cancel()

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class IdleWatch:
    """Expires `deadline` once the reader has waited `idle_s` for the runtime.

    `last` is when the reader last began to wait, `waiting` whether it is waiting
    now (False while the caller holds a chunk). Rescheduling a timer on every
    chunk cost more than the rest of the relay's per-chunk work; this timer fires
    once per idle period instead, and re-arms from `last` unless the reader has
    been waiting ever since it was set.
    """

    __slots__ = ("last", "waiting", "_armed", "_loop", "_idle", "_deadline", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_s: float,
                 deadline: asyncio.Timeout) -> None:
        self._loop = loop
        self._idle = idle_s
        self._deadline = deadline
        self.waiting = True
        self.last = self._armed = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_at(self.last + idle_s, self._check)

    def _check(self) -> None:
        if not self.waiting:
            # The caller holds a chunk (a slow client): not the runtime's silence.
            self._armed = self.last
            self._handle = self._loop.call_at(self._loop.time() + self._idle, self._check)
        elif self.last == self._armed:
            self._handle = None
            self._deadline.reschedule(self._loop.time())   # silent for idle_s: expire now
        else:
            self._armed = self.last
            self._handle = self._loop.call_at(self.last + self._idle, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def upstream_headers(backend: BackendConfig, request_id: str) -> CIMultiDict[str]:
    headers = CIMultiDict(backend.request_headers)
    headers["X-Request-ID"] = request_id
    return headers


@functools.lru_cache(maxsize=1024)
def endpoint_url(api_base: str, upstream_path: str) -> URL:
    """The parsed URL of an endpoint, so yarl parses each one once, not once per request."""
    return URL(api_base + upstream_path)


class Transport:
    """The session every HttpRuntime shares, and the timeout objects made from configs."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._connect_timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def connect_timeout(self, connect_s: float) -> aiohttp.ClientTimeout:
        """One immutable ClientTimeout per connect_s value, not one per request."""
        timeout = self._connect_timeouts.get(connect_s)
        if timeout is None:
            timeout = self._connect_timeouts[connect_s] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect_s, connect=connect_s)
        return timeout


class HttpRuntime:
    __slots__ = ("config", "_transport")

    def __init__(self, config: BackendConfig, transport: Transport) -> None:
        self.config = config
        self._transport = transport

    async def open(self, endpoint: Endpoint, payload: dict, request_id: str,
                   deadline: float | None = None, *, target: str | None = None,
                   extra_headers: Mapping[str, str] | None = None) -> HttpResponse:
        """Send the request; return once the headers are in, within first_byte_s and
        `deadline` (loop time: the request's overall retry deadline). `target` is the
        upstream path (and query), already encoded, when it is not the row's own.
        `extra_headers`: the client's headers an API passes through (anthropic-version)
        and the try span's `traceparent`."""
        backend = self.config
        headers = upstream_headers(backend, request_id)
        if endpoint.body is Body.JSON:
            body = orjson.dumps(payload)
        elif endpoint.body is Body.MULTIPART:
            body = payload.payload()
            headers["Content-Type"] = payload.content_type
        else:
            body = None
            del headers["Content-Type"]
        if endpoint.streams is Streams.BYTES:
            headers["Accept"] = "*/*"
        t = backend.timeouts
        base = backend.url if endpoint.upstream_root else backend.api_base
        url = (endpoint_url(base, endpoint.upstream_path) if target is None
               else URL(base + target, encoded=True))
        timeout = self._transport.connect_timeout(t.connect_s)
        # One timer for both limits, whichever comes first.
        limit = asyncio.get_running_loop().time() + t.first_byte_s
        by_deadline = deadline is not None and deadline < limit
        if extra_headers:
            headers.update(extra_headers)
        with translated(Phase.OPEN, backend, by_deadline=by_deadline):
            async with asyncio.timeout_at(deadline if by_deadline else limit):
                resp = await self._transport.session.request(
                    endpoint.method, url, data=body, headers=headers,
                    timeout=timeout, allow_redirects=False)
                if resp.status >= 400:
                    raise await status_error(backend, resp)
        return HttpResponse(resp, backend)

    async def probe(self, request_id: str, timeout_s: float) -> bool:
        cfg = self.config
        status, _ = await self._get(cfg.url + cfg.health_path, request_id, timeout_s)
        return 200 <= status < 300

    async def list_models(self, request_id: str, timeout_s: float) -> tuple[str, ...] | None:
        status, body = await self._get(self.config.api_base + "/models", request_id, timeout_s)
        try:
            data = orjson.loads(body).get("data") if status == 200 else None
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(data, list):
            return None
        return tuple(sorted({m["id"] for m in data
                             if isinstance(m, dict) and isinstance(m.get("id"), str)}))

    async def scrape(self, path: str, request_id: str, timeout_s: float,
                     max_bytes: int = SCRAPE_MAX_BYTES) -> tuple[int, bytes]:
        return await self._get(self.config.url + path, request_id, timeout_s, max_bytes)

    async def _get(self, url: str, request_id: str, timeout_s: float,
                   max_bytes: int | None = None) -> tuple[int, bytes]:
        """A small GET for health checks, model discovery and scrapes (read up to max_bytes)."""
        headers = upstream_headers(self.config, request_id)
        headers.pop("Content-Type", None)
        with translated(Phase.GET, self.config, what=url):
            async with asyncio.timeout(timeout_s):
                async with self._transport.session.get(url, headers=headers,
                                                       allow_redirects=False) as resp:
                    body = (await resp.read() if max_bytes is None
                            else await _read_capped(resp, max_bytes))
                    return resp.status, body


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise BodyTooLarge(f"{resp.content_length} bytes, more than {max_bytes}")
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"more than {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)
