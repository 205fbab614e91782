"""The gateway's listening sockets, for one process (server/serve.py) and the workers (workers/supervise.py).

Kept free of the app's imports: the supervisor binds before prometheus_client may be
imported (its multiprocess directory is set first).
"""

from __future__ import annotations

import socket
import sys

BACKLOG = 1024


def bound(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port (IPv6 for a host with a colon), not yet listening.

    A port that cannot be bound ends the process with one line, never a traceback.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        print(f"server: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    return sock


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket listening on host:port (see `bound`)."""
    sock = bound(host, port, reuse_port)
    sock.listen(BACKLOG)
    return sock
