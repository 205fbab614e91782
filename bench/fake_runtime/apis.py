"""Each API the fake serves: its path, its whole answer and, if it streams, its events.

One row per API keeps the wire (`answers`, `protocol`) free of per-API branches: a
new API is a row here and its formats in a `formats_*` module.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import formats, formats_apis, formats_messages, formats_responses

if TYPE_CHECKING:
    from .answers import Call
    from .runtime import FakeRuntime

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
RESPONSES, MESSAGES = "/v1/responses", "/v1/messages"
TRANSCRIPTIONS, TRANSLATIONS = "/v1/audio/transcriptions", "/v1/audio/translations"
SPEECH = "/v1/audio/speech"
SSE, AUDIO = b"text/event-stream", b"audio/mpeg"


@dataclass(frozen=True)
class Api:
    whole: Callable[[FakeRuntime, Call], Any]        # the answer's JSON object
    events: Callable[[FakeRuntime, Call], Iterable[bytes]] | None = None
    content_type: bytes = SSE                        # of the stream
    form: bool = False                               # the body is multipart/form-data


def _script(rt: FakeRuntime, call: Call) -> formats_messages.Answer:
    return rt.answer or formats_messages.of_tokens(call.tokens)


def _completion(rt: FakeRuntime, call: Call) -> Any:
    chat = call.path == CHAT
    if rt.answer is not None and chat:
        return formats_messages.chat_completion(rt.answer, call.model)
    return formats.completion(chat, call.model, call.tokens, call.b.send_usage)


def _completion_events(rt: FakeRuntime, call: Call) -> Iterable[bytes]:
    chat, b = call.path == CHAT, call.b
    if rt.answer is not None and chat:
        return formats_messages.chat_chunks(rt.answer, call.model, call.usage)
    base = formats.chunk_base(chat, call.model)
    if b.null_usage and call.usage:
        base["usage"] = None        # on every chunk, as OpenAI's own API does
    pad = "x" * max(0, b.chunk_bytes - 200)
    return formats.chat_events(rt.dumps, base, chat, call.tokens,
                               call.usage and b.send_usage, pad, not rt.spaced_json)


def _count_tokens(rt: FakeRuntime, call: Call) -> Any:
    messages = call.body.get("messages")
    return {"input_tokens": formats_messages.INPUT_TOKENS
            + (len(messages) if isinstance(messages, list) else 0)}


def _tokenize(rt: FakeRuntime, call: Call) -> Any:
    """llama-server's `{"tokens"}` of `content`; vLLM's count of a prompt or of the
    messages' words."""
    body = call.body
    if rt.tokenizer == "llamacpp":
        return {"tokens": list(range(len(str(body.get("content", "")).split())))}
    if "messages" in body:
        count = sum(len(str(m.get("content")).split()) for m in body["messages"])
    else:
        count = len(str(body.get("prompt", "")).split())
    return {"count": count, "max_model_len": 4096, "tokens": list(range(count)),
            "token_strs": None}


def _transcription_events(rt: FakeRuntime, call: Call) -> Iterable[bytes]:
    return formats_apis.transcription_events(call.model, formats.text(call.tokens),
                                             call.tokens, rt.transcript_done_event)


def _speech(rt: FakeRuntime, call: Call) -> Any:
    return formats_apis.speech(call.tokens)


def _rerank(rt: FakeRuntime, call: Call) -> Any:
    return formats_apis.rerank(call.model, call.body.get("documents"))


RERANK = Api(_rerank)
TRANSCRIBE = Api(lambda rt, c: formats_apis.transcription(formats.text(c.tokens), c.tokens),
                 _transcription_events, form=True)
APIS: MappingProxyType[str, Api] = MappingProxyType({
    CHAT: Api(_completion, _completion_events),
    COMPLETIONS: Api(_completion, _completion_events),
    EMBEDDINGS: Api(lambda rt, c: formats.embeddings(c.model, c.body.get("input"))),
    RESPONSES: Api(lambda rt, c: c.done,
                   lambda rt, c: formats_responses.events(rt.dumps, c.done, c.tokens,
                                                          thin=rt.stateless_responses)),
    MESSAGES: Api(lambda rt, c: formats_messages.message(_script(rt, c), c.model),
                  lambda rt, c: formats_messages.message_events(_script(rt, c), c.model)),
    "/v1/messages/count_tokens": Api(_count_tokens),
    "/tokenize": Api(_tokenize),
    "/detokenize": Api(lambda rt, c: formats_apis.detokenize(c.body.get("tokens"))),
    "/v1/rerank": RERANK, "/rerank": RERANK, "/v2/rerank": RERANK,
    "/v1/score": Api(lambda rt, c: formats_apis.score(c.model)),
    "/v1/images/generations": Api(lambda rt, c: formats_apis.images()),
    TRANSCRIPTIONS: TRANSCRIBE, TRANSLATIONS: TRANSCRIBE,
    SPEECH: Api(_speech, _speech, AUDIO),
})


def first_event_error(rt: FakeRuntime, call: Call) -> bytes:
    """What a stream sends in place of its first event under `first_event_error`."""
    if call.path == MESSAGES:
        return formats_messages.overloaded()
    message = "model overloaded"
    if rt.echo_credentials:
        message += f" (key {call.credentials()})"
    if call.path == RESPONSES:
        return formats_responses.error_event(rt.dumps, message)
    return formats.event(rt.dumps(formats.error(message, 503, "server_error")))
