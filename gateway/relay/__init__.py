"""Relaying answers: every stream format, the one relay coroutine, whole answers."""
