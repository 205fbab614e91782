"""Fake runtimes: small aiohttp apps that answer like the real ones, with failure switches."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HEALTH_PATHS = {"vllm": "/health", "sglang": "/health", "ollama": "/api/tags",
                "llamacpp": "/health", "tgi": "/health", "localai": "/readyz",
                "lmstudio": "/v1/models", "openai": "/v1/models"}


@dataclass
class FakeRuntime:
    """One fake model server. Flip the switches from a test to make it misbehave."""

    kind: str = "vllm"
    models: tuple[str, ...] = ("meta-llama/Llama-3.1-8B-Instruct",)
    words: int = 5                    # tokens per answer
    chunk_delay: float = 0.0          # seconds between streamed chunks
    status: int = 200                 # answer every request with this status...
    fail_times: int | None = None     # ...for this many requests only (None = always)
    retry_after: str | None = None
    hang_s: float = 0.0               # wait this long before sending headers
    close_after: int | None = None    # break the stream after this many chunks
    first_event_error: bool = False   # a 200 stream whose first event is an error
    health_status: int = 200
    send_usage: bool = True
    spaced_json: bool = False         # write `"model": "x"` as Python's json.dumps does
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    peers: list[tuple] = field(default_factory=list)   # the gateway's address per request
    health_checks: int = 0
    in_flight: int = 0
    cancelled: int = 0                # streams whose client went away mid-way

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        if self.kind != "tgi":
            app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        path = HEALTH_PATHS[self.kind]
        if path != "/v1/models":
            app.router.add_get(path, self._health)
        return app

    def _dumps(self, obj: Any) -> bytes:
        if self.spaced_json:
            return json.dumps(obj).encode()
        return json.dumps(obj, separators=(",", ":")).encode()

    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        if self.kind == "ollama":
            return web.json_response({"models": [{"name": m} for m in self.models]},
                                     status=self.health_status)
        return web.json_response({"status": "ok"}, status=self.health_status)

    async def _models(self, request: web.Request) -> web.Response:
        if self.kind in ("lmstudio", "openai"):
            self.health_checks += 1
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "fake"} for m in self.models]})

    def _failing(self) -> bool:
        if self.status == 200:
            return False
        if self.fail_times is None:
            return True
        if self.fail_times > 0:
            self.fail_times -= 1
            return True
        return False

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers_seen.append(dict(request.headers))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.Response(body=self._dumps({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}),
            content_type="application/json")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except asyncio.CancelledError:
            self.cancelled += 1     # the gateway dropped the connection: we stop generating
            raise

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers_seen.append(dict(request.headers))
        self.peers.append(request.transport.get_extra_info("peername"))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self._failing():
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response(
                {"error": {"message": f"fake failure {self.status}", "type": "fake",
                           "param": None, "code": self.status}},
                status=self.status, headers=headers)
        if body.get("stream"):
            return await self._stream(request, body)
        return web.Response(body=self._dumps(self._completion(request.path, body)),
                            content_type="application/json")

    def _completion(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(f"w{i}" for i in range(self.words))
        chat = path.endswith("/chat/completions")
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        out = {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
               "created": int(time.time()), "model": body["model"], "choices": [choice]}
        if self.send_usage:
            out["usage"] = {"prompt_tokens": 7, "completion_tokens": self.words,
                            "total_tokens": 7 + self.words}
        return out

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chat = request.path.endswith("/chat/completions")
        base = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat
                else "text_completion", "created": int(time.time()), "model": body["model"]}
        self.in_flight += 1
        try:
            if self.first_event_error:
                await resp.write(b"data: " + self._dumps(
                    {"error": {"message": "model overloaded", "code": 503}}) + b"\n\n")
                return resp
            for i in range(self.words):
                if self.close_after is not None and i >= self.close_after:
                    request.transport.close()   # the runtime dies mid-stream
                    return resp
                choice = ({"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}
                          if chat else {"index": 0, "text": f"w{i} ", "finish_reason": None})
                await resp.write(b"data: " + self._dumps({**base, "choices": [choice]})
                                 + b"\n\n")
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            last = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                    else {"index": 0, "text": "", "finish_reason": "stop"})
            await resp.write(b"data: " + self._dumps({**base, "choices": [last]}) + b"\n\n")
            options = body.get("stream_options") or {}
            if options.get("include_usage") and self.send_usage:
                await resp.write(b"data: " + self._dumps({**base, "choices": [], "usage": {
                    "prompt_tokens": 7, "completion_tokens": self.words,
                    "total_tokens": 7 + self.words}}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        except ConnectionResetError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


# --- Stream faults (issue 19) -------------------------------------------------------------
# Kept apart from FakeRuntime's own switches: a subclass whose streams misbehave in the ways
# a stuck or quirky runtime does. Every switch off = FakeRuntime's own stream.

@dataclass
class FaultyRuntime(FakeRuntime):
    """FakeRuntime plus stream faults, for chat completions streams."""

    silent_after_headers_s: float = 0.0   # send the SSE headers, then nothing for this long
    keepalives: int = 0               # `: keepalive` comments before the first event...
    keepalive_every_s: float = 0.05   # ...this far apart
    split_done: bool = False          # write `data: [DONE]\n` and its blank line apart
    done_unterminated: bool = False   # end with `data: [DONE]\n` and no blank line
    chunk_bytes: int = 0              # pad each token chunk to about this many bytes
    null_usage: bool = False          # `"usage": null` on every chunk, as OpenAI's API does
    sent: bytearray = field(default_factory=bytearray)   # every stream byte written
    writes_done: int = 0              # chunk writes that returned (backpressure shows here)

    def _faulty(self) -> bool:
        return bool(self.silent_after_headers_s or self.keepalives or self.split_done
                    or self.done_unterminated or self.chunk_bytes or self.null_usage)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not self._faulty():
            return await super()._stream(request, body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.in_flight += 1
        try:
            await self._faulty_events(resp, body)
            await resp.write_eof()
            return resp
        except ConnectionResetError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        self.sent += data
        await resp.write(data)
        self.writes_done += 1

    async def _faulty_events(self, resp: web.StreamResponse, body: dict[str, Any]) -> None:
        await resp.write(b"")   # headers out now
        if self.silent_after_headers_s:
            await asyncio.sleep(self.silent_after_headers_s)
        for _ in range(self.keepalives):
            await self._write(resp, b": keepalive\n\n")
            await asyncio.sleep(self.keepalive_every_s)
        if self.first_event_error:
            await self._write(resp, b"data: " + self._dumps(
                {"error": {"message": "model overloaded", "code": 503}}) + b"\n\n")
            return
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "cmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body["model"]}
        if asked and self.null_usage:
            base["usage"] = None
        pad = "x" * max(0, self.chunk_bytes - 200)
        for i in range(self.words):
            choice = {"index": 0, "delta": {"content": f"w{i} {pad}"}, "finish_reason": None}
            await self._write(resp, b"data: " + self._dumps({**base, "choices": [choice]})
                              + b"\n\n")
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await self._write(resp, b"data: " + self._dumps({**base, "choices": [last]}) + b"\n\n")
        if asked and self.send_usage:
            await self._write(resp, b"data: " + self._dumps({**base, "choices": [], "usage": {
                "prompt_tokens": 7, "completion_tokens": self.words,
                "total_tokens": 7 + self.words}}) + b"\n\n")
        if self.done_unterminated:
            await self._write(resp, b"data: [DONE]\n")
        elif self.split_done:
            await self._write(resp, b"data: [DONE]\n")
            await asyncio.sleep(0.05)   # a read of its own on the gateway's side
            await self._write(resp, b"\n")
        else:
            await self._write(resp, b"data: [DONE]\n\n")
