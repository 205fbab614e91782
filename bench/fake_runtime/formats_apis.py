"""The APIs beyond chat and Responses, as plain data: vLLM's rerank, score and detokenize,
OpenAI's images, transcriptions (whole, or as `transcript.text.delta` events ending in
`transcript.text.done`, or vLLM's chunks ending in [DONE]) and speech (raw audio bytes).
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

from .formats import DONE, event

AUDIO_INPUT_TOKENS = 20


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def rerank(model: str, documents: Any) -> dict[str, Any]:
    n = len(documents) if isinstance(documents, list) else 0
    return {"id": "rerank-1", "model": model, "usage": {"total_tokens": 11},
            "results": [{"index": i, "relevance_score": 1 / (i + 1)} for i in range(n)]}


def score(model: str) -> dict[str, Any]:
    return {"id": "score-1", "object": "list", "model": model,
            "data": [{"index": 0, "object": "score", "score": 0.5}],
            "usage": {"prompt_tokens": 9, "total_tokens": 9}}


def detokenize(tokens: Any) -> dict[str, Any]:
    return {"prompt": " ".join(f"t{t}" for t in tokens) if isinstance(tokens, list) else ""}


def images() -> dict[str, Any]:
    return {"created": int(time.time()), "data": [{"b64_json": "aGk=" * 2000}],
            "usage": {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42,
                      "input_tokens_details": {"text_tokens": 12}}}


def transcription(text: str, tokens: int) -> dict[str, Any]:
    return {"text": text, "usage": {"type": "tokens", "input_tokens": AUDIO_INPUT_TOKENS,
                                    "output_tokens": tokens,
                                    "total_tokens": AUDIO_INPUT_TOKENS + tokens}}


def transcription_events(model: str, text: str, tokens: int, done_event: bool
                         ) -> Iterator[bytes]:
    """OpenAI's delta events and its done event, or (not `done_event`) vLLM's chunks; in
    Python's spaced JSON, as vLLM writes them."""
    for i in range(tokens):
        if done_event:
            yield event(_dumps({"type": "transcript.text.delta", "delta": f" w{i}"}))
        else:
            yield event(_dumps({"object": "transcription.chunk", "model": model,
                               "choices": [{"delta": {"content": f" w{i}"}}]}))
    yield (event(_dumps({"type": "transcript.text.done", "text": text})) if done_event
           else DONE)


def speech(tokens: int, per_token: int = 1000) -> Iterator[bytes]:
    """Audio bytes as they are made: a thousand per token (or `per_token`)."""
    for i in range(tokens):
        yield bytes([i % 256]) * per_token
