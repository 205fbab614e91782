"""Rate limits shared by every replica: the buckets in Redis, changed by one Lua script.

With `state: {redis: URL}`, a key's rpm/tpm hold across every gateway that uses the
same Redis. Each admit and each charge is one script run: Redis runs a script
alone, so reading the bucket, refilling it and taking from it cannot interleave
with another gateway's (no read-modify-write race). The script reads Redis's own
clock (`TIME`), so gateways whose clocks differ still refill alike. A key's hash
expires once its buckets would be full again: an idle key costs nothing.

When Redis does not answer (connection refused or reset, a timeout), the gateway
serves on its own buckets (the local or worker-shared limiter, which mirrors every
request admitted while Redis was up): one warning per outage,
`gateway_state_backend_up` 0, and a probe each PROBE_S until Redis is back.
Only this module imports `redis`, and only when `state.redis` is set.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..config import ApiKey, url_without_password
from ..log import server_logger
from ..metrics import Metrics
from .buckets import Limiter, Refusal, usage_tokens

TIMEOUT_S = 0.5     # a request waits at most this long for Redis before going local
PROBE_S = 1.0       # how often an unreachable Redis is tried again
PREFIX = "gateway:ratelimit:"
FAILURES = (RedisError, OSError, asyncio.TimeoutError)

# KEYS[1]: the key's hash. ARGV: rpm, tpm (0: no such limit), requests to take (1 to
# admit, 0 to charge), tokens to charge. Returns {0 | 1 (rpm) | 2 (tpm refuses),
# retry-after seconds, rpm level, tpm level}; numbers as strings (Redis truncates
# Lua numbers to integers).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local caps = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local take, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'rc', 'rl', 'ru', 'tc', 'tl', 'tu')
local levels = {}
for i = 1, 2 do
  local cap, level = caps[i], caps[i]
  local c, l, u = tonumber(f[3 * i - 2]), tonumber(f[3 * i - 1]), tonumber(f[3 * i])
  if cap > 0 and c and c > 0 then
    level = math.min(c, l + math.max(0, now - u) * c / 60)
    if c ~= cap then level = math.min(cap, cap - (c - level)) end
  end
  levels[i] = level
end
local code, retry = 0, 0
if take > 0 and caps[1] > 0 and levels[1] < 1 then
  code, retry = 1, (1 - levels[1]) / (caps[1] / 60)
elseif take > 0 and caps[2] > 0 and levels[2] <= 0 then
  code, retry = 2, -levels[2] / (caps[2] / 60) + 60 / caps[2] / 1000
else
  if caps[1] > 0 then levels[1] = levels[1] - take end
  if caps[2] > 0 then levels[2] = levels[2] - tokens end
end
local ttl = 1
for i = 1, 2 do
  if caps[i] > 0 then ttl = math.max(ttl, (caps[i] - levels[i]) / (caps[i] / 60) + 1) end
end
redis.call('HSET', KEYS[1], 'rc', caps[1], 'rl', tostring(levels[1]), 'ru', tostring(now),
           'tc', caps[2], 'tl', tostring(levels[2]), 'tu', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
return {code, tostring(retry), tostring(levels[1]), tostring(levels[2])}
"""


class RedisLimiter:
    """The Limiter interface (acquire, charge, headers, apply) on Redis."""

    def __init__(self, url: str, local: Limiter, metrics: Metrics) -> None:
        self._url = url
        self.local = local                 # while Redis is down; mirrors it while up
        self._view = Limiter()             # Redis's last answer per key, for the headers
        self._metrics = metrics
        self._caps: dict[str, tuple[int, int]] = {}
        self._client: Redis | None = None
        self._script: Any = None
        self.up = False
        self._probe: asyncio.Task | None = None
        self._charges: set[asyncio.Task] = set()

    def apply(self, keys: Iterable[ApiKey]) -> None:
        keys = tuple(keys)
        self.local.apply(keys)
        self._view.apply(keys)
        self._caps = {k.name: (k.rpm or 0, k.tpm or 0) for k in keys if k.rpm or k.tpm}

    async def start(self) -> None:
        self._client = Redis.from_url(self._url, socket_timeout=TIMEOUT_S,
                                      socket_connect_timeout=TIMEOUT_S,
                                      retry=Retry(NoBackoff(), 0))
        self._script = self._client.register_script(SCRIPT)
        try:
            await self._client.ping()
        except FAILURES as exc:
            self._outage(exc)
            return
        self._set_up(True)
        server_logger.info("rate limits shared through %s", url_without_password(self._url))

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._charges:
            await asyncio.wait(self._charges, timeout=TIMEOUT_S)
        if self._client is not None:
            await self._client.aclose()
        await self.local.close()

    async def acquire(self, name: str) -> Refusal | None:
        caps = self._caps.get(name)
        if caps is None:
            return None
        if not self.up:
            return self.local.admit(name)
        try:
            reply = await self._script(keys=[PREFIX + name], args=[*caps, 1, 0])
        except FAILURES as exc:
            self._outage(exc)
            return self.local.admit(name)
        code, retry, rpm, tpm = (float(v) for v in reply)
        self._remember(name, rpm, tpm)
        if code:
            return Refusal("rpm" if code == 1 else "tpm", retry)
        self.local.admit(name)   # mirrored: an outage starts from this gateway's own use
        return None

    def admit(self, name: str) -> Refusal | None:
        """Synchronous callers get the local answer (Redis needs an await)."""
        return self.local.admit(name)

    def charge(self, name: str | None, usage: dict[str, Any] | None) -> None:
        caps = self._caps.get(name) if name else None
        if caps is None or not caps[1]:
            return
        self.local.charge(name, usage)
        tokens = usage_tokens(usage)
        if tokens and self.up:
            task = asyncio.get_running_loop().create_task(self._charge(name, caps, tokens))
            self._charges.add(task)
            task.add_done_callback(self._charges.discard)

    def headers(self, name: str | None) -> dict[str, str]:
        return (self._view if self.up else self.local).headers(name)

    async def _charge(self, name: str, caps: tuple[int, int], tokens: int) -> None:
        try:
            reply = await self._script(keys=[PREFIX + name], args=[*caps, 0, tokens])
        except FAILURES as exc:
            self._outage(exc)
            return
        self._remember(name, float(reply[2]), float(reply[3]))

    def _remember(self, name: str, rpm: float, tpm: float) -> None:
        self._view.set_levels(name, rpm, tpm)

    def _outage(self, exc: BaseException) -> None:
        if not self.up and self._probe is not None:
            return   # already known; logged once
        server_logger.warning("state backend %s unreachable (%s): rate limits are this "
                              "gateway's own until it is back", url_without_password(self._url),
                              exc.__class__.__name__)
        self._set_up(False)
        self._probe = asyncio.get_running_loop().create_task(self._wait_until_back())

    async def _wait_until_back(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                # The pool's other connections broke with the old server: drop them all,
                # or the first requests after this would each find one and fail again.
                await self._client.connection_pool.disconnect()
                await self._client.ping()
            except FAILURES:
                continue
            server_logger.info("state backend %s is back: rate limits are shared again",
                               url_without_password(self._url))
            self._probe = None
            self._set_up(True)
            return

    def _set_up(self, up: bool) -> None:
        self.up = up
        self._metrics.state_backend_up.set(1 if up else 0)
