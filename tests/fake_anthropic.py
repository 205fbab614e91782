"""A fake runtime for the Anthropic Messages tests: chat completions with reasoning and tool
calls (as vLLM streams them), and optionally /v1/messages itself (as vLLM and llama-server
serve it), /v1/messages/count_tokens and /tokenize.

One scripted `Answer` is what the model "says"; each API writes it in its own format, so a
test can check the same answer arrives the same way through either path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

INPUT_TOKENS = 11


@dataclass
class Call:
    id: str
    name: str
    arguments: str          # JSON text, as a model writes it


@dataclass
class Answer:
    text: str = "Hello from the runtime"
    reasoning: str | None = None
    calls: list[Call] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def output_tokens(self) -> int:
        words = len(self.text.split()) + len((self.reasoning or "").split())
        return words + sum(len(c.arguments) // 4 + 1 for c in self.calls)


@dataclass
class FakeMessagesRuntime:
    """Switches: `native` serves /v1/messages; `status` fails every request (or the first
    `fail_times`) with that status; `break_after` cuts a stream after that many events."""

    kind: str = "vllm"
    native: bool = False
    answer: Answer = field(default_factory=Answer)
    status: int = 200
    fail_times: int | None = None
    error_body: dict[str, Any] | None = None
    break_after: int | None = None
    first_event_error: bool = False   # a 200 stream whose first event is `event: error`
    tokenizer: str = "vllm"         # the /tokenize format: "vllm" or "llamacpp"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        if self.native:
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/messages/count_tokens", self._count)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/health", self._ok)
        app.router.add_get("/v1/models", self._ok)
        return app

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "data": []})

    async def _take(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append((request.path, body))
        self.headers_seen.append({k.lower(): v for k, v in request.headers.items()})
        return body

    def _failure(self, anthropic: bool) -> web.Response | None:
        if self.status == 200:
            return None
        if self.fail_times is not None:
            if self.fail_times <= 0:
                return None
            self.fail_times -= 1
        body = self.error_body or (
            {"type": "error", "error": {"type": "invalid_request_error",
                                        "message": f"fake failure {self.status}"}}
            if anthropic else
            {"error": {"message": f"fake failure {self.status}", "type": "BadRequestError",
                       "param": None, "code": self.status}, "object": "error"})
        return web.json_response(body, status=self.status)

    # -- chat completions ----------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request)
        failed = self._failure(anthropic=False)
        if failed is not None:
            return failed
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage")
            return await self._sse(request, chat_chunks(self.answer, body["model"], usage))
        return web.json_response(chat_completion(self.answer, body["model"]))

    # -- Anthropic's own API -------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request)
        failed = self._failure(anthropic=True)
        if failed is not None:
            return failed
        if body.get("stream") and self.first_event_error:
            return await self._sse(request, [_event("error", {"type": "error", "error": {
                "type": "overloaded_error", "message": "Overloaded"}})])
        if body.get("stream"):
            return await self._sse(request, message_events(self.answer, body["model"]))
        return web.json_response(message(self.answer, body["model"]))

    async def _count(self, request: web.Request) -> web.Response:
        body = await self._take(request)
        return web.json_response({"input_tokens": INPUT_TOKENS + len(body["messages"])})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._take(request)
        if self.tokenizer == "llamacpp":
            return web.json_response({"tokens": list(range(len(body["content"].split())))})
        count = sum(len(str(m.get("content")).split()) for m in body["messages"])
        return web.json_response({"count": count, "max_model_len": 4096,
                                  "tokens": list(range(count))})

    async def _sse(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, event in enumerate(events):
            if self.break_after is not None and i >= self.break_after:
                request.transport.close()   # the runtime dies mid-stream
                return resp
            await resp.write(event)
        await resp.write_eof()
        return resp


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def chat_completion(answer: Answer, model: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    if answer.reasoning:
        msg["reasoning_content"] = answer.reasoning
    if answer.calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for c in answer.calls]
    return {"id": "chatcmpl-fake1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": answer.output_tokens,
                      "total_tokens": INPUT_TOKENS + answer.output_tokens}}


def chat_chunks(answer: Answer, model: str, usage: bool) -> list[bytes]:
    """vLLM's chunks: a role chunk, reasoning and text word by word, each tool call opened
    with its id and name and empty arguments, then its arguments in fragments."""
    base = {"id": "chatcmpl-fake1", "object": "chat.completion.chunk", "created": 1,
            "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + _dumps({**base, "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    for i, word in enumerate((answer.reasoning or "").split()):
        out.append(chunk({"reasoning_content": word if i == 0 else " " + word}))
    for i, word in enumerate(answer.text.split()):
        out.append(chunk({"content": word if i == 0 else " " + word}))
    for n, call in enumerate(answer.calls):
        out.append(chunk({"tool_calls": [{"index": n, "id": call.id, "type": "function",
                                          "function": {"name": call.name, "arguments": ""}}]}))
        third = max(1, len(call.arguments) // 3)
        for at in range(0, len(call.arguments), third):
            out.append(chunk({"tool_calls": [{"index": n, "function": {
                "arguments": call.arguments[at:at + third]}}]}))
    out.append(chunk({}, answer.finish_reason))
    if usage:
        out.append(b"data: " + _dumps({**base, "choices": [], "usage": {
            "prompt_tokens": INPUT_TOKENS, "completion_tokens": answer.output_tokens,
            "total_tokens": INPUT_TOKENS + answer.output_tokens}}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _stop_reason(answer: Answer) -> str:
    return "tool_use" if answer.calls else {"length": "max_tokens"}.get(
        answer.finish_reason, "end_turn")


def message(answer: Answer, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": "sig"})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    for call in answer.calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name,
                        "input": json.loads(call.arguments)})
    return {"id": "msg_native1", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _stop_reason(answer), "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": answer.output_tokens}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def message_events(answer: Answer, model: str) -> list[bytes]:
    """The event stream vLLM's /v1/messages writes, block by block."""
    start = message(answer, model)
    start.update(content=[], stop_reason=None, usage={"input_tokens": INPUT_TOKENS,
                                                      "output_tokens": 0})
    out = [_event("message_start", {"type": "message_start", "message": start})]
    index = 0

    def block(first: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        out.append(_event("content_block_start", {"type": "content_block_start",
                                                  "index": index, "content_block": first}))
        for delta in deltas:
            out.append(_event("content_block_delta", {"type": "content_block_delta",
                                                      "index": index, "delta": delta}))
        out.append(_event("content_block_stop", {"type": "content_block_stop",
                                                 "index": index}))
        index += 1

    if answer.reasoning:
        block({"type": "thinking", "thinking": "", "signature": ""},
              [{"type": "thinking_delta", "thinking": w if i == 0 else " " + w}
               for i, w in enumerate(answer.reasoning.split())]
              + [{"type": "signature_delta", "signature": "sig"}])
    if answer.text:
        words = answer.text.split()
        block({"type": "text", "text": ""},
              [{"type": "text_delta", "text": w if i == 0 else " " + w}
               for i, w in enumerate(words)])
    for call in answer.calls:
        block({"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
              [{"type": "input_json_delta", "partial_json": call.arguments}])
    out.append(_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": _stop_reason(answer),
                                           "stop_sequence": None},
        "usage": {"output_tokens": answer.output_tokens}}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out
