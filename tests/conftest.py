from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from types import MappingProxyType
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from bench.fake_runtime import FakeRuntime, FakeServer
from gateway.app import create_app
from gateway.config import ApiKey, BackendConfig, Config, RouteConfig, backend
from gateway.server.serve import prepare_process
from tests.fake_engines import FakeEngine


def pytest_configure(config: pytest.Config) -> None:
    prepare_process()   # what `gateway serve` does once at start-up, before any app


# Every process a test starts inherits this variable, also the workers a gateway forks
# and those a killed parent left to init: that is how the teardown finds them all.
SESSION_MARK = "GATEWAY_TEST_SESSION"


def marked_processes(mark: str) -> list[int]:
    needle = f"{SESSION_MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue   # gone, or not ours to read
        if needle in environ and not zombie:
            found.append(int(entry))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the run when any process a test started outlives the tests (then end it)."""
    if not os.path.isdir("/proc"):
        yield
        return
    mark = f"{os.getpid()}-{time.time_ns()}"
    os.environ[SESSION_MARK] = mark
    yield
    deadline = time.monotonic() + 5   # a process being stopped right now gets a moment
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.environ.pop(SESSION_MARK, None)
    if left:
        described = []
        for pid in left:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
                described.append(f"{pid}: {command}")
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        pytest.fail("processes left behind by the tests (now killed):\n" + "\n".join(described))

# What the fake runtime is called by its backends, and the smallest chat request to it.
RUNTIME_ID = "meta-llama/Llama-3.1-8B-Instruct"
CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}

StartRuntime = Callable[..., Awaitable[tuple[FakeRuntime, FakeServer]]]
ServeFake = Callable[[FakeRuntime], Awaitable[FakeServer]]
GatewayClient = Callable[[Config], Awaitable[TestClient]]


@pytest.fixture
async def serve_fake() -> AsyncIterator[ServeFake]:
    """Serve a fake runtime (or a subclass) on a free loopback port; closed after the test."""
    servers: list[FakeServer] = []

    async def serve(fake: FakeRuntime) -> FakeServer:
        servers.append(await fake.start())
        return servers[-1]
    yield serve
    for server in servers:
        await server.close()


@pytest.fixture
def start_engine(serve_fake: ServeFake) -> Callable[..., Awaitable[tuple[FakeEngine, FakeServer]]]:
    """Start a fake runtime that reports its scripted load (tests/fake_engines.py)."""
    async def start(**kw: Any) -> tuple[FakeEngine, FakeServer]:
        fake = FakeEngine(models=(RUNTIME_ID,), **kw)
        return fake, await serve_fake(fake)
    return start


@pytest.fixture
def start_runtime(serve_fake: ServeFake) -> StartRuntime:
    """Start a fake runtime on a free loopback port: (switches, server); closed after the test."""
    async def start(**switches: Any) -> tuple[FakeRuntime, FakeServer]:
        fake = FakeRuntime(**switches)
        return fake, await serve_fake(fake)
    return start


def runtime_backend(name: str, server: FakeServer, kind: str = "vllm", **kw: Any
                    ) -> BackendConfig:
    return backend(name, kind, server.url("/v1"), **kw)


def make_config(*backends: BackendConfig, routes: dict[str, RouteConfig] | None = None,
                **sections: Any) -> Config:
    return Config(backends=MappingProxyType({b.name: b for b in backends}),
                  routes=MappingProxyType(routes or {}), **sections)


@pytest.fixture
def gateway_client(aiohttp_client: AiohttpClient) -> GatewayClient:
    """A test client for a gateway app built from a Config object."""
    async def start(config: Config) -> TestClient:
        app: web.Application = create_app(config)
        return await aiohttp_client(app)
    return start


async def eventually(check: Callable[[], Any], timeout: float = 1.0, interval: float = 0.02
                     ) -> Any:
    """Poll `check` (plain or async) until its value is truthy: that value, or the last one
    once `timeout` s have gone by. The caller asserts on it."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
    return result


def unavailable(reason: str, require_var: str) -> NoReturn:
    """Skip a test whose tool is missing, or fail it where `require_var`=1 (as in CI)."""
    if os.environ.get(require_var) == "1":
        pytest.fail(f"{reason} ({require_var}=1)")
    pytest.skip(reason)


def dashboard_panels(dash: dict) -> list[dict]:
    """Every panel of a Grafana dashboard, rows' nested panels included, in order."""
    out = []
    for panel in dash.get("panels", []):
        out.append(panel)
        out.extend(dashboard_panels(panel))
    return out


async def samples(client: TestClient) -> dict[tuple, float]:
    """The gateway's /metrics samples by (name, sorted label pairs)."""
    text = await (await client.get("/metrics")).text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(all_samples: dict[tuple, float], name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when it is not there."""
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


def bearer(key: ApiKey | str) -> dict[str, str]:
    """The Authorization header for a client key (or a raw secret)."""
    return {"Authorization": f"Bearer {key.key if isinstance(key, ApiKey) else key}"}
