"""The runtimes behind the gateway, behind one interface.

    Runtime      one backend's transport: open() a request, probe() its health,
                 list_models() for discovery, scrape() its own load endpoints
    ├── HttpRuntime   a model server over HTTP (http.py); errors translated in failures.py
    └── EchoRuntime   the built-in `echo` runtime, answering in process (echo.py; its
                      Responses, tokenizer, rerank and score in echo_apis.py)

`kinds.py` holds what each kind of runtime does by default (health path, capabilities).
This module imports nothing heavy: `gateway check` reads `kinds` without aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Mapping, Protocol

if TYPE_CHECKING:
    from ..config import BackendConfig
    from ..endpoints import Endpoint


class BodyTooLarge(ValueError):
    """A scrape answer longer than the cap: a misconfigured URL, never read whole."""


class RuntimeResponse(Protocol):
    """A runtime's answer whose headers have arrived; the body is read on demand."""

    status: int
    content_type: str

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None:
        """Drop the connection, so the runtime sees the client go and stops generating."""

    def release(self) -> None:
        """Give a fully read connection back for reuse."""


class Runtime(Protocol):
    config: BackendConfig

    async def open(self, endpoint: Endpoint, payload: dict, request_id: str,
                   deadline: float | None = None, *, target: str | None = None,
                   extra_headers: Mapping[str, str] | None = None) -> RuntimeResponse:
        """Send a request; return once the answer's headers are in, or raise a
        `gateway.errors` error (never an aiohttp or asyncio one). `payload` is what the
        row's body kind holds (a dict, a multipart Upload, or None); `target` the upstream
        path and query when it is not the row's own (path parameters, SAME_PATH rows);
        `extra_headers` the client's headers an API passes through."""
        ...

    async def probe(self, request_id: str, timeout_s: float) -> bool:
        """One active health check: True when the runtime says it is healthy."""
        ...

    async def list_models(self, request_id: str, timeout_s: float) -> tuple[str, ...] | None:
        """The model ids the runtime serves now, or None when it could not tell."""
        ...

    async def scrape(self, path: str, request_id: str, timeout_s: float) -> tuple[int, bytes]:
        """GET `path` (relative to the server root, like the health path): the status and
        body, for the engine scraper. Raises a `gateway.errors` error on transport
        failures and BodyTooLarge past the cap; never reads an unbounded body."""
        ...


def make_runtime(config: BackendConfig, transport) -> Runtime:
    """The transport for one backend: in process for `echo`, HTTP for every other kind."""
    from ..config.kinds import KINDS
    if KINDS[config.kind].in_process:
        from .echo import EchoRuntime
        return EchoRuntime(config)
    from .http import HttpRuntime
    return HttpRuntime(config, transport)
