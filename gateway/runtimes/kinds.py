"""The runtime kinds the gateway knows and what each one does by default.

Every kind speaks OpenAI's HTTP API under `<root>/v1`; they differ in their
health path, what they can do, and whether a stream can carry usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

CAPABILITIES = ("chat", "completions", "embeddings", "tools", "stream_usage", "messages")
# Off unless a kind's docs say it serves them. `messages`: /v1/messages (Anthropic) itself,
# as vLLM, llama-server and Ollama (0.14+) do; other kinds get it translated to chat.
OFF_BY_DEFAULT = frozenset({"messages"})


@dataclass(frozen=True)
class Kind:
    name: str
    health_path: str
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    needs_url: bool = True
    in_process: bool = False       # answered inside the gateway, no network hop


def _caps(**off: bool) -> Mapping[str, bool]:
    caps = {c: c not in OFF_BY_DEFAULT for c in CAPABILITIES}
    caps.update(off)
    return MappingProxyType(caps)


KINDS: Mapping[str, Kind] = MappingProxyType({
    "vllm": Kind("vllm", "/health", _caps(messages=True)),
    "sglang": Kind("sglang", "/health", _caps()),
    "ollama": Kind("ollama", "/api/tags", _caps(messages=True)),
    # llama-server has no tool calls unless started with --jinja; embeddings need --embeddings.
    "llamacpp": Kind("llamacpp", "/health", _caps(tools=False, messages=True)),
    # TGI's Messages API: chat and completions, no embeddings, no usage in streams.
    "tgi": Kind("tgi", "/health", _caps(embeddings=False, stream_usage=False)),
    "localai": Kind("localai", "/readyz", _caps()),
    # LM Studio and hosted OpenAI-compatible APIs have no health endpoint; listing models is the check.
    "lmstudio": Kind("lmstudio", "/v1/models", _caps()),
    "openai": Kind("openai", "/v1/models", _caps()),
    "echo": Kind("echo", "", _caps(tools=False), needs_url=False, in_process=True),
})


def normalise_root(url: str) -> str:
    """The server root of a runtime URL given with or without `/v1` and trailing slashes."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[:-3].rstrip("/")
    return root
