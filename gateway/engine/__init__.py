"""The runtimes' own load: what each kind exposes and how to read it (`signals`)."""

from .signals import (
    SPECS,
    EngineLoad,
    ParseError,
    ScrapeSpec,
    combine,
    ollama_name,
    parse,
    saturated,
    specs_for,
)

__all__ = ["SPECS", "EngineLoad", "ParseError", "ScrapeSpec", "combine", "ollama_name",
           "parse", "saturated", "specs_for"]
