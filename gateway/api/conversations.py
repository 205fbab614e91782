"""Stored responses the gateway keeps itself (gateway/conversations), at the HTTP surface.

Three hooks into the Responses flow of `proxy`, each a no-op unless the backend concerned
lacks the `stateful_responses` capability:

- `expand_follow_up`, before dispatch: a `previous_response_id` naming such a backend's
  response is answered from the store: the request's input becomes the whole conversation
  and the id is taken out, so any backend of the pool can answer it (a 404 in OpenAI's
  words when the gateway has no such response, or no longer). The answer still says the
  client's `previous_response_id`, as OpenAI's does (the runtime's says null or nothing):
  `IdRewriter.previous` sets it in every response object relayed, whole or streamed, so
  the copy stored says it too.
- `keeper`, once a backend answered: a `Keeping` that watches the relayed answer (the
  response object of a whole answer; `response.output_item.done` and the terminal event of
  a stream, since llama-server's terminal event lacks `output`) and starts storing it the
  moment it is complete, before the client has it (a follow-up of it waits for that put),
  unless the request said `store: false`. A whole answer is sent once stored; a stream's
  terminal event goes out while its put runs (under `--workers`, a follow-up sent within
  that millisecond to another worker may not find it yet).
- `answer_kept`, for `GET`, `DELETE` and `GET …/input_items` of such a backend's response:
  answered from the store, never sent to the runtime (which would say 404).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from ..limits.auth import model_allowed
from ..config import ApiKey, ResponsesConfig
from ..conversations import Conversations
from ..conversations.history import expanded, input_items
from ..dispatch import BackendState, Opened, RouteTable
from ..endpoints import Endpoint
from ..errors import BadRequest, Forbidden
from ..record import RequestRecord
from ..relay.response_ids import IdRewriter, runtime_ref
from ..typedefs import CONVERSATIONS
from ..relay.wire import loads_object
from .stored import ResponseNotFound

_KEPT_EVENTS = re.compile(rb"response\.(?:output_item\.done|completed|incomplete)")


def keeps_nothing(state: BackendState | None) -> bool:
    """Whether this backend's runtime keeps no Responses of its own."""
    return state is not None and not state.config.capabilities.get("stateful_responses", True)


async def expand_follow_up(request: web.Request, table: RouteTable, payload: dict,
                           key: ApiKey | None) -> str | None:
    """The `previous_response_id` when it was the gateway's to answer (the payload now
    holds the whole conversation as its input, and no previous_response_id); else None."""
    previous = payload.get("previous_response_id")
    ref = runtime_ref(previous)
    if ref is None or not keeps_nothing(table.states.get(ref[0])):
        return None   # none, not ours (follow_up says 404), or the runtime's own
    entry = await request.app[CONVERSATIONS].get(previous)
    if entry is None:
        raise ResponseNotFound(f"Previous response with id '{previous}' not found.",
                               param="previous_response_id")
    if key is not None and not model_allowed(key, entry.get("model", "")):
        raise Forbidden("This API key may not use the model of the previous response.",
                        param="previous_response_id")
    payload["input"] = expanded(entry, payload.get("input"))
    del payload["previous_response_id"]
    return previous


class Keeping:
    """One answer being watched, to be stored once it is complete."""

    __slots__ = ("conversations", "limits", "entry", "items", "rid")

    def __init__(self, conversations: Conversations, limits: ResponsesConfig,
                 entry: dict[str, Any]) -> None:
        self.conversations = conversations
        self.limits = limits
        self.entry = entry
        self.items: list[Any] = []
        self.rid: str | None = None   # the stored response's id, once its put started

    async def written(self) -> None:
        """Until the put of this answer is done (or failed: the answer stands)."""
        if self.rid is not None:
            await self.conversations.settled(self.rid)

    def see_whole(self, body: bytes) -> None:
        final = loads_object(body)
        if final is not None:
            self._store(final)

    def see_events(self, block: bytes) -> None:
        """A relayed block of events (ids already public): keep finished items and the end."""
        if not _KEPT_EVENTS.search(block):
            return   # deltas and the rest: not parsed
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            event = loads_object(line[5:])
            if event is None:
                continue
            kind = event.get("type")
            if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
                self.items.append(event["item"])
            elif kind in ("response.completed", "response.incomplete") \
                    and isinstance(event.get("response"), dict):
                self._store(event["response"])

    def _store(self, final: dict[str, Any]) -> None:
        if not isinstance(final.get("id"), str):
            return   # the runtime named no response: there is nothing to follow up
        if not final.get("output") and self.items:
            final = {**final, "output": self.items}
        if "model" in final:   # a whole answer is seen before its model name is rewritten
            final = {**final, "model": self.entry["model"]}
        entry = {**self.entry, "output": final.get("output") or [], "response": final}
        self.rid = final["id"]
        self.conversations.put_soon(self.rid, entry, self.limits)


def keep(request: web.Request, opened: Opened, payload: dict, ids: IdRewriter | None,
         model: str, limits: ResponsesConfig) -> Keeping | None:
    """Have `ids` store this answer as it is relayed, when the gateway keeps it (the
    answer it sees already says the client's previous_response_id: `ids.previous`)."""
    if ids is None or not keeps_nothing(opened.backend) or payload.get("store") is False:
        return None
    ids.keeper = Keeping(request.app[CONVERSATIONS], limits,
                         {"model": model, "backend": opened.backend.name,
                          "input": input_items(payload.get("input"))})
    return ids.keeper


async def answer_kept(request: web.Request, endpoint: Endpoint, state: BackendState,
                      rec: RequestRecord) -> web.Response | None:
    """GET, DELETE or input_items of a response the gateway keeps; None for the others."""
    path = request.path.rstrip("/")
    if not keeps_nothing(state) or path.endswith("/cancel"):
        return None   # the runtime's own; cancel: the runtime's answer (no background here)
    rid = request.match_info["response_id"]
    conversations = request.app[CONVERSATIONS]
    rec.usage = {}
    missing = ResponseNotFound(f"Response with id '{rid[:200]}' not found.",
                               param="response_id")
    if endpoint.method == "DELETE":
        if not await conversations.delete(rid):
            raise missing
        return _json({"id": rid, "object": "response", "deleted": True})
    if request.query.get("stream") == "true":
        raise BadRequest("only a response made in the background can be streamed again",
                         param="stream")
    entry = await conversations.get(rid)
    if entry is None:
        raise missing
    if path.endswith("/input_items"):
        return _json(_input_list(rid, entry.get("input") or [], request.query.get("order")))
    return _json(entry["response"])


def _input_list(rid: str, items: list[Any], order: str | None) -> dict[str, Any]:
    data = [{"id": f"msg_{rid[5:21]}_{i}", **item} if isinstance(item, dict) and "id" not in item
            else item for i, item in enumerate(items)]
    if order != "asc":
        data.reverse()   # OpenAI lists input items newest first unless asked otherwise
    ids = [d.get("id") for d in data if isinstance(d, dict)]
    return {"object": "list", "data": data, "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None, "has_more": False}


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")
