"""Anthropic's Messages API as vLLM and llama-server serve it, and the chat stream that an
answer with reasoning and tool calls is in vLLM's chat completions.

One scripted `Answer` is what the model "says"; each API writes it in its own format, so a
test can check that the same answer arrives the same way through either path. Without a
script, the runtime's answer is `tokens` words (`words`), one text delta per word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from .formats import text as words_text

INPUT_TOKENS = 11


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str          # JSON text, as a model writes it


@dataclass
class Answer:
    text: str = "Hello from the runtime"
    reasoning: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def output_tokens(self) -> int:
        words = len(self.text.split()) + len((self.reasoning or "").split())
        return words + sum(len(c.arguments) // 4 + 1 for c in self.calls)


def of_tokens(tokens: int) -> Answer:
    """The unscripted answer: `tokens` words."""
    return Answer(text=words_text(tokens))


def failure(status: int) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error",
                                       "message": f"fake failure {status}"}}


def overloaded() -> bytes:
    """The `event: error` a runtime sends in place of a 200 stream's first event."""
    return named("error", {"type": "error", "error": {"type": "overloaded_error",
                                                      "message": "Overloaded"}})


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
        return b"data: " + orjson.dumps({**base, "choices": [
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
        out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": {
            "prompt_tokens": INPUT_TOKENS, "completion_tokens": answer.output_tokens,
            "total_tokens": INPUT_TOKENS + answer.output_tokens}}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def stop_reason(answer: Answer) -> str:
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
            "content": content, "stop_reason": stop_reason(answer), "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": answer.output_tokens}}


def named(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_events(answer: Answer, model: str) -> list[bytes]:
    """The event stream vLLM's /v1/messages writes, block by block."""
    start = message(answer, model)
    start.update(content=[], stop_reason=None, usage={"input_tokens": INPUT_TOKENS,
                                                      "output_tokens": 0})
    out = [named("message_start", {"type": "message_start", "message": start})]
    index = 0

    def block(first: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        out.append(named("content_block_start", {"type": "content_block_start",
                                                  "index": index, "content_block": first}))
        for delta in deltas:
            out.append(named("content_block_delta", {"type": "content_block_delta",
                                                      "index": index, "delta": delta}))
        out.append(named("content_block_stop", {"type": "content_block_stop",
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
    out.append(named("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": stop_reason(answer),
                                           "stop_sequence": None},
        "usage": {"output_tokens": answer.output_tokens}}))
    out.append(named("message_stop", {"type": "message_stop"}))
    return out
