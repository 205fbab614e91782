"""A public model's pool: the backends that serve it, its strategy and its fallbacks."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Fallback
from ..routing import Strategy
from .backend import BackendState


@dataclass(frozen=True, slots=True)
class Pool:
    model: str
    backends: tuple[BackendState, ...]
    strategy: Strategy
    fallbacks: tuple[Fallback, ...] = ()
