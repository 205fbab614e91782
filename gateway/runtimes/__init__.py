"""The runtimes behind the gateway, behind one interface.

    Runtime      one backend's transport: open() a request, probe() its health,
                 list_models() for discovery
    ├── HttpRuntime   a model server over HTTP (http.py); errors translated in failures.py
    └── EchoRuntime   the built-in `echo` runtime, answering in process (echo.py)

`kinds.py` holds what each kind of runtime does by default (health path, capabilities).
This module imports nothing heavy: `gateway check` reads `kinds` without aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Mapping, Protocol

if TYPE_CHECKING:
    from ..config import BackendConfig
    from ..endpoints import Endpoint


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
                   deadline: float | None = None,
                   trace_headers: Mapping[str, str] | None = None) -> RuntimeResponse:
        """Send a request; return once the answer's headers are in, or raise a
        `gateway.errors` error (never an aiohttp or asyncio one). `trace_headers`
        (W3C traceparent) go upstream with it while tracing is on."""
        ...

    async def probe(self, request_id: str, timeout_s: float) -> bool:
        """One active health check: True when the runtime says it is healthy."""
        ...

    async def list_models(self, request_id: str, timeout_s: float) -> tuple[str, ...] | None:
        """The model ids the runtime serves now, or None when it could not tell."""
        ...


def make_runtime(config: BackendConfig, transport) -> Runtime:
    """The transport for one backend: in process for `echo`, HTTP for every other kind."""
    from .kinds import KINDS
    if KINDS[config.kind].in_process:
        from .echo import EchoRuntime
        return EchoRuntime(config)
    from .http import HttpRuntime
    return HttpRuntime(config, transport)
