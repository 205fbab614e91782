"""`--workers N`: the supervisor, the directory the workers share, the leader lock."""
