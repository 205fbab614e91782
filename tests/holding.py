"""A fake runtime that holds each chat answer until the test lets it go: for what waits
(the scheduler's queue, the console's queue view). The general fake runtime
(bench/fake_runtime/) delays by time; this one by the test's word."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


class Holding:
    """A runtime whose chat answers wait until `release()` (or `release_all()`): arrivals
    are recorded in order. It lists `models` and answers its health checks at once."""

    def __init__(self, usage: tuple[int, int] = (4, 6), models: tuple[str, ...] = ()) -> None:
        self.usage = usage
        self.models = models
        self.arrived: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._gates: list[asyncio.Event] = []
        self.open = False   # release_all: from then on nothing is held

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        gate = asyncio.Event()
        self.arrived.append(body)
        self.headers.append(dict(request.headers))
        self._gates.append(gate)
        if not self.open:
            await gate.wait()
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1],
                      "total_tokens": sum(self.usage)}})

    def release(self, n: int = 1) -> None:
        for gate in self._gates:
            if not gate.is_set():
                gate.set()
                n -= 1
                if n == 0:
                    return

    def release_all(self) -> None:
        self.open = True
        for gate in self._gates:
            gate.set()

    def tags(self) -> list[str]:
        return [b["messages"][0]["content"] for b in self.arrived]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def listed(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model"} for model in self.models]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.listed)
        return app
