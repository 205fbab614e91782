"""Key limits beyond one process: shared by a server's workers, and by replicas on Redis.

The Redis tests start Debian's `redis-server` themselves on a free loopback port,
persisting nothing (`--save ''`), and stop it; without the binary they skip (fail
where GATEWAY_REQUIRE_REDIS=1, as in CI).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from bench.procs import Proc, free_port
from gateway.config import ApiKey
from gateway.limits.shared import SharedLimiter
from gateway.metrics import Metrics
from gateway.limits.buckets import Limiter
from tests.conftest import eventually, unavailable
from tests.server_procs import ROOT, gateway_processes, wait_until
from tests.test_workers import CHAT, echo_config, scrape

KEY = {"Authorization": "Bearer sk-team"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_workers_share_one_bucket_per_key(tmp_path):
    clock = Clock()
    keys = [ApiKey("team", "s", rpm=2, tpm=100)]
    one = SharedLimiter(str(tmp_path / "limits.bin"), keys, clock=clock)
    two = SharedLimiter(str(tmp_path / "limits.bin"), keys, clock=clock)   # another worker
    assert one.admit("team") is None and two.admit("team") is None
    assert one.admit("team").limit == "rpm" and two.admit("team").limit == "rpm"
    two.charge("team", {"total_tokens": 150})          # an answer's usage, on the other
    clock.now += 30                                      # one request back, tpm still < 0
    assert one.admit("team").limit == "tpm"
    assert one.headers("team")["x-ratelimit-remaining-tokens"] == "0"
    clock.now += 30
    assert one.admit("team") is None
    assert two.headers("team")["x-ratelimit-remaining-requests"] == "1"
    # A reload raising the limit in one worker keeps what was used, for both.
    two.apply([ApiKey("team", "s", rpm=4, tpm=100)])
    assert two.headers("team")["x-ratelimit-remaining-requests"] == "3"
    assert one.admit("nobody") is None


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (apt-get install redis-server)",
                    "GATEWAY_REQUIRE_REDIS")
    server = RedisServer(binary, free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


class RedisServer(Proc):
    def __init__(self, binary: str, port: int, tmp) -> None:
        self.port = port
        super().__init__("redis-server", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp)], tmp / "redis-server.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        assert wait_until(self.answers, 10), f"redis-server did not start\n{self.tail()}"
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


gateway = gateway_processes


def keyed(redis_url: str, rpm: int) -> str:
    return echo_config(f"auth:\n  keys:\n    - {{name: team, key: sk-team, rpm: {rpm}}}\n"
                       f"state: {{redis: '{redis_url}'}}\n")


async def test_two_gateways_on_one_redis_hold_one_keys_rpm(redis_server, gateway):
    rpm = 120
    a = gateway(keyed(redis_server.url, rpm))
    b = gateway(keyed(redis_server.url, rpm))
    statuses: list[int] = []

    async def caller(base: str, session: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until and len(statuses) < 20_000:
            async with session.post(base + "/v1/chat/completions", json=CHAT,
                                    headers=KEY) as resp:
                await resp.read()
                statuses.append(resp.status)
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(caller(g.base, session, began + 4) for g in (a, b)
                               for _ in range(4)))
    elapsed = time.monotonic() - began
    expected = rpm + elapsed * rpm / 60   # a full bucket, then its refill
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)
    for g in (a, b):   # both took part, and both see Redis
        samples = await scrape(g.base)
        assert samples[("gateway_state_backend_up", ())] == 1
        assert samples[("gateway_key_requests_total", (("key", "team"), ("model", "m"), ("status", "200")))] > 0


async def test_redis_killed_mid_test_fails_no_request_and_comes_back(redis_server, gateway):
    served = gateway(keyed(redis_server.url, 1_000_000))
    statuses: list[int] = []

    async def load(until: float) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < until and len(statuses) < 20_000:
                async with session.post(served.base + "/v1/chat/completions", json=CHAT,
                                        headers=KEY) as resp:
                    await resp.read()
                    statuses.append(resp.status)
    began = time.monotonic()
    traffic = asyncio.gather(*(load(began + 5) for _ in range(4)))

    async def state_up_is(wanted: float) -> bool:
        return (await scrape(served.base))[("gateway_state_backend_up", ())] == wanted
    await asyncio.sleep(1)   # a fixed wait: traffic on a working Redis first
    redis_server.kill()
    assert await eventually(lambda: state_up_is(0), timeout=5, interval=0.1), "Redis not down"
    during = len(statuses)   # requests go on while Redis is down
    assert await eventually(lambda: len(statuses) >= during + 20, timeout=5), statuses[during:]
    await asyncio.to_thread(redis_server.start)   # same port: the gateway finds it again
    assert await eventually(lambda: state_up_is(1), timeout=10, interval=0.1), "Redis not back"
    await traffic
    assert len(statuses) > 100 and statuses == [200] * len(statuses)
    log = served.stderr()
    assert log.count("unreachable (") == 1 and log.count("is back: rate limits") == 1


async def test_redis_limits_refuse_charge_and_tell_the_headers(redis_server):
    from gateway.limits.on_redis import RedisLimiter
    limiter = RedisLimiter(redis_server.url, Limiter(), Metrics())
    limiter.apply([ApiKey("k", "s", rpm=3, tpm=100)])
    await limiter.start()
    try:
        assert [await limiter.acquire("k") for _ in range(3)] == [None] * 3
        refusal = await limiter.acquire("k")
        assert refusal.limit == "rpm" and 19 < refusal.retry_after <= 20
        assert limiter.headers("k")["x-ratelimit-remaining-requests"] == "0"
        limiter.charge("k", {"total_tokens": 250})
        # The charge is sent after the answer, not awaited by it.
        assert await eventually(
            lambda: limiter.headers("k")["x-ratelimit-remaining-tokens"] == "0", timeout=5), \
            limiter.headers("k")
        assert await limiter.acquire("unlimited") is None
    finally:
        await limiter.close()


def test_a_bad_state_url_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("backends: {a: {kind: echo, models: [m]}}\n"
                    "state: {redis: 'http://:secret@127.0.0.1:6379'}\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 1
    assert run.stdout.startswith("state.redis: must be a redis://") or \
        run.stderr.startswith("state.redis: must be a redis://"), run.stdout + run.stderr
    assert "secret" not in run.stdout + run.stderr


def test_without_state_nothing_imports_redis():
    code = ("import asyncio, sys\n"
            "from gateway.app import create_app\n"
            "from gateway.config import load_config_text\n"
            "async def main():\n"
            "    app = create_app(load_config_text('backends: {a: {kind: echo}}'))\n"
            "    print('redis' in sys.modules, 'gunicorn' in sys.modules)\n"
            "asyncio.run(main())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.stdout.split() == ["False", "False"], run.stderr
