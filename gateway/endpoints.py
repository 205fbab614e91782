"""The APIs the gateway serves: one row per endpoint, and nothing else names them.

A row says where clients call it, where it goes on a runtime, what a request must
carry, which capability a backend needs for it, how its answer streams, and which
error shape its clients expect. Routes, validation, the upstream URL, the `endpoint`
metric label and the affinity key all read the row; a new API is a new row.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

# How an endpoint's answer may stream.
SSE = "sse"          # Server-Sent Events of `data:` chunks, ending with `data: [DONE]`
ANTHROPIC_SSE = "anthropic_sse"   # SSE with Anthropic's `event:` names, ending with message_stop
# Error shapes: the body a client of that API expects.
OPENAI = "openai"
ANTHROPIC = "anthropic"   # {"type": "error", "error": {"type": ..., "message": ...}}


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str                                 # the `endpoint` metric label and log field
    paths: tuple[str, ...]                    # where clients call it
    upstream_path: str                        # where it goes, under the backend's /v1
    capability: str                           # what a backend must be able to do
    required: tuple[str, tuple[type, ...]] | None = None   # a field and its JSON types
    model_field: str = "model"                # the body field that names the model
    streams: str | None = None                # SSE, or None when it never streams
    error_shape: str = OPENAI
    prompt_field: str | None = None           # where the prompt is, for prefix affinity
    tools_capability: str | None = None       # needed instead when the body has `tools`
    method: str = "POST"
    at_root: bool = False                     # upstream_path is under the server root, not /v1

    def capability_for(self, payload: Mapping[str, Any]) -> str:
        if self.tools_capability and payload.get("tools"):
            return self.tools_capability
        return self.capability


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("chat", ("/v1/chat/completions",), "/chat/completions", "chat",
             required=("messages", (list,)), streams=SSE, prompt_field="messages",
             tools_capability="tools"),
    Endpoint("completions", ("/v1/completions",), "/completions", "completions",
             required=("prompt", (str, list)), streams=SSE, prompt_field="prompt"),
    Endpoint("embeddings", ("/v1/embeddings",), "/embeddings", "embeddings",
             required=("input", (str, list))),
    # Anthropic Messages (gateway/api/messages.py): kinds without the `messages` capability
    # get it translated to chat completions, so any backend that can chat can answer.
    Endpoint("messages", ("/v1/messages",), "/messages", "chat", streams=ANTHROPIC_SSE,
             error_shape=ANTHROPIC, prompt_field="messages", tools_capability="tools"),
    Endpoint("messages", ("/v1/messages/count_tokens",), "/messages/count_tokens", "chat",
             error_shape=ANTHROPIC),
)

# An API with several rows (one metric label) is named by its first row.
BY_NAME: Mapping[str, Endpoint] = MappingProxyType({e.name: e for e in reversed(ENDPOINTS)})
BY_PATH: Mapping[str, Endpoint] = MappingProxyType(
    {path: e for e in ENDPOINTS for path in e.paths})
