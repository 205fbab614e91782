"""The unequal-speed benchmark's fake runtime reports its own live state in vLLM's format.

bench.unequal runs the one fake runtime with `slots` (a fixed batch); it compares
engine-aware routing with gateway-only routing; that comparison means something only if the fake's /metrics is what the gateway parses, and says what the
fake is really doing: requests in its fixed batch, and the rest waiting.
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.engine.signals import parse
from tests.conftest import StartRuntime, eventually


async def test_the_fake_reports_its_batch_and_its_queue(start_runtime: StartRuntime):
    _, server = await start_runtime(slots=2, words=10, chunk_delay=0.05)
    client = aiohttp.ClientSession(server.url())

    async def reading():
        resp = await client.get("/metrics")
        return parse("vllm", "/metrics", resp.status, await resp.read())

    idle = await reading()
    assert (idle.running, idle.waiting, idle.kv_usage) == (0, 0, 0)

    async def stream() -> bytes:
        resp = await client.post("/v1/chat/completions",
                                 json={"stream": True, "max_tokens": 10})
        return await resp.read()

    streams = [asyncio.create_task(stream()) for _ in range(5)]

    async def all_arrived():
        load = await reading()
        return load if load.running + load.waiting == 5 else None
    load = await eventually(all_arrived, timeout=5, interval=0.01)
    assert load is not None, f"not all 5 streams arrived: {await reading()}"
    assert (load.running, load.waiting) == (2, 3)
    assert load.kv_usage == 0.5              # a full batch is half the KV cache

    try:
        bodies = await asyncio.wait_for(asyncio.gather(*streams), 10)
        assert all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
        done = await reading()
        assert (done.running, done.waiting) == (0, 0)
        # vLLM's e2e latency and queue time histograms: 5 ended, 3 of them after a wait
        # for a place in the batch of 2, and each took 10 tokens of 50 ms in the batch.
        assert done.finished == 5
        assert done.queued_s > 0.3
        in_batch = (done.latency_s - done.queued_s) / done.finished
        assert 0.45 <= in_batch < 1.5
    finally:
        await client.close()
