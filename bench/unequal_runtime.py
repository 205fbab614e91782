"""A fake model server with a fixed batch size that reports its own load as vLLM does.

For `bench.unequal`: a runtime serves at most `--slots` requests at once (vLLM's
`max_num_seqs`, llama-server's `-np`); the rest wait in its queue, first come first
served. Its `/metrics` says what it is really doing at that moment, in vLLM's format
(`vllm/v1/metrics/loggers.py`): `vllm:num_requests_running` (in the batch),
`vllm:num_requests_waiting` (queued), `vllm:kv_cache_usage_perc`. The batch is taken to be
bounded by its size, not by memory, so KV usage is half the batch's occupancy: it never
crosses the gateway's `engine.max_kv_usage` on its own.

An admitted request streams (or returns whole) `max_tokens` tokens: the first after
`--ttft-ms`, then one every `--token-ms`, whatever the batch holds (a GPU's decode step
costs about the same for 1 or 8 sequences). A client that leaves frees its place.

    python -m bench.unequal_runtime --port 9001 --slots 4 --ttft-ms 30 --token-ms 6

aiohttp, not raw asyncio: at the few dozen requests per second this benchmark runs,
the runtime's CPU is no factor, and the waiting room is clearer as a semaphore.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

MODEL = "fake-model"
MAX_TOKENS = 1024


class Batch:
    """What the runtime is doing now: requests in the batch and requests waiting for it."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.room = asyncio.Semaphore(slots)
        self.running = 0
        self.waiting = 0
        self.served = 0

    def metrics(self) -> bytes:
        labels = f'{{engine="0",model_name="{MODEL}"}}'
        kv = 0.5 * self.running / self.slots
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} {float(self.waiting)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{labels} {kv}\n"
            "# HELP vllm:request_success_total Count of successfully processed requests.\n"
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{engine="0",finished_reason="length",'
            f'model_name="{MODEL}"}} {float(self.served)}\n'
        ).encode()


def make_app(slots: int, ttft_s: float, token_s: float) -> web.Application:
    batch = Batch(slots)
    app = web.Application()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        tokens = max(1, min(int(body.get("max_tokens") or 16), MAX_TOKENS))
        stream = bool(body.get("stream"))
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        batch.waiting += 1
        admitted = False
        try:
            await batch.room.acquire()
            admitted = True
            batch.waiting -= 1
            batch.running += 1
            try:
                return await _answer(request, tokens, stream, usage_wanted, ttft_s, token_s)
            finally:
                batch.running -= 1
                batch.served += 1
                batch.room.release()
        finally:
            if not admitted:
                batch.waiting -= 1

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=batch.metrics(), content_type="text/plain",
                            charset="utf-8")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL, "object": "model", "owned_by": "bench"}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


async def _answer(request: web.Request, tokens: int, stream: bool, usage_wanted: bool,
                  ttft_s: float, token_s: float) -> web.StreamResponse:
    """Generate: the first token after ttft_s, then one every token_s."""
    created = int(time.time())
    usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
    await asyncio.sleep(ttft_s)
    if not stream:
        await asyncio.sleep(token_s * (tokens - 1))
        return web.json_response({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": created,
            "model": MODEL, "usage": usage, "choices": [{
                "index": 0, "finish_reason": "length",
                "message": {"role": "assistant", "content": "tok " * tokens}}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
            "model": MODEL}
    for i in range(tokens):
        if i:
            await asyncio.sleep(token_s)
        chunk = {**head, "choices": [{"index": 0, "delta": {"content": "tok "},
                                      "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    done = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    await resp.write(b"data: " + orjson.dumps(done) + b"\n\n")
    if usage_wanted:
        await resp.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage})
                         + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=4, help="requests served at once")
    parser.add_argument("--ttft-ms", type=float, default=30)
    parser.add_argument("--token-ms", type=float, default=6)
    args = parser.parse_args(argv)
    web.run_app(make_app(args.slots, args.ttft_ms / 1000, args.token_ms / 1000),
                host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
