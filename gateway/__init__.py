"""An OpenAI-compatible edge gateway for self-hosted LLM runtimes."""

__version__ = "0.1.0"
