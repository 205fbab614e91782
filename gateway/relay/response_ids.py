"""Stored-response ids that say which backend holds the response.

A stored response (and a follow-up naming it in `previous_response_id`) must reach
the backend that created it, from any gateway replica and after a restart, so the
id a client sees carries the backend's name itself rather than pointing into a map
in one process's memory:

    resp_<base64url(check + backend + NUL + runtime id)>

`check` is 3 bytes of a hash of the rest. It is no secret (the backend names are
in every answer's X-Gateway-Backend header anyway); it makes an edited or made-up id
a clean "no such response" instead of a request to whatever it happens to decode to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Iterable

import orjson

PREFIX = "resp_"
_CHECK = 3


def _check(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=_CHECK).digest()


def public_id(backend: str, runtime_id: str) -> str:
    """The id a client sees for `runtime_id` stored on `backend` (the same every time)."""
    raw = backend.encode() + b"\0" + runtime_id.encode()
    return PREFIX + base64.urlsafe_b64encode(_check(raw) + raw).rstrip(b"=").decode()


def runtime_ref(public: str) -> tuple[str, str] | None:
    """(backend name, runtime id) of a public id; None for anything the gateway did not make."""
    if not isinstance(public, str) or not public.startswith(PREFIX) or len(public) > 1024:
        return None
    text = public[len(PREFIX):]
    try:
        blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    check, raw = blob[:_CHECK], blob[_CHECK:]
    if len(check) < _CHECK or _check(raw) != check or b"\0" not in raw:
        return None
    backend, _, runtime_id = raw.partition(b"\0")
    try:
        names = backend.decode(), runtime_id.decode()
    except UnicodeDecodeError:
        return None
    return names if all(names) else None


class IdRewriter:
    """Replaces one backend's runtime response ids by their public ids, as bytes.

    The ids are learnt from the response objects seen (`id`, `previous_response_id`)
    or given up front (a stored response's path); a JSON string equal to one of them
    is replaced wherever it is, so streamed events need no parsing once it is known.
    """

    __slots__ = ("backend", "patterns", "keeper", "previous", "_known")

    def __init__(self, backend: str, known: Iterable[str] = ()) -> None:
        self.backend = backend
        self.patterns: list[tuple[bytes, bytes]] = []
        # What watches the answer with its ids made public, when the gateway stores it
        # (api/conversations.Keeping: see_whole, see_events); None: nothing does.
        self.keeper: Any = None
        # The previous_response_id the client sent, when the gateway answered it from its
        # own store (api/conversations: the runtime got the whole conversation and no id):
        # every response object relayed says it, as OpenAI's do; None: the runtime's own.
        self.previous: str | None = None
        self._known: set[str] = set()
        for runtime_id in known:
            self.learn(runtime_id)

    def learn(self, runtime_id: Any) -> None:
        if isinstance(runtime_id, str) and runtime_id and runtime_id not in self._known:
            self._known.add(runtime_id)
            self.patterns.append((orjson.dumps(runtime_id),
                                  orjson.dumps(public_id(self.backend, runtime_id))))

    def learn_from(self, response: Any) -> bool:
        """Learn the ids of a response object; True when it had its own id."""
        if not isinstance(response, dict):
            return False
        self.learn(response.get("previous_response_id"))
        own = response.get("id")
        self.learn(own)
        return isinstance(own, str) and bool(own)

    def apply(self, data: bytes) -> bytes:
        for old, new in self.patterns:
            if old in data:
                data = data.replace(old, new)
        return data

    def say_previous(self, response: Any) -> bool:
        """Set `previous_response_id` in a response object (one that names itself) when
        the gateway answered the follow-up; True when it changed."""
        if self.previous is None or not isinstance(response, dict) \
                or not isinstance(response.get("id"), str) \
                or response.get("previous_response_id") == self.previous:
            return False
        response["previous_response_id"] = self.previous
        return True
