"""Pure translations between the APIs clients speak and the one a runtime serves (no I/O)."""
