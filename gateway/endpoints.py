"""The APIs the gateway serves: one row per endpoint, and nothing else names them.

A row says where clients call it (method and path, path parameters in braces), where
it goes on a runtime (under its /v1, or at its server root), what a request must
carry and in which body (JSON, or a multipart form, whose `model` field names the model
in both; none for stored responses, named by their id), which capability a backend
needs for it, how its answer streams, and which error shape its clients expect.
Routes, validation, the upstream URL, the `endpoint` metric label and the affinity
key all read the row; a new API is a new row. Several rows may share one `name`
(the stored-response paths are all `responses`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

class Streams(enum.Enum):
    """How an endpoint's answer streams: each kind is one stream format of `gateway.relay`."""
    CHAT = "chat"             # SSE `data:` chunks ending with `data: [DONE]` (chat, completions)
    AUDIO = "audio"           # SSE `data:` chunks that may end at `transcript.text.done`
    RESPONSES = "responses"   # SSE with the Responses API's `event:` names, no [DONE]: its
                              # terminal event ends it
    ANTHROPIC = "anthropic"   # Anthropic's `event:` names, ending with message_stop
    ANTHROPIC_FROM_CHAT = "anthropic_from_chat"   # a chat stream translated into those
    BYTES = "bytes"           # any answer (audio, images), relayed as bytes as they come


class Body(enum.Enum):
    """What a request's body is."""
    JSON = "json"
    MULTIPART = "multipart"   # a form with a file; the model is its `model` field
    NONE = "none"             # stored responses, named by their id


class ErrorShape(enum.Enum):
    """The error body a client of that API expects."""
    OPENAI = "openai"         # {"error": {"message", "type", "param", "code"}}
    ANTHROPIC = "anthropic"   # {"type": "error", "error": {"type": ..., "message": ...}}


# `upstream_path` for rows whose runtimes serve the very path the client called, at their root.
SAME_PATH = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str                                 # the `endpoint` metric label and log field
    paths: tuple[str, ...]                    # where clients call it
    upstream_path: str                        # where it goes, under the backend's /v1
    capability: str                           # what a backend must be able to do
    required: tuple[str, tuple[type, ...]] | None = None   # a field and its JSON types
    streams: Streams | None = None            # how its answer streams, if it may
    error_shape: ErrorShape = ErrorShape.OPENAI
    prompt_field: str | None = None           # where the prompt is, for prefix affinity
    tools_capability: str | None = None       # needed instead when the body has `tools`
    method: str = "POST"
    body: Body = Body.JSON
    upstream_root: bool = False               # upstream_path is at the server root, not /v1
    optional: tuple[tuple[str, tuple[type, ...]], ...] = ()   # fields typed when present
    has_usage: bool = True                    # its answers report token usage
    asks_stream_usage: bool = False           # streams get stream_options.include_usage
    stored_ids: bool = False                  # carries stored-response ids (Responses)
    output_fields: tuple[str, ...] = ()       # the fields that ask for an output limit, the
                                              # first set when none is (max_output_tokens)

    def capability_for(self, payload: Mapping[str, Any]) -> str:
        if self.tools_capability and payload.get("tools"):
            return self.tools_capability
        return self.capability


_STORED = dict(capability="responses", body=Body.NONE, has_usage=False, stored_ids=True)
_RESPONSE_FIELDS = (("input", (str, list)), ("previous_response_id", (str,)),
                    ("instructions", (str,)), ("tools", (list,)), ("store", (bool,)))

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("chat", ("/v1/chat/completions",), "/chat/completions", "chat",
             required=("messages", (list,)), streams=Streams.CHAT, prompt_field="messages",
             tools_capability="tools", asks_stream_usage=True,
             output_fields=("max_tokens", "max_completion_tokens")),
    Endpoint("completions", ("/v1/completions",), "/completions", "completions",
             required=("prompt", (str, list)), streams=Streams.CHAT, prompt_field="prompt",
             asks_stream_usage=True, output_fields=("max_tokens",)),
    Endpoint("embeddings", ("/v1/embeddings",), "/embeddings", "embeddings",
             required=("input", (str, list))),
    # Anthropic Messages (gateway/api/messages.py): kinds without the `messages` capability
    # get it translated to chat completions, so any backend that can chat can answer.
    Endpoint("messages", ("/v1/messages",), "/messages", "chat", streams=Streams.ANTHROPIC,
             error_shape=ErrorShape.ANTHROPIC, prompt_field="messages", tools_capability="tools",
             output_fields=("max_tokens",)),
    Endpoint("messages", ("/v1/messages/count_tokens",), "/messages/count_tokens", "chat",
             error_shape=ErrorShape.ANTHROPIC),
    Endpoint("responses", ("/v1/responses",), "/responses", "responses",
             streams=Streams.RESPONSES, optional=_RESPONSE_FIELDS, stored_ids=True,
             output_fields=("max_output_tokens",)),
    # GET ?stream=true replays a stored (background) response's events.
    Endpoint("responses", ("/v1/responses/{response_id}",), "/responses/{response_id}",
             method="GET", streams=Streams.RESPONSES, **_STORED),
    Endpoint("responses", ("/v1/responses/{response_id}",), "/responses/{response_id}",
             method="DELETE", **_STORED),
    Endpoint("responses", ("/v1/responses/{response_id}/cancel",),
             "/responses/{response_id}/cancel", **_STORED),
    Endpoint("responses", ("/v1/responses/{response_id}/input_items",),
             "/responses/{response_id}/input_items", method="GET", **_STORED),
    Endpoint("rerank", ("/v1/rerank", "/rerank", "/v2/rerank"), SAME_PATH, "rerank",
             required=("query", (str,)), optional=(("documents", (list,)),),
             upstream_root=True),
    Endpoint("score", ("/v1/score", "/score"), SAME_PATH, "score", upstream_root=True),
    Endpoint("tokenize", ("/tokenize",), "/tokenize", "tokenize", upstream_root=True,
             has_usage=False),
    Endpoint("tokenize", ("/detokenize",), "/detokenize", "tokenize", upstream_root=True,
             required=("tokens", (list,)), has_usage=False),
    Endpoint("transcriptions", ("/v1/audio/transcriptions",), "/audio/transcriptions",
             "audio", body=Body.MULTIPART, streams=Streams.AUDIO),
    Endpoint("translations", ("/v1/audio/translations",), "/audio/translations",
             "audio", body=Body.MULTIPART, streams=Streams.AUDIO),
    Endpoint("speech", ("/v1/audio/speech",), "/audio/speech", "audio",
             required=("input", (str,)), streams=Streams.BYTES, has_usage=False),
    Endpoint("images", ("/v1/images/generations",), "/images/generations", "images",
             required=("prompt", (str,)), streams=Streams.BYTES),
)

BY_NAME: Mapping[str, Endpoint] = MappingProxyType(
    {e.name: e for e in reversed(ENDPOINTS)})   # an API with several rows: its first row
BY_PATH: Mapping[str, Endpoint] = MappingProxyType(
    {path: e for e in reversed(ENDPOINTS) for path in e.paths})
# (method, path template as routed) -> row: what the middleware and the proxy look up.
BY_ROUTE: Mapping[tuple[str, str], Endpoint] = MappingProxyType(
    {(e.method, path): e for e in ENDPOINTS for path in e.paths})
