"""Fake model servers that report their own load in their kind's real format.

Each `FakeEngine` is a small aiohttp app: chat completions (streamed or not, after
`delay_s`), `/v1/models`, the kind's health path, and the kind's load endpoints rendered
by `tests.engine_samples` from scripted values a test changes while it runs:

    vllm, sglang, tgi   /metrics
    llamacpp            /metrics (`metrics_status=501`: started without --metrics), /slots
    ollama              /api/ps
    localai             /metrics with API-call histograms only: the gateway must not ask

`metrics` switches how the load endpoints answer: "ok", "hang" (never answers until the
test ends), "500", "404" (gone), "garbage" (not the format at all).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests import engine_samples as samples

HEALTH = {"vllm": "/health", "sglang": "/health", "llamacpp": "/health", "tgi": "/health",
          "ollama": "/api/tags", "localai": "/readyz"}
LOAD_PATHS = {"vllm": ("/metrics",), "sglang": ("/metrics",), "tgi": ("/metrics",),
              "llamacpp": ("/metrics", "/slots"), "ollama": ("/api/ps",),
              "localai": ("/metrics",)}
LOCALAI_METRICS = """# HELP localai_api_call How many times an API call was made
# TYPE localai_api_call histogram
localai_api_call_bucket{method="POST",path="/v1/chat/completions",le="+Inf"} 3
localai_api_call_sum{method="POST",path="/v1/chat/completions"} 1.25
localai_api_call_count{method="POST",path="/v1/chat/completions"} 3
"""


@dataclass(eq=False)
class FakeEngine:
    kind: str = "vllm"
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    running: float = 0
    waiting: float = 0
    kv: float = 0.1                    # vLLM's and SGLang's KV usage (others have none)
    loaded: tuple[str, ...] = ()       # Ollama's /api/ps
    metrics: str = "ok"                # ok | hang | 500 | 404 | garbage
    metrics_status: int = 200          # llama.cpp's /metrics without --metrics: 501
    delay_s: float = 0.0               # before the first token (and a whole answer)
    words: int = 3
    answered: int = 0
    scrapes: collections.Counter = field(default_factory=collections.Counter)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        if self.kind != "ollama":
            app.router.add_get(HEALTH[self.kind], self._health)
        app.router.add_get("/api/tags", self._health)
        for path in LOAD_PATHS[self.kind]:
            app.router.add_get(path, self._load)
        return app

    def release(self) -> None:
        """End every hanging answer (the test is over)."""
        self._release.set()

    def render(self, path: str) -> str:
        if self.kind == "vllm":
            return samples.vllm_metrics(self.running, self.waiting, self.kv, model=self.model)
        if self.kind == "sglang":
            return samples.sglang_metrics(self.running, self.waiting, self.kv, model=self.model)
        if self.kind == "tgi":
            return samples.tgi_metrics(queue=self.waiting, batch=self.running)
        if self.kind == "ollama":
            return samples.ollama_ps(*self.loaded)
        if self.kind == "localai":
            return LOCALAI_METRICS
        if path == "/slots":
            busy = int(self.running)
            return samples.llamacpp_slots(busy=busy, total=max(busy, 4))
        return samples.llamacpp_metrics(processing=self.running, deferred=self.waiting)

    async def _load(self, request: web.Request) -> web.Response:
        self.scrapes[request.path] += 1
        if self.metrics == "hang":
            try:
                async with asyncio.timeout(60):
                    await self._release.wait()
            except TimeoutError:
                pass
            return web.Response(status=503)
        if self.metrics in ("500", "404"):
            return web.Response(status=int(self.metrics), text="no")
        if self.metrics == "garbage":
            return web.Response(text="<html>{{{ not metrics", content_type="text/html")
        if request.path == "/metrics" and self.metrics_status != 200:
            return web.json_response({"error": {"code": self.metrics_status, "message":
                                                "This server does not support metrics "
                                                "endpoint. Start it with `--metrics`",
                                                "type": "not_supported_error"}},
                                     status=self.metrics_status)
        text = self.render(request.path)
        kind = "application/json" if text.startswith(("{", "[")) else "text/plain"
        return web.Response(text=text, content_type=kind)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "models": [{"name": self.model}]})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "owned_by": "fake"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.answered += 1
        base = {"id": "cmpl-fake", "created": int(time.time()), "model": body["model"]}
        text = " ".join(f"w{i}" for i in range(self.words))
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": self.words,
                          "total_tokens": 5 + self.words}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(text.split()):
            delta: dict[str, Any] = {"content": word + " "}
            await resp.write(_event({**base, "object": "chat.completion.chunk",
                                     "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": None}]}))
        await resp.write(_event({**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
