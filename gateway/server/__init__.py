"""One serving process's lifetime: listening, serving, reloading the config, draining."""
