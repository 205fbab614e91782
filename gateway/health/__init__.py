"""What the backends are like now, watched in the background: active health checks and the
engine scrapes, each run once per server (under `--workers`, by the leader) and shared."""
