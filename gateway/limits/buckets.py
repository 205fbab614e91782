"""Per-key rate limits: requests and tokens per minute, as token buckets.

Each limit is a bucket holding up to its per-minute amount and refilling
continuously at amount/60 per second. A request takes one from `rpm` on
arrival. Tokens are only known once the answer ended, so `tpm` is charged then
with the runtime's real usage and may go below zero; a request is admitted
only while its `tpm` bucket is above zero.

Buckets belong to one app's `Limiter` and are keyed by the key's name, so a
config reload keeps them for every key whose name stays (`Limiter.apply`).
This Limiter's buckets live in the process; limits/shared.py keeps the same buckets
in a file every worker maps, limits/on_redis.py in Redis for every replica.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..config import ApiKey


class Bucket:
    __slots__ = ("capacity", "level", "updated")

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity = float(capacity)
        self.level = float(capacity)
        self.updated = now

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def resize(self, capacity: float) -> None:
        """A reload changed the limit: keep what was used, within the new capacity."""
        used = self.capacity - self.level
        self.capacity = float(capacity)
        self.level = min(self.capacity, self.capacity - used)

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) / self.rate)


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str            # "rpm" or "tpm": the metric label
    retry_after: float

    @property
    def message(self) -> str:
        what = "requests" if self.limit == "rpm" else "tokens"
        return (f"Rate limit reached for {what} per minute on this API key. "
                f"Try again in {format_duration(self.retry_after)}.")


class KeyBuckets:
    __slots__ = ("rpm", "tpm")

    def __init__(self, key: ApiKey, now: float) -> None:
        self.rpm = Bucket(key.rpm, now) if key.rpm else None
        self.tpm = Bucket(key.tpm, now) if key.tpm else None

    def resize(self, key: ApiKey, now: float) -> None:
        for attr in ("rpm", "tpm"):
            limit, bucket = getattr(key, attr), getattr(self, attr)
            if not limit:
                setattr(self, attr, None)
            elif bucket is None:
                setattr(self, attr, Bucket(limit, now))
            elif bucket.capacity != limit:
                bucket.refill(now)
                bucket.resize(limit)


class Limiter:
    def __init__(self, keys: Iterable[ApiKey] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, KeyBuckets] = {}
        self.apply(keys)

    def apply(self, keys: Iterable[ApiKey]) -> None:
        """Follow a new key list; a key whose name stays keeps its buckets."""
        now = self._clock()
        fresh: dict[str, KeyBuckets] = {}
        for key in keys:
            if not (key.rpm or key.tpm):
                continue
            buckets = self._keys.get(key.name)
            if buckets is None:
                buckets = KeyBuckets(key, now)
            else:
                buckets.resize(key, now)
            fresh[key.name] = buckets
        self._keys = fresh

    async def acquire(self, name: str) -> Refusal | None:
        """What callers await: `admit` here; a round trip to Redis in limits/on_redis.py."""
        return self.admit(name)

    async def start(self) -> None:
        """Called once the app's event loop runs (the Redis client needs one)."""

    async def close(self) -> None:
        """Called when the app stops."""

    def admit(self, name: str) -> Refusal | None:
        """Take one request from `name`'s buckets, or say which limit refuses it."""
        buckets = self._keys.get(name)
        if buckets is None:
            return None
        now = self._clock()
        rpm, tpm = buckets.rpm, buckets.tpm
        if rpm is not None:
            rpm.refill(now)
            if rpm.level < 1:
                return Refusal("rpm", rpm.seconds_until(1))
        if tpm is not None:
            tpm.refill(now)
            if tpm.level <= 0:
                # Just above zero is enough to be admitted again.
                return Refusal("tpm", tpm.seconds_until(0) + 1 / tpm.rate / 1000)
        if rpm is not None:
            rpm.level -= 1
        return None

    def charge(self, name: str | None, usage: dict[str, Any] | None) -> None:
        """Charge an answer's real token usage to `name`'s tpm bucket."""
        buckets = self._keys.get(name) if name else None
        if buckets is None or buckets.tpm is None:
            return
        tokens = usage_tokens(usage)
        if tokens:
            buckets.tpm.refill(self._clock())
            buckets.tpm.level -= tokens

    def set_levels(self, name: str, rpm: float, tpm: float) -> None:
        """Take the levels as another store reports them (limits/on_redis.py: Redis's answer)."""
        buckets = self._keys.get(name)
        if buckets is None:
            return
        now = self._clock()
        for bucket, level in ((buckets.rpm, rpm), (buckets.tpm, tpm)):
            if bucket is not None:
                bucket.level, bucket.updated = level, now

    def headers(self, name: str | None) -> dict[str, str]:
        """The x-ratelimit-* headers OpenAI sends, for the limits `name` has."""
        buckets = self._keys.get(name) if name else None
        if buckets is None:
            return {}
        now = self._clock()
        out: dict[str, str] = {}
        for bucket, what in ((buckets.rpm, "requests"), (buckets.tpm, "tokens")):
            if bucket is None:
                continue
            bucket.refill(now)
            out[f"x-ratelimit-limit-{what}"] = str(int(bucket.capacity))
            # The epsilon keeps 9.999999 (float refill) from reading as 9.
            out[f"x-ratelimit-remaining-{what}"] = str(max(0, math.floor(bucket.level + 1e-9)))
            out[f"x-ratelimit-reset-{what}"] = format_duration(
                bucket.seconds_until(bucket.capacity))
        return out


def usage_tokens(usage: dict[str, Any] | None) -> int:
    if not isinstance(usage, dict):
        return 0
    total = usage.get("total_tokens")
    if _count(total):
        return total
    parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    return sum(p for p in parts if _count(p))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes its reset headers (Go style): 20ms, 1.5s, 6m0s, 1h2m3s."""
    if seconds <= 0:
        return "0s"
    ms = max(1, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
