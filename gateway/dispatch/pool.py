"""A public model's pool: the backends that serve it, its strategy and its fallbacks."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import BackendConfig, Fallback
from ..routing import Strategy
from .backend import BackendState


@dataclass(frozen=True, slots=True)
class Pool:
    model: str
    backends: tuple[BackendState, ...]
    strategy: Strategy
    fallbacks: tuple[Fallback, ...] = ()
    # The configured backends behind `backends` (a discover backend stands for its
    # members, and is here while it has none): what a cold pool waits on and wakes.
    sources: tuple[BackendConfig, ...] = ()
