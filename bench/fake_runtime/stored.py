"""Stored responses, as vLLM keeps them: each made response by its id, for a follow-up
(`previous_response_id`), a retrieve (whole or replayed as a stream), a cancel and, where
the runtime serves it (`deletes`), a delete. Kept only while the runtime `record`s; the
benchmark's runtime answers every request with one fixed id instead.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import orjson

from . import formats, formats_responses
from .apis import APIS, RESPONSES

if TYPE_CHECKING:
    from .answers import Answers, Call

PREFIX = "/v1/responses/"


def _not_found(conn: Answers, message: str) -> None:
    conn.send(404, orjson.dumps({"error": {"message": message,
                                           "type": "invalid_request_error"}}))


def create(conn: Answers, call: Call) -> bool:
    """Make the response a POST /v1/responses asks for; False if its follow-up was answered
    404 (the previous response is not here)."""
    rt = conn.rt
    previous = call.body.get("previous_response_id")
    rid = formats_responses.RESPONSE_ID
    if rt.stateless_responses:
        if previous is not None:
            conn.send(400, orjson.dumps(formats.error(
                "previous_response_id is not supported", 400)))
            return False
        rid = "resp_" + uuid.uuid4().hex
        call.done = formats_responses.response(call.model, call.tokens, None, rid)
        return True
    if rt.record:
        if previous is not None:
            rt.followups.append(previous)
            if previous not in rt.stored:
                _not_found(conn, f"no response {previous}")
                return False
        rid = "resp_" + uuid.uuid4().hex
        rt.created.append(rid)
    call.done = formats_responses.response(call.model, call.tokens, previous, rid)
    if rt.record:
        rt.stored[rid] = call.done
    return True


def answer(conn: Answers, method: str, path: str, query: str) -> None:
    """GET /v1/responses/{id} (`?stream=true`: replayed), POST .../{id}/cancel, DELETE."""
    from .answers import NO_HEADERS, Call

    rt = conn.rt
    rid, _, rest = path[len(PREFIX):].partition("/")
    if rt.stateless_responses:
        rt.stored_calls.append((method, path + (f"?{query}" if query else "")))
        conn.send(404, orjson.dumps(formats.error(f"no route {path}", 404)))
        return
    allowed = {"": ("GET", "DELETE") if rt.deletes else ("GET",), "cancel": ("POST",)}
    if rest not in allowed:
        conn.send(404, orjson.dumps(formats.error(f"no route {path}", 404)))
        return
    if method not in allowed[rest]:
        conn.send(405, orjson.dumps(formats.error(f"{method} not allowed", 405)))
        return
    rt.stored_calls.append((method, path + (f"?{query}" if query else "")))
    done = rt.stored.get(rid)
    if method == "DELETE":
        rt.stored.pop(rid, None)
        conn.send(200, orjson.dumps({"id": rid, "object": "response", "deleted": True}))
    elif done is None:
        _not_found(conn, "Response not found")
    elif method == "GET" and "stream=true" in query.split("&"):
        call = Call(rt, RESPONSES, APIS[RESPONSES], NO_HEADERS,
                    {"model": done["model"], "stream": True})
        call.done, call.tokens = done, done["usage"]["output_tokens"]
        conn.start(call)
    else:
        conn.send(200, rt.dumps(done))
