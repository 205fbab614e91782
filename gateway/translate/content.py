"""The text of an OpenAI-style message `content`, which is a string or a list of parts.

The tokenizer plan (`api/messages_plan.py`) and the echo runtime both read a message's
text; one reading keeps them counting the same words.
"""

from __future__ import annotations

from typing import Any


def content_text(content: Any, sep: str = " ") -> str:
    """The string itself, or the text parts joined by `sep` (other parts and shapes: "")."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return sep.join(p.get("text", "") for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
