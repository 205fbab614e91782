"""OpenAI's Responses API as vLLM serves it: a whole response, or its event stream.

A stream is named events (`event: response.output_text.delta` ...), each with a
`sequence_number`; the terminal event is `response.completed` and there is no
`[DONE]`. One text message of `tokens` deltas, between the created / in-progress /
item / content-part events and their closing ones.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from .formats import PIECES, PROMPT_TOKENS, text

RESPONSE_ID, ITEM_ID = "resp_" + "b" * 32, "msg_" + "c" * 32


def usage(tokens: int) -> dict[str, int]:
    return {"input_tokens": PROMPT_TOKENS, "output_tokens": tokens,
            "total_tokens": PROMPT_TOKENS + tokens}


def message(tokens: int) -> dict[str, Any]:
    return {"id": ITEM_ID, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text(tokens), "annotations": []}]}


def response(model: str, tokens: int, previous: str | None = None,
             rid: str = RESPONSE_ID) -> dict[str, Any]:
    """The whole answer: `POST /v1/responses` without `stream`, or `response.completed`."""
    return {"id": rid, "object": "response", "created_at": int(time.time()),
            "model": model, "status": "completed", "output": [message(tokens)],
            "usage": usage(tokens), "error": None, "previous_response_id": previous}


def named(dumps: Callable[[Any], bytes], kind: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), dumps({"type": kind, **data}))


def events(dumps: Callable[[Any], bytes], done: dict[str, Any], tokens: int,
           thin: bool = False) -> Iterator[bytes]:
    """The stream that ends in response `done`: one text message of `tokens` deltas.
    `thin`: as llama-server's, the terminal event's response has no `output`."""
    going = {**done, "status": "in_progress", "output": [], "usage": None}
    item = done["output"][0]
    at = {"item_id": ITEM_ID, "output_index": 0, "content_index": 0}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": going}), ("response.in_progress", {"response": going}),
        ("response.output_item.added", {"output_index": 0, "item": {
            **item, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**at, "part": {"type": "output_text", "text": "",
                                                        "annotations": []}})]
    seq = 0
    for seq, (kind, data) in enumerate(steps):
        yield named(dumps, kind, {"sequence_number": seq, **data})
    for i in range(tokens):
        seq += 1
        yield named(dumps, "response.output_text.delta",
                    {"sequence_number": seq, **at, "delta": PIECES[i], "logprobs": []})
    steps = [("response.output_text.done", {**at, "text": item["content"][0]["text"],
                                            "logprobs": []}),
             ("response.content_part.done", {**at, "part": item["content"][0]}),
             ("response.output_item.done", {"output_index": 0, "item": item}),
             ("response.completed", {"response": {k: v for k, v in done.items()
                                                   if not (thin and k == "output")}})]
    for kind, data in steps:
        seq += 1
        yield named(dumps, kind, {"sequence_number": seq, **data})


def error_event(dumps: Callable[[Any], bytes], message: str) -> bytes:
    return named(dumps, "error", {"sequence_number": 0, "code": "server_error",
                                  "message": message})
