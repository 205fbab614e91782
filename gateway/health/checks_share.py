"""Active health checks once per server under `--workers N`: one worker leads.

Every worker has its own backend states, but probing each backend from every
worker would multiply the checks (and model discovery) by N. So the leading worker
(workers/leader.py: a file lock in the server's run directory) runs the rounds and
publishes each round's results to `health.json`; the others read the file when it
changes (a stat every FOLLOW_POLL_S) and take the results as their own. When the
leader dies, the first follower to try the lock next (once per interval) leads.

Published per backend: what the probe said this round, the resulting health, and
the discovered models; keyed by name and identity (kind, URL), so a worker still
on an older config ignores a result for a backend it knows differently. Passive
ejection stays each worker's own: it is what that worker's traffic saw. Engine
scrapes follow the same leader, in a file of their own (health/scraper_share.py).
"""

from __future__ import annotations

from ..workers.leader import Leader, Published
from ..log import health_logger
from ..workers.rundir import RunDir
from ..state import Gateway

FOLLOW_POLL_S = 0.25


class HealthShare:
    def __init__(self, run: RunDir, leader: Leader) -> None:
        self.leader = leader
        self.file = Published(run.file("health.json"), "health results", health_logger)

    @property
    def leading(self) -> bool:
        return self.leader.leading

    def lead(self) -> bool:
        """True when this worker runs the checks (taking the lock if it is free)."""
        return self.leader.lead()

    def release(self) -> None:
        self.leader.release()

    def publish(self, gateway: Gateway, answered: dict[str, bool]) -> None:
        backends = {}
        for state in gateway.states.values():
            if state.name not in answered:
                continue
            backends[state.name] = {
                "identity": list(state.config.identity()), "ok": answered[state.name],
                "healthy": state.healthy, "checked": state.checked,
                "models": None if state.config.models is not None
                else list(state.discovered_models)}
        self.file.write({"backends": backends})

    def follow(self, gateway: Gateway) -> bool:
        """Take the leader's latest results, if new; True when there were some."""
        data = self.file.read_new()
        if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
            return False
        if apply(gateway, data["backends"]):
            gateway.rebuild()
        gateway.publish_backend_up()
        return True


def apply(gateway: Gateway, backends: dict) -> bool:
    """Set each backend's health from the leader's results; True when models changed."""
    changed = False
    for state in gateway.states.values():
        entry = backends.get(state.name)
        if entry is None or entry["identity"] != list(state.config.identity()):
            continue
        # Health only: a passing check never ends a passive ejection (dispatch/ejection.py).
        state.healthy, state.checked = entry["healthy"], entry["checked"]
        models = entry["models"]
        if models is not None and tuple(models) != state.discovered_models:
            state.discovered_models = tuple(models)
            changed = True
    return changed
