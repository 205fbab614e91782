"""Which way each try of an Anthropic Messages request goes, backend by backend.

A pool may mix kinds: each try takes the way its backend needs, so a retry from a
runtime serving /v1/messages to one that does not is translated, and back.

    Way.NATIVE      the backend has the `messages` capability: the body as the client sent it
                (model rewritten), with `anthropic-version` / `anthropic-beta` passed on
    Way.TRANSLATED  any other backend that can chat: the request translated to chat completions
    Way.TOKENIZER   count_tokens on a backend without /v1/messages/count_tokens but with a
                tokenizer at its server root (`POST /tokenize`), in that runtime's format

The translation is made once per request, and only when some backend of the walk needs it.
A request the translation cannot express (a document block, a server tool) still goes to
the backends that serve it natively; with none of those it is a 400 naming the field.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import orjson

from ..config import BackendConfig
from ..dispatch import Shaped
from ..dispatch.fallbacks import Stage
from ..limits.tickets import Ticket
from ..endpoints import BY_NAME, BY_PATH, Endpoint, Streams
from ..errors import BadRequest, NotImplementedByRuntime
from ..relay.chat import model_patterns
from ..relay.formats import FORMATS
from ..translate.anthropic import TranslationError, messages_to_chat
from ..translate.content import content_text
from .plans import ask_priority, ask_stream_usage


class Way(enum.Enum):
    NATIVE = "native"
    TRANSLATED = "translated"
    TOKENIZER = "tokenizer"

PASSED_HEADERS = ("anthropic-version", "anthropic-beta")
# Kinds whose /v1/messages comes with /v1/messages/count_tokens, as their docs say (Ollama
# documents /v1/messages alone).
COUNTS_TOKENS = frozenset({"vllm", "llamacpp"})
# Kinds with a tokenizer at the server root, and what it takes: vLLM's takes the chat
# messages (and applies the chat template), llama-server's takes one text (`content`).
TOKENIZERS: Mapping[str, str] = MappingProxyType(
    {"vllm": "messages", "llamacpp": "content", "echo": "messages"})

CHAT = BY_NAME["chat"]
MESSAGES = BY_PATH["/v1/messages"]
COUNT_TOKENS = BY_PATH["/v1/messages/count_tokens"]
# Not a public route: the tokenizer a count_tokens request may be answered from.
TOKENIZE = Endpoint("tokenize", ("/tokenize",), "/tokenize", "chat", upstream_root=True,
                    has_usage=False)
NATIVE_EVENTS = FORMATS[Streams.ANTHROPIC]
TRANSLATED_EVENTS = FORMATS[Streams.ANTHROPIC_FROM_CHAT]


def passed_headers(headers: Mapping[str, str]) -> Mapping[str, str] | None:
    found = {name: headers[name] for name in PASSED_HEADERS if name in headers}
    return found or None


class MessagesPlan:
    """POST /v1/messages: natively where the backend serves it, else translated."""

    __slots__ = ("payload", "headers", "ticket", "_chat", "_error")

    selective = True   # a backend that cannot take the translation is not tried

    def __init__(self, payload: dict[str, Any], headers: Mapping[str, str] | None,
                 ticket: Ticket | None = None) -> None:
        self.payload = payload
        self.headers = headers
        self.ticket = ticket
        self._chat: dict[str, Any] | None = None
        self._error: TranslationError | None = None

    def way(self, backend: BackendConfig) -> Way | None:
        return Way.NATIVE if backend.capabilities.get("messages") else Way.TRANSLATED

    def check(self, stages: Iterable[Stage]) -> None:
        """Before dispatch: a request no backend could take is the client's error."""
        backends = [b.config for stage in stages for b in stage.backends]
        if backends and not any(self.way(b) is Way.NATIVE for b in backends) \
                and self._translated() is None:
            raise BadRequest(self._error.message, param=self._error.param)

    def accepts(self, backend: BackendConfig) -> bool:
        return self.way(backend) is Way.NATIVE or self._translated() is not None

    def prepare(self, backend: BackendConfig, public: str, stream: bool) -> Shaped:
        model_id = backend.model_id(public)
        if self.way(backend) is Way.NATIVE:
            body = {**self.payload, "model": model_id}
            ask_priority(body, backend, self.ticket)
            return Shaped(MESSAGES, body, self.headers, NATIVE_EVENTS if stream else None,
                          model_patterns(model_id, public))
        chat = {**(self._translated() or {}), "model": model_id}
        if stream:   # Anthropic's streams end with usage; chat's say it only when asked
            ask_stream_usage(chat, backend)
        ask_priority(chat, backend, self.ticket)
        # The translated answer is made with the public name: nothing to rewrite.
        return Shaped(CHAT, chat, None, TRANSLATED_EVENTS if stream else None)

    def _translated(self) -> dict[str, Any] | None:
        if self._chat is None and self._error is None:
            try:
                self._chat = messages_to_chat(self.payload)
            except TranslationError as err:
                self._error = err
        return self._chat


class CountTokensPlan(MessagesPlan):
    """POST /v1/messages/count_tokens: passed on, or answered from a tokenizer."""

    __slots__ = ()

    def way(self, backend: BackendConfig) -> Way | None:
        if backend.capabilities.get("messages") and backend.kind in COUNTS_TOKENS:
            return Way.NATIVE
        return Way.TOKENIZER if backend.kind in TOKENIZERS else None

    def check(self, stages: Iterable[Stage]) -> None:
        backends = [b.config for stage in stages for b in stage.backends]
        ways = {self.way(b) for b in backends}
        if backends and Way.NATIVE not in ways and self._translated() is None:
            raise BadRequest(self._error.message, param=self._error.param)   # the client's first
        if backends and not ways - {None}:
            kinds = ", ".join(sorted({b.kind for b in backends}))
            raise NotImplementedByRuntime(
                f"count_tokens needs a runtime that serves /v1/messages/count_tokens "
                f"(vLLM, llama-server) or a tokenizer; this model's backends ({kinds}) "
                f"have neither", param="model")

    def accepts(self, backend: BackendConfig) -> bool:
        way = self.way(backend)
        return way is Way.NATIVE or way is Way.TOKENIZER and self._translated() is not None

    def prepare(self, backend: BackendConfig, public: str, stream: bool) -> Shaped:
        model_id = backend.model_id(public)
        if self.way(backend) is Way.NATIVE:
            return Shaped(COUNT_TOKENS, {**self.payload, "model": model_id}, self.headers,
                          None, model_patterns(model_id, public))
        chat = self._translated() or {}
        return Shaped(TOKENIZE, tokenizer_body(TOKENIZERS[backend.kind], model_id, chat),
                      None, None)

    def _translated(self) -> dict[str, Any] | None:
        if self._chat is None and self._error is None:
            try:
                self._chat = messages_to_chat(self.payload, count_tokens=True)
            except TranslationError as err:
                self._error = err
        return self._chat


def tokenizer_body(form: str, model: str, chat: dict[str, Any]) -> dict[str, Any]:
    """The /tokenize request of a runtime's kind for a translated count_tokens body.

    llama-server's tokenizer applies no chat template, so its count is of the texts alone
    (system, messages, tool definitions): close, not exact."""
    if form == "messages":
        body: dict[str, Any] = {"model": model, "messages": chat["messages"],
                                "add_generation_prompt": True}
        if chat.get("tools"):
            body["tools"] = chat["tools"]
        return body
    texts = [content_text(m.get("content"), "\n") for m in chat["messages"]]
    texts += [orjson.dumps(t).decode() for t in chat.get("tools") or ()]
    return {"content": "\n".join(t for t in texts if t), "add_special": True}
