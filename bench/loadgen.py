"""Lean asyncio load: open-loop paced requests and many concurrent SSE streams.

Saturation is wrk's job (C, one thread); this is for what wrk cannot do:
latency at a fixed arrival rate, and streams counted event by event. Every
loop is bounded by a count and a deadline; only 127.0.0.1 is ever addressed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _session(timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s), auto_decompress=False)


@dataclass
class PacedResult:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    late: int = 0                 # requests sent >5 ms after their slot (the client lagged)
    latencies: list[float] = field(default_factory=list)


async def paced(url: str, body: dict, rate: float, duration_s: float,
                timeout_s: float = 10) -> PacedResult:
    """Open loop: request i leaves at t0 + i/rate whatever the answers do.

    No request waits for another's answer, so a slow proxy cannot hide its queueing
    (no coordinated omission). Latency runs from the moment the request is started:
    uvloop's timers tick in milliseconds, and their jitter is the client's, not the
    proxy's; requests started >5 ms after their slot are counted as `late`.
    """
    result = PacedResult()
    payload = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    count = int(rate * duration_s)
    clock = time.perf_counter       # uvloop's loop.time() only ticks in milliseconds

    async def one(slot: float) -> None:
        start = clock()
        if start - slot > 0.005:
            result.late += 1
        try:
            async with session.post(url, data=payload, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    result.ok += 1
                    result.latencies.append(clock() - start)
                else:
                    result.errors += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            result.errors += 1

    async with _session(timeout_s) as session:
        tasks = []
        t0 = clock() + 0.05
        for i in range(count):
            slot = t0 + i / rate
            delay = slot - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(slot)))
            result.sent += 1
        await asyncio.wait_for(asyncio.gather(*tasks), timeout_s + 5)
    return result


@dataclass
class StreamResult:
    streams: int = 0              # streams started
    completed: int = 0            # ended with data: [DONE]
    errors: int = 0               # non-200, transport errors, timeouts
    events: int = 0               # SSE events received
    peak_open: int = 0            # streams open at the same time (headers in, not finished)
    ttfts: list[float] = field(default_factory=list)
    wall_s: float = 0.0


async def streams(url: str, body: dict, total: int, concurrency: int, ramp_s: float,
                  deadline_s: float, on_tick=None, done: bytes | None = None) -> StreamResult:
    """`total` streams, at most `concurrency` at once, the first wave spread over ramp_s.
    A stream is complete when it ends with `data: [DONE]`, or holds `done` when given
    (a Responses stream's `event: response.completed`)."""
    result = StreamResult()
    payload = orjson.dumps(body)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    loop = asyncio.get_running_loop()
    open_now = 0
    started = loop.time()
    end_by = started + deadline_s
    next_index = 0

    async def one() -> None:
        nonlocal open_now
        result.streams += 1
        sent = time.perf_counter()
        first = True
        tail = b""
        last = b""
        saw_done = False
        try:
            async with session.post(url, data=payload, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    result.errors += 1
                    return
                open_now += 1
                result.peak_open = max(result.peak_open, open_now)
                try:
                    async for data in resp.content.iter_any():
                        data = tail + data
                        n = data.count(b"\n\n")
                        if n:
                            result.events += n
                            if first:
                                result.ttfts.append(time.perf_counter() - sent)
                                first = False
                        tail = b"\n" if data.endswith(b"\n") and not data.endswith(
                            b"\n\n") else b""
                        last = (last + data)[-64:]
                        if done is not None and not saw_done:
                            saw_done = done in data
                finally:
                    open_now -= 1
            if saw_done if done is not None else b"data: [DONE]" in last:
                result.completed += 1
            else:
                result.errors += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            result.errors += 1

    async def worker(wave_delay: float) -> None:
        nonlocal next_index
        await asyncio.sleep(wave_delay)
        while next_index < total and loop.time() < end_by:
            next_index += 1
            await one()

    async with _session(deadline_s) as session:
        workers = [asyncio.create_task(worker(ramp_s * i / concurrency))
                   for i in range(concurrency)]
        ticker = asyncio.create_task(_tick(on_tick)) if on_tick else None
        try:
            await asyncio.wait_for(asyncio.gather(*workers), deadline_s + 10)
        finally:
            if ticker:
                ticker.cancel()
    result.wall_s = loop.time() - started
    return result


async def _tick(fn, every: float = 0.05) -> None:
    for _ in range(100_000):
        fn()
        await asyncio.sleep(every)
