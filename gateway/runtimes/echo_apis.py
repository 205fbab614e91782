"""The echo runtime's other APIs: Responses (stored, streamed or not) and the tokenizer;
rerank and score are in echo_rank.py, audio and images in echo_media.py.

Each answers in the format of a real runtime (vLLM's for the tokenizer and score, the
Jina/vLLM rerank format, OpenAI's Responses objects and event sequence), so a client
can be tried against the shipped config. Stored responses and the word vocabulary
belong to one echo backend and are bounded; nothing here is shared between backends.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from typing import Any, AsyncIterator
from urllib.parse import unquote

import orjson

from ..translate.content import content_text
from ..endpoints import Body, Endpoint
from ..errors import BadRequest, UpstreamStatus
from . import echo_media
from .echo_rank import rerank, score
from .echo_tools import Call, responses_reply

WORD_DELAY_S = 0.02
MAX_STORED = 1000
MAX_VOCAB = 65536
MAX_MODEL_LEN = 4096


class Made:
    """An answer made in process, read like an HTTP runtime's: whole, or as chunks."""

    status = 200

    def __init__(self, body: bytes = b"", events: AsyncIterator[bytes] | None = None,
                 content_type: str | None = None) -> None:
        self._body = body
        self._events = events
        self.content_type = content_type or (
            "text/event-stream" if events is not None else "application/json")

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._events is None:
            yield self._body
            return
        async for event in self._events:
            yield event

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def _not_found(message: str, param: str) -> UpstreamStatus:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": "not_found"}}
    return UpstreamStatus(404, orjson.dumps(body), "application/json")


class EchoApis:
    """One echo backend's stored responses and vocabulary, and its answers."""

    __slots__ = ("stored", "vocab")

    def __init__(self) -> None:
        self.stored: OrderedDict[str, tuple[dict, list]] = OrderedDict()
        self.vocab: dict[int, str] = {}

    def open(self, endpoint: Endpoint, payload: Any, target: str | None) -> Made:
        if endpoint.name == "responses":
            if endpoint.body is not Body.NONE:
                return self._create(payload)
            return self._stored_call(endpoint.method, target or "")
        if endpoint.name == "tokenize":
            return Made(orjson.dumps(self._tokenize(payload) if endpoint.paths[0] == "/tokenize"
                                     else self._detokenize(payload)))
        if endpoint.name == "rerank":
            return Made(orjson.dumps(rerank(payload)))
        if endpoint.name == "score":
            return Made(orjson.dumps(score(payload)))
        if endpoint.name in ("transcriptions", "translations"):
            body, content_type, words = echo_media.transcription(payload.fields, payload.sizes)
            if payload.fields.get("stream"):
                return Made(events=echo_media.transcript_events(words))
            return Made(body, content_type=content_type)
        if endpoint.name == "speech":
            return Made(events=echo_media.speech(payload["input"]), content_type="audio/wav")
        if endpoint.name == "images":
            return Made(echo_media.image(payload))
        raise _not_found(f"the echo runtime does not serve {endpoint.name}", "model")

    # -- Responses ---------------------------------------------------------------------

    def _create(self, payload: dict) -> Made:
        previous = payload.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            raise _not_found(f"Previous response with id '{previous}' not found.",
                             "previous_response_id")
        items = _input_items(payload.get("input"))
        reply = responses_reply(items, payload)
        words = reply.words
        limit = payload.get("max_output_tokens")
        if isinstance(limit, int) and 0 <= limit < len(words):
            words = words[:limit]
        response = _response(payload, words, len(" ".join(_text_of(i) for i in items).split()),
                             reply.call)
        if payload.get("store", True) is not False:
            self._store(response, items)
        if payload.get("stream"):
            return Made(events=_response_events(response, words))
        return Made(orjson.dumps(response))

    def _store(self, response: dict, items: list) -> None:
        self.stored[response["id"]] = (response, items)
        while len(self.stored) > MAX_STORED:
            self.stored.popitem(last=False)

    def _stored_call(self, method: str, target: str) -> Made:
        path = target.split("?", 1)[0]
        parts = path.strip("/").split("/")          # responses, <id>[, cancel|input_items]
        rid = unquote(parts[1]) if len(parts) > 1 else ""
        found = self.stored.get(rid)
        if found is None:
            raise _not_found(f"Response with id '{rid}' not found.", "response_id")
        response, items = found
        action = parts[2] if len(parts) > 2 else ""
        if method == "DELETE":
            del self.stored[rid]
            return Made(orjson.dumps({"id": rid, "object": "response", "deleted": True}))
        if action == "input_items":
            data = [{"id": f"msg_{i}{rid[-8:]}", **item} for i, item in enumerate(items)]
            return Made(orjson.dumps({"object": "list", "data": data, "has_more": False,
                                      "first_id": data[0]["id"] if data else None,
                                      "last_id": data[-1]["id"] if data else None}))
        if action == "cancel":
            body = {"error": {"message": "Only background responses can be cancelled.",
                              "type": "invalid_request_error", "param": None, "code": None}}
            raise UpstreamStatus(400, orjson.dumps(body), "application/json")
        return Made(orjson.dumps(response))

    # -- tokenizer ---------------------------------------------------------------------

    def _tokenize(self, payload: dict) -> dict:
        text = payload.get("prompt", payload.get("content"))
        if text is None and isinstance(payload.get("messages"), list):
            text = " ".join(_text_of(m) for m in payload["messages"] if isinstance(m, dict))
        if not isinstance(text, str):
            raise BadRequest("'prompt' is required and must be a string", param="prompt")
        tokens = []
        for word in text.split():
            token = _token_id(word)
            if len(self.vocab) < MAX_VOCAB:
                self.vocab.setdefault(token, word)
            tokens.append(token)
        return {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens,
                "token_strs": None}

    def _detokenize(self, payload: dict) -> dict:
        tokens = payload["tokens"]   # a non-empty list: parse_payload checked
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise BadRequest("'tokens' must be a list of integers", param="tokens")
        return {"prompt": " ".join(self.vocab.get(t, "<unk>") for t in tokens)}


def _token_id(word: str) -> int:
    """A word's id: the same on every echo backend and replica."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest()) >> 1


def _text_of(item: Any) -> str:
    """An input item's text (a message's content, or a bare content)."""
    return content_text(item.get("content") if isinstance(item, dict) else item)


def _input_items(given: Any) -> list[dict]:
    if isinstance(given, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": given}]}]
    return [i for i in given if isinstance(i, dict)] if isinstance(given, list) else []


def _response(payload: dict, words: list[str], input_words: int, call: Call | None) -> dict:
    text = " ".join(words)
    message: dict[str, Any] = {
        "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "status": "completed",
        "role": "assistant", "content": [{"type": "output_text", "text": text,
                                          "annotations": []}]}
    made = len(words)
    if call is not None:
        message = {"id": "fc_" + uuid.uuid4().hex[:24], "type": "function_call",
                   "status": "completed", "call_id": call.id, "name": call.name,
                   "arguments": call.arguments}
        made = 1 + len(call.arguments.split())
    tools = payload.get("tools")
    return {"id": "resp_" + uuid.uuid4().hex, "object": "response",
            "created_at": int(time.time()), "status": "completed", "error": None,
            "incomplete_details": None, "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"), "model": payload["model"],
            "output": [message], "parallel_tool_calls": True,
            "previous_response_id": payload.get("previous_response_id"),
            "store": payload.get("store", True) is not False,
            "temperature": payload.get("temperature", 1.0), "text": {"format": {"type": "text"}},
            "tool_choice": payload.get("tool_choice") or "auto",
            "tools": tools if isinstance(tools, list) else [], "top_p": payload.get("top_p", 1.0),
            "truncation": "disabled", "metadata": payload.get("metadata") or {},
            "usage": {"input_tokens": input_words, "output_tokens": made,
                      "total_tokens": input_words + made,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


async def _response_events(done: dict, words: list[str]) -> AsyncIterator[bytes]:
    """The event sequence OpenAI streams for one text message, word by word."""
    seq = iter(range(1 << 30))
    message = done["output"][0]
    item_id = message["id"]
    part = {"type": "output_text", "text": "", "annotations": []}
    going = {**done, "status": "in_progress", "output": [], "usage": None}
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> bytes:
        body = orjson.dumps({"type": kind, "sequence_number": next(seq), **fields})
        return b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n"

    yield event("response.created", response=going)
    yield event("response.in_progress", response=going)
    if message["type"] == "function_call":
        yield event("response.output_item.added", output_index=0,
                    item={**message, "status": "in_progress", "arguments": ""})
        await asyncio.sleep(WORD_DELAY_S)
        yield event("response.function_call_arguments.delta", item_id=item_id, output_index=0,
                    delta=message["arguments"])
        yield event("response.function_call_arguments.done", item_id=item_id, output_index=0,
                    name=message["name"], arguments=message["arguments"])
        yield event("response.output_item.done", output_index=0, item=message)
        yield event("response.completed", response=done)
        return
    yield event("response.output_item.added", output_index=0,
                item={**message, "status": "in_progress", "content": []})
    yield event("response.content_part.added", **at, part=part)
    for i, word in enumerate(words):
        await asyncio.sleep(WORD_DELAY_S)
        yield event("response.output_text.delta", **at, delta=word if i == 0 else " " + word,
                    logprobs=[])
    text = message["content"][0]["text"]
    yield event("response.output_text.done", **at, text=text, logprobs=[])
    yield event("response.content_part.done", **at, part={**part, "text": text})
    yield event("response.output_item.done", output_index=0, item=message)
    yield event("response.completed", response=done)
