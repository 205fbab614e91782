"""What the real runtimes send, as plain data: OpenAI's bodies and stream chunks.

Kept apart from the switches and the wire so that a reader can hold these next to
the runtimes' own API documents: the gateway must cope with exactly these shapes.
The other APIs have their own modules (`formats_responses`, `formats_messages`).
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import orjson

PROMPT_TOKENS = 7
MAX_TOKENS = 4096
# The tokens of every answer, made once: formatting them per request took a third of
# the fake's CPU per answer in the benchmark.
WORDS = tuple(f"w{i}" for i in range(MAX_TOKENS))
PIECES = tuple(f"w{i} " for i in range(MAX_TOKENS))    # as streamed, one per event
DONE = b"data: [DONE]\n\n"                               # the last event of a chat stream
KEEPALIVE = b": keepalive\n\n"                           # an SSE comment, as vLLM's proxy sends
# Each kind's health path, and the body a healthy runtime sends there (the gateway reads
# only the status): llama.cpp a status object, the others an empty 200. None: the path is
# a model list anyway (Ollama's /api/tags, /v1/models for LM Studio and hosted APIs).
HEALTH: Mapping[str, tuple[str, bytes | None]] = MappingProxyType({
    "vllm": ("/health", b""), "sglang": ("/health", b""), "tgi": ("/health", b""),
    "llamacpp": ("/health", b'{"status":"ok"}'), "localai": ("/readyz", b""),
    "ollama": ("/api/tags", None), "lmstudio": ("/v1/models", None),
    "openai": ("/v1/models", None),
})


def error(message: str, code: int | str, kind: str = "invalid_request_error"
          ) -> dict[str, Any]:
    """OpenAI's error body (vLLM's too, since it nests it under "error")."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def failure(status: int) -> dict[str, Any]:
    if status == 401:                   # OpenAI's words for a bad key
        return error("Incorrect API key provided", "invalid_api_key")
    return error(f"fake failure {status}", status,
                 "server_error" if status >= 500 else "invalid_request_error")


def usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens,
            "total_tokens": PROMPT_TOKENS + tokens}


def text(tokens: int) -> str:
    return " ".join(WORDS[:tokens])


def completion(chat: bool, model: str, tokens: int, with_usage: bool) -> dict[str, Any]:
    """A whole answer: `chat.completion`, or `text_completion` for /v1/completions."""
    answer = ({"message": {"role": "assistant", "content": text(tokens)}} if chat
              else {"text": text(tokens)})
    choice = {"index": 0, **answer, "finish_reason": "stop"}
    out = {"id": "chatcmpl-fake" if chat else "cmpl-fake",
           "object": "chat.completion" if chat else "text_completion",
           "created": int(time.time()), "model": model, "choices": [choice]}
    if with_usage:
        out["usage"] = usage(tokens)
    return out


def chunk_base(chat: bool, model: str) -> dict[str, Any]:
    """What every event of one stream repeats."""
    return {"id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model}


def chunk(base: dict[str, Any], chat: bool, piece: str | None) -> dict[str, Any]:
    """One token's event, or the finish event (piece None)."""
    finish = None if piece is not None else "stop"
    if chat:
        choice = {"index": 0, "delta": {} if piece is None else {"content": piece},
                  "finish_reason": finish}
    else:
        choice = {"index": 0, "text": piece or "", "finish_reason": finish}
    return {**base, "choices": [choice]}


def usage_chunk(base: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The last event before [DONE] when the request set stream_options.include_usage."""
    return {**base, "choices": [], "usage": usage(tokens)}


def event(obj: bytes) -> bytes:
    """One SSE data event around a JSON text."""
    return b"data: " + obj + b"\n\n"


def _choices(chat: bool) -> tuple[bytes, ...]:
    return tuple(orjson.dumps(chunk({}, chat, piece)["choices"][0]) for piece in PIECES)


# Each token's choice as compact JSON, made once: with the stream's own head, an event is
# two concatenations (what the benchmark's runtime must cost per event).
CHOICES = {True: _choices(True), False: _choices(False)}


def chat_events(dumps: Callable[[Any], bytes], base: dict[str, Any], chat: bool,
                tokens: int, usage: bool, pad: str = "", compact: bool = True
                ) -> Iterator[bytes]:
    """A completions stream, one event per token (each `pad`ded), the finish event, the
    usage event when asked (always the one before [DONE]), and [DONE]. `compact`: `dumps`
    writes orjson's bytes, so the tokens' events may be put together from made pieces."""
    if compact and not pad:
        head, choices = b"data: " + orjson.dumps(base)[:-1] + b',"choices":[', CHOICES[chat]
        for i in range(tokens):
            yield head + choices[i] + b"]}\n\n"
    else:
        for i in range(tokens):
            yield event(dumps(chunk(base, chat, PIECES[i] + pad if pad else PIECES[i])))
    yield event(dumps(chunk(base, chat, None)))
    if usage:
        yield event(dumps(usage_chunk(base, tokens)))
    yield DONE


def embeddings(model: str, inputs: Any) -> dict[str, Any]:
    n = len(inputs) if isinstance(inputs, list) else 1
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                     for i in range(n)],
            "usage": {"prompt_tokens": n, "total_tokens": n}}


def models(ids: tuple[str, ...]) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in ids]}


def ollama_tags(ids: tuple[str, ...]) -> dict[str, Any]:
    return {"models": [{"name": m, "model": m} for m in ids]}


def vllm_load(model: str, running: int, waiting: int, kv: float, served: int,
              latency_s: float = 0.0, queue_time_s: float = 0.0) -> str:
    """A vLLM's /metrics, its load gauges, request counter and the end-to-end and queue
    time histograms (one bucket: the gateway reads their sums and counts) only
    (vllm/v1/metrics)."""
    labels = f'{{engine="0",model_name="{model}"}}'
    return _histogram("vllm:e2e_request_latency_seconds",
                      "Histogram of e2e request latency in seconds.", model, served,
                      latency_s) + _histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.", model, served,
        queue_time_s) + (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{labels} {float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{labels} {float(waiting)}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{labels} {kv}\n"
        "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        "# TYPE vllm:request_success_total counter\n"
        f'vllm:request_success_total{{engine="0",finished_reason="length",'
        f'model_name="{model}"}} {float(served)}\n')


def _histogram(name: str, help_text: str, model: str, count: int, total: float) -> str:
    labels = f'engine="0",model_name="{model}"'
    return (f"# HELP {name} {help_text}\n# TYPE {name} histogram\n"
            f'{name}_bucket{{{labels},le="+Inf"}} {float(count)}\n'
            f"{name}_count{{{labels}}} {float(count)}\n"
            f"{name}_sum{{{labels}}} {total}\n")
