"""A stored conversation's input, pure: what a follow-up sends a runtime that keeps nothing.

OpenAI's `previous_response_id` means: the previous response's input, then its output,
then this request's input. The output items become input items in the shape every
Responses implementation takes back: an assistant message of `output_text` parts, a
`function_call` with its call id, name and arguments. Reasoning items are left out: they
are only accepted back with the encrypted content stateless runtimes do not make.
`instructions` are not carried over (as with OpenAI: each request states its own).
"""

from __future__ import annotations

from typing import Any


def input_items(given: Any) -> list[Any]:
    """A request's `input` as a list of items (a string is one user message)."""
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


def output_as_input(output: Any) -> list[dict[str, Any]]:
    """A response's `output` items as the input items that say the same."""
    items: list[dict[str, Any]] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            parts = [{"type": "output_text", "text": p.get("text", "")}
                     for p in item.get("content") or () if isinstance(p, dict)
                     and p.get("type") in ("output_text", "text")]
            items.append({"type": "message", "role": item.get("role", "assistant"),
                          "content": parts})
        elif kind == "function_call":
            items.append({"type": "function_call", "call_id": item.get("call_id"),
                          "name": item.get("name"), "arguments": item.get("arguments", "")})
        elif kind != "reasoning":
            items.append(item)
    return items


def expanded(stored: dict[str, Any], new_input: Any) -> list[Any]:
    """The whole input of a follow-up to the stored response `stored`."""
    return (list(stored.get("input") or ()) + output_as_input(stored.get("output"))
            + input_items(new_input))
