from __future__ import annotations

import os
import signal
import time
from types import MappingProxyType
from typing import Any, Awaitable, Callable, NoReturn

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import ApiKey, BackendConfig, Config, RouteConfig, backend
from gateway.serve import prepare_process
from tests.fakes import FakeRuntime


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


@pytest.fixture
def start_runtime(aiohttp_server) -> Callable[..., Awaitable[tuple[FakeRuntime, TestServer]]]:
    """Start a fake runtime on a free loopback port: (switches, server)."""
    async def start(**kwargs: Any) -> tuple[FakeRuntime, TestServer]:
        fake = FakeRuntime(**kwargs)
        server = await aiohttp_server(fake.app())
        return fake, server
    return start


def runtime_backend(name: str, server: TestServer, kind: str = "vllm", **kw: Any
                    ) -> BackendConfig:
    return backend(name, kind, str(server.make_url("/v1")), **kw)


def make_config(*backends: BackendConfig, routes: dict[str, RouteConfig] | None = None,
                **sections: Any) -> Config:
    return Config(backends=MappingProxyType({b.name: b for b in backends}),
                  routes=MappingProxyType(routes or {}), **sections)


@pytest.fixture
def gateway_client(aiohttp_client) -> Callable[[Config], Awaitable[TestClient]]:
    """A test client for a gateway app built from a Config object."""
    async def start(config: Config) -> TestClient:
        app: web.Application = create_app(config)
        return await aiohttp_client(app)
    return start


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
