from __future__ import annotations

import os
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
