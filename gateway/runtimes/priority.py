"""A request's class as the body's `priority`, in each runtime's own convention.

Sent to backends with `engine_priority: true`, so the runtime's scheduler orders its
own queue as the gateway does (dispatch/scheduler.py). An integer for every class:

- vLLM: `priority: int` on its OpenAI request models, "lower means earlier handling"
  (vllm/entrypoints/openai/chat_completion/protocol.py, field `priority`; honoured
  with `--scheduling-policy priority`, an error otherwise for any value but 0).
- SGLang: `priority: Optional[int]` on its OpenAI request models
  (python/sglang/srt/entrypoints/openai/protocol.py); with
  `--enable-priority-scheduling`, "requests with higher priority integer values will
  be scheduled first by default" (python/sglang/srt/server_args.py; the flag
  `--schedule-low-priority-values-first` turns it round, which this does not assume).
"""

from __future__ import annotations

from ..config import PRIORITIES

# By class index (interactive, standard, batch).
LOWER_FIRST = tuple(range(len(PRIORITIES)))                  # vLLM: 0, 1, 2
HIGHER_FIRST = tuple(reversed(range(len(PRIORITIES))))       # SGLang: 2, 1, 0
CONVENTIONS = {"vllm": LOWER_FIRST, "sglang": HIGHER_FIRST}


def engine_priority(kind: str, cls: int) -> int:
    return CONVENTIONS[kind][cls]
