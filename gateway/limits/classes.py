"""A request's class: its key's, lowered by the client if it asks (never raised).

`X-Priority: interactive|standard|batch` (anything else is a 400 naming the header),
or the body's OpenAI `service_tier`: `flex` is batch, `priority` is interactive,
`auto`/`default` (or a value this gateway does not know) the key's class. The body
keeps its `service_tier`: it is passed upstream unchanged.
"""

from __future__ import annotations

from typing import Any

from ..config import PRIORITIES
from ..errors import BadRequest

CLASS_OF = {name: i for i, name in enumerate(PRIORITIES)}
TIERS = {"flex": CLASS_OF["batch"], "priority": CLASS_OF["interactive"]}


def header_class(value: str) -> int:
    cls = CLASS_OF.get(value.strip().lower())
    if cls is None:
        raise BadRequest(f"X-Priority must be one of {', '.join(PRIORITIES)}, got "
                         f"{value[:40]!r}", param="X-Priority")
    return cls


def tier_class(service_tier: Any) -> int | None:
    """The class a body's `service_tier` asks for; None: the key's own."""
    return TIERS.get(service_tier) if isinstance(service_tier, str) else None
