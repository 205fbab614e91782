"""Discovery once per server under `--workers N`: the leading worker looks up, the rest follow.

The worker that holds the leader lock (workers/leader.py, the one that also runs the
health checks and engine scrapes) resolves every discover backend and publishes the
addresses to `members.json` after each round; the others read the file when it changes
and take the addresses as their own, so every worker holds the same members, DNS is
asked once per interval for the server, and a failed lookup is logged once. Each worker
still keeps its own member states (in-flight counts, ejection), like any backend's.

Published per backend: the addresses, keyed by the backend's name and what it is looked
up by (URL, nameservers), so a worker still on an older config ignores them. When the
leader dies, the first worker to try the lock next (every SWEEP_S) leads and resolves.
"""

from __future__ import annotations

from typing import Any

from ..config import BackendConfig
from ..log import discovery_logger
from ..workers.leader import Leader, Published
from ..workers.rundir import RunDir


def lookup_key(backend: BackendConfig) -> list:
    discover = backend.discover
    return [backend.url, list(discover.nameservers) if discover is not None else []]


class MembersShare:
    def __init__(self, run: RunDir, leader: Leader) -> None:
        self.leader = leader
        self.file = Published(run.file("members.json"), "discovered members",
                              discovery_logger)

    def lead(self) -> bool:
        """True when this worker looks up for the server (taking the lock if it is free)."""
        return self.leader.lead()

    def publish(self, backends: list[BackendConfig],
                addresses: dict[str, tuple[str, ...]]) -> None:
        self.file.write({"backends": {
            b.name: {"key": lookup_key(b), "addresses": list(addresses[b.name])}
            for b in backends if b.name in addresses}})

    def follow(self, backends: list[BackendConfig]) -> dict[str, list[str]]:
        """The leader's latest addresses of these backends, if the file is new."""
        data: Any = self.file.read_new()
        if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
            return {}
        found = {}
        for backend in backends:
            entry = data["backends"].get(backend.name)
            if (isinstance(entry, dict) and entry.get("key") == lookup_key(backend)
                    and isinstance(entry.get("addresses"), list)):
                found[backend.name] = [a for a in entry["addresses"] if isinstance(a, str)]
        return found
