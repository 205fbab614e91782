"""The built-in `echo` runtime: answers in process, with no network hop.

Chat and completions echo the last user message (or the prompt) word by word,
streamed or not; with tools, chat runs an agent loop's steps (echo_tools.py: call the
tool the user names, answer a tool's result with its text); embeddings are deterministic
vectors. The Responses API, the
tokenizer, rerank and score are in echo_apis.py; Anthropic Messages reach echo
translated to chat. It serves any model it is listed for, so the shipped config
works on a machine with no LLM runtime.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import uuid
from typing import Any, AsyncIterator, Mapping

import orjson

from ..config import BackendConfig
from ..translate.content import content_text
from ..endpoints import Endpoint
from ..errors import BadRequest
from .echo_apis import EchoApis, Made
from .echo_tools import Call, chat_reply

WORD_DELAY_S = 0.02      # slow enough to see words arrive one by one in a terminal
EMBEDDING_DIMS = 64


class EchoRuntime:
    """The in-process runtime: always healthy, serves the models it is listed for."""

    __slots__ = ("config", "apis")

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.apis = EchoApis()   # this backend's stored responses and vocabulary

    async def open(self, endpoint: Endpoint, payload: dict, request_id: str,
                   deadline: float | None = None, *, target: str | None = None,
                   extra_headers: Mapping[str, str] | None = None) -> EchoResponse | Made:
        if endpoint.name in ("chat", "completions", "embeddings"):
            return EchoResponse(endpoint.name, payload, payload["model"])
        return self.apis.open(endpoint, payload, target)

    async def probe(self, request_id: str, timeout_s: float) -> bool:
        return True

    async def list_models(self, request_id: str, timeout_s: float) -> tuple[str, ...] | None:
        return None

    async def scrape(self, path: str, request_id: str, timeout_s: float) -> tuple[int, bytes]:
        return 404, b""   # echo exposes no load: the scraper never asks it


class EchoResponse:
    """An answer made in process, read like an HTTP runtime's."""

    status = 200

    def __init__(self, endpoint: str, payload: dict[str, Any], model: str) -> None:
        self.endpoint = endpoint
        self.payload = payload
        self.model = model
        self.stream = bool(payload.get("stream"))
        self.content_type = "text/event-stream" if self.stream else "application/json"

    async def read(self) -> bytes:
        if self.endpoint == "embeddings":
            return orjson.dumps(_embeddings(self.payload, self.model))
        words, finish, call = _answer(self.endpoint, self.payload)
        return orjson.dumps(_completion(self.endpoint, self.model, self.payload, words, finish,
                                        call))

    async def chunks(self) -> AsyncIterator[bytes]:
        words, finish, call = _answer(self.endpoint, self.payload)
        chat = self.endpoint == "chat"
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        base = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model}
        if chat:
            yield _event(base, {"index": 0, "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None})
        if call is not None:
            # As OpenAI streams a call: its id and name first, then the arguments.
            yield _event(base, {"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": ""}}]}, "finish_reason": None})
            await asyncio.sleep(WORD_DELAY_S)
            yield _event(base, {"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": call.arguments}}]},
                "finish_reason": None})
        for i, word in enumerate(words):
            await asyncio.sleep(WORD_DELAY_S)
            text = word if i == 0 else " " + word
            choice = ({"index": 0, "delta": {"content": text}, "finish_reason": None} if chat
                      else {"index": 0, "text": text, "finish_reason": None})
            yield _event(base, choice)
        last = ({"index": 0, "delta": {}, "finish_reason": finish} if chat
                else {"index": 0, "text": "", "finish_reason": finish})
        yield _event(base, last)
        options = self.payload.get("stream_options") or {}
        if options.get("include_usage"):
            yield b"data: " + orjson.dumps(
                {**base, "choices": [], "usage": _usage(self.payload, words, call)}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def _event(base: dict[str, Any], choice: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"


def _prompt_text(payload: dict[str, Any]) -> str:
    prompt = payload.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def _answer(endpoint: str, payload: dict[str, Any]) -> tuple[list[str], str, Call | None]:
    """The words to say and why they end, or the tool call to make instead."""
    if endpoint == "chat":
        reply = chat_reply(payload)
        if reply.call is not None:
            return [], "tool_calls", reply.call
        words = reply.words
    else:
        words = _prompt_text(payload).split()
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(limit, int) and limit >= 0 and len(words) > limit:
        return words[:limit], "length", None
    return words, "stop", None


def _count_prompt_words(payload: dict[str, Any]) -> int:
    if "messages" in payload:
        return sum(len(content_text(m.get("content")).split())
                   for m in payload["messages"] if isinstance(m, dict))
    prompt = payload.get("prompt", "")
    return len(prompt.split()) if isinstance(prompt, str) else 0


def _usage(payload: dict[str, Any], words: list[str], call: Call | None = None
           ) -> dict[str, int]:
    prompt = _count_prompt_words(payload)
    # A call's tokens: its name and the words of its arguments.
    made = len(words) if call is None else 1 + len(call.arguments.split())
    return {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made}


def _completion(endpoint: str, model: str, payload: dict[str, Any], words: list[str],
                finish: str, call: Call | None = None) -> dict[str, Any]:
    text = " ".join(words)
    if endpoint == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl-"
    return {"id": prefix + uuid.uuid4().hex[:24], "object": obj, "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(payload, words, call)}


def _embeddings(payload: dict[str, Any], model: str) -> dict[str, Any]:
    raw = payload["input"]   # a string or a non-empty list: requests.parse_payload checked
    inputs = [raw] if isinstance(raw, str) else raw
    dims = payload.get("dimensions") or EMBEDDING_DIMS
    if not isinstance(dims, int) or not 1 <= dims <= 4096:
        raise BadRequest("'dimensions' must be an integer from 1 to 4096", param="dimensions")
    data = [{"object": "embedding", "index": i, "embedding": _vector(str(item), dims)}
            for i, item in enumerate(inputs)]
    tokens = sum(len(str(item).split()) for item in inputs)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _vector(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on the text."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        out.extend(v / 2**31 - 1.0 for v in struct.unpack("<16I", digest))
        counter += 1
    out = out[:dims]
    norm = sum(v * v for v in out) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in out]
