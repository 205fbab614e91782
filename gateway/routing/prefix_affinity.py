"""Prefix affinity: requests sharing a conversation prefix go to one backend.

Runtimes with prefix caching (vLLM, SGLang, llama.cpp) keep the KV cache of
recent prompts; a later turn of a conversation extends the earlier turn's
prompt, so sending it to the same backend skips the prefill of the whole
history. Placement is consistent hashing with bounded loads (see ring.py), so
affinity never piles more than c times a fair share onto one backend.

A conversation goes where its previous turn went. The ring places a conversation's
root, but a turn that spilled off its root's backend (the bound) left its whole history
in the spill backend's cache, and many conversations on one hot root (one template, one
shared document) would all come back to that root's backend. So each pick remembers the
backend that served the turn (by a hash of the whole message list) and the next turn,
whose messages without its last reply and question are that list, goes to the same
backend while it is under the bound; else the ring decides as before. The memory is per
gateway process and bounded (TURN_MEMORY, least recently used out, a conversation's
older turns dropped as it moves on): a replica or worker that has not seen the previous
turn places it by the ring, like every replica does.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import Candidate, RouteRequest

if TYPE_CHECKING:
    from ..endpoints import Endpoint
from .ring import BoundedAffinity

PROMPT_CHARS = 256          # completions: the part of the prompt that forms the key
PROMPT_TOKENS = PROMPT_CHARS // 4    # the same span for a pre-tokenised prompt (~4 chars/token)
KEY_BYTES = 16
TURN_MEMORY = 65_536        # conversations whose last backend is remembered, per pool


class PrefixAffinity:
    name = "prefix_affinity"
    uses_load = True
    __slots__ = ("_affinity", "_turns", "followed")

    def __init__(self, load_factor: float = 1.25) -> None:
        self._affinity = BoundedAffinity(load_factor)
        self._turns: OrderedDict[bytes, str] = OrderedDict()   # turn -> its backend
        self.followed = False   # the last pick went where the previous turn went

    def route_key(self, endpoint: Endpoint, payload: Mapping[str, Any],
                  headers: Mapping[str, str]) -> RouteRequest:
        prompt_field = endpoint.prompt_field
        turn = previous = None
        if prompt_field == "messages":
            turn, previous = turn_keys(payload.get("messages"))
        return RouteRequest(prefix=prefix_key(prompt_field, payload), turn=turn,
                            previous=previous)

    def pick(self, candidates: Sequence[Candidate], request: RouteRequest) -> Candidate:
        turns = self._turns
        before = turns.pop(request.previous, None) if request.previous is not None else None
        chosen = self._affinity.pick_by_key(candidates, request.prefix, prefer=before)
        self.followed = before is not None and chosen.name == before
        if request.turn is not None:
            turns[request.turn] = chosen.name
            turns.move_to_end(request.turn)
            if len(turns) > TURN_MEMORY:
                turns.popitem(last=False)
        return chosen


def turn_keys(messages: Any) -> tuple[bytes | None, bytes | None]:
    """(the hash of the whole message list, the hash of the list its previous turn sent:
    all but a last assistant message and the message after it; None when it has none)."""
    if not isinstance(messages, list) or not messages:
        return None, None
    digest = blake2b(digest_size=KEY_BYTES)
    previous = None
    cut = len(messages) - 2
    for i, message in enumerate(messages):
        if i == cut and isinstance(message, dict) and message.get("role") == "assistant" \
                and i > 0:
            previous = digest.copy().digest()
        if not isinstance(message, dict):
            return None, None
        data = f"{message.get('role')}\0{_content_text(message.get('content'))}".encode(
            "utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest(), previous


def prefix_key(prompt_field: str | None, body: Mapping[str, Any]) -> bytes | None:
    """The affinity key of a request whose prompt is in `prompt_field`, or None.

    `prompt_field` comes from the endpoint's row in `gateway.endpoints`: "messages"
    for a conversation, "prompt" for a completion prompt, None for no affinity.

    Messages: the conversation root, i.e. every message up to and including the
    first user message (system prompts, few-shot turns, the opening question).
    Later turns only append to the history, so every turn of one conversation
    has the same root and key, while conversations that merely share a system
    prompt still spread over the pool.

    Prompt: the first PROMPT_CHARS characters. A shorter prompt gets no key:
    its key would change as soon as a follow-up prompt grew past it, and so
    short a prompt has little cache to reuse anyway.
    """
    if prompt_field == "messages":
        parts = _chat_root(body.get("messages"))
    elif prompt_field == "prompt":
        parts = _completion_head(body.get("prompt"))
    else:
        return None
    if not parts:
        return None
    digest = blake2b(digest_size=KEY_BYTES)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        # Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


def _chat_root(messages: Any) -> list[str] | None:
    if not isinstance(messages, list):
        return None
    root: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        root.append(f"{role}\0{_content_text(message.get('content'))}")
        if role == "user":
            return root
    # No user message at all: the system prompt alone is the whole prefix.
    return root or None


def _content_text(content: Any) -> str:
    """Content as text; a list of text parts reads the same as the plain string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(_is_text_part(p) for p in content):
        return "\n".join(p["text"] for p in content)
    if content is None:
        return ""
    # Images, audio and other parts: their canonical JSON identifies them.
    return json.dumps(content, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def _completion_head(prompt: Any) -> list[str] | None:
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]       # a batch goes to one backend: key it by its first prompt
    if isinstance(prompt, str) and len(prompt) >= PROMPT_CHARS:
        return [prompt[:PROMPT_CHARS]]
    if (isinstance(prompt, list) and len(prompt) >= PROMPT_TOKENS
            and all(isinstance(t, int) for t in prompt[:PROMPT_TOKENS])):
        return ["tokens\0" + ",".join(map(str, prompt[:PROMPT_TOKENS]))]
    return None
