"""The echo runtime's rerank and score: word overlap, deterministic, in vLLM's formats."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..errors import BadRequest


def _words(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'()").lower() for w in text.split()} - {""}


def _similarity(a: str, b: str) -> float:
    """Word overlap (Jaccard): deterministic, and higher for the obviously closer text."""
    wa, wb = _words(a), _words(b)
    return round(len(wa & wb) / len(wa | wb), 6) if wa | wb else 0.0


def _doc_text(doc: Any) -> str:
    return doc.get("text", "") if isinstance(doc, dict) else str(doc)


def rerank(payload: dict) -> dict:
    query, docs = payload["query"], payload.get("documents")
    if not isinstance(docs, list) or not docs:
        raise BadRequest("'documents' is required and must be a non-empty array",
                         param="documents")
    scored = sorted(((i, _similarity(query, _doc_text(d))) for i, d in enumerate(docs)),
                    key=lambda pair: (-pair[1], pair[0]))
    top_n = payload.get("top_n")
    if isinstance(top_n, int) and top_n > 0:
        scored = scored[:top_n]
    tokens = len(query.split()) + sum(len(_doc_text(d).split()) for d in docs)
    return {"id": "rerank-" + uuid.uuid4().hex[:24], "model": payload["model"],
            "usage": {"total_tokens": tokens},
            "results": [{"index": i, "document": {"text": _doc_text(docs[i])},
                         "relevance_score": s} for i, s in scored]}


def _texts(payload: dict, field: str) -> list[str]:
    value = payload.get(field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest(f"'{field}' is required: a string or a non-empty list of strings",
                     param=field)


def score(payload: dict) -> dict:
    left, right = _texts(payload, "text_1"), _texts(payload, "text_2")
    if len(left) == 1:
        left = left * len(right)
    if len(left) != len(right):
        raise BadRequest("'text_1' and 'text_2' must have the same length, or text_1 one item",
                         param="text_2")
    tokens = sum(len(t.split()) for t in left + right)
    return {"id": "score-" + uuid.uuid4().hex[:24], "object": "list",
            "created": int(time.time()), "model": payload["model"],
            "data": [{"index": i, "object": "score", "score": _similarity(a, b)}
                     for i, (a, b) in enumerate(zip(left, right))],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}
