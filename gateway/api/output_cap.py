"""`routes.<model>.max_output_tokens`: the gateway's cap on what one answer may generate.

A small local model asked for no limit (Codex sends none) generates until its context is
full or the client gives up; Claude Code asks for 32,000. The operator's cap per public
model is sent upstream when a request asks for none, and replaces a larger ask: in each
API's own field (chat `max_tokens` / `max_completion_tokens`, completions `max_tokens`,
Responses `max_output_tokens`, Messages `max_tokens`). A chat request that names neither
gets `max_tokens`, the field every runtime reads. A value that is not an integer is left
for the runtime to refuse in its own words. The cap of the model the client asked for
holds on its fallbacks too.
"""

from __future__ import annotations

from typing import Any

from ..endpoints import Endpoint

def cap_output(endpoint: Endpoint, payload: dict[str, Any], cap: int | None) -> None:
    """Apply `cap` to a request body of `endpoint`, in place, in the fields its row names
    (`output_fields`; nothing without a cap, or for an API that generates no text)."""
    fields = endpoint.output_fields
    if cap is None or not fields:
        return
    asked = False
    for name in fields:
        value = payload.get(name)
        if value is None:
            continue
        asked = True
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            payload[name] = cap
    if not asked:
        payload[fields[0]] = cap
