"""Engine scrapes once per server under `--workers N`: the leader scrapes, the others read.

The leading worker (workers/leader.py: the lock the health checks follow too) runs every scrape
round and then publishes each backend's reading to `engine.json` in the run directory;
the other workers read the file when it changes and record the readings in their own
backends' `EngineView`s, so load, saturation and least_latency route on one reading
per backend in every worker, and each runtime is asked once per interval, not N times.

A reading keeps the time of its scrape (CLOCK_MONOTONIC: one clock for all processes
of the machine), so it goes stale in every worker at the same moment, whether the
runtime stopped answering (the leader publishes the failure, not a new reading) or the
leader died (then nothing new comes, and the next worker to take the lock scrapes).
A follower counts its own in-flight requests from when it read the file, not from the
scrape, a poll later at most (`BackendState.load`). Only the leader writes the engine
gauges and the scrape-failure counter.

Published per backend, keyed by name and identity (kind, URL) as in health.json: the
last reading (running, waiting, kv_usage, loaded, loaded_models), its scrape's time,
and why the last round gave no reading, if it did not.
"""

from __future__ import annotations

from typing import Any

from ..workers.leader import Leader, Published
from ..log import engine_logger
from ..workers.rundir import RunDir
from ..state import Gateway
from ..engine.signals import EngineLoad

FOLLOW_POLL_S = 0.25   # a follower's stat of the file, at most this far apart


class EngineShare:
    def __init__(self, run: RunDir, leader: Leader) -> None:
        self.leader = leader
        self.file = Published(run.file("engine.json"), "engine readings", engine_logger)

    def lead(self) -> bool:
        """True when this worker scrapes for the server (taking the lock if it is free)."""
        return self.leader.lead()

    def publish(self, gateway: Gateway) -> None:
        """After a round: every backend that has a reading or a failure to tell."""
        backends = {}
        for state in gateway.states.values():
            view = state.engine
            if view.reading is None and view.failure is None:
                continue
            backends[state.name] = {
                "identity": list(state.config.identity()), "at": view.at,
                "reading": _dump(view.reading), "failure": view.failure}
        self.file.write({"backends": backends})

    def follow(self, gateway: Gateway) -> bool:
        """Take the leader's latest readings, if new; True when there were some."""
        data = self.file.read_new()
        if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
            return False
        apply(gateway, data["backends"])
        return True


def apply(gateway: Gateway, backends: dict[str, Any]) -> None:
    """Record each backend's published reading in this worker's view of it."""
    stale_after_s = gateway.config.engine.stale_after_s
    for state in gateway.states.values():
        entry = backends.get(state.name)
        if not isinstance(entry, dict) or entry.get("identity") != list(state.config.identity()):
            continue
        view = state.engine
        try:
            reading = _load(entry["reading"])
            at, failure = float(entry["at"]), entry["failure"]
        except (KeyError, TypeError, ValueError):
            continue   # not this version's shape (a worker of another release): ignored
        if reading is not None and at != view.at:   # a new reading, not the one we have
            view.record(reading, at, stale_after_s, state.in_flight)
        if isinstance(failure, str):
            view.fail(failure)


def _dump(reading: EngineLoad | None) -> dict | None:
    if reading is None:
        return None
    models = reading.loaded_models
    return {"running": reading.running, "waiting": reading.waiting,
            "kv_usage": reading.kv_usage, "loaded": reading.loaded,
            "loaded_models": sorted(models) if models is not None else None,
            "finished": reading.finished, "latency_s": reading.latency_s,
            "queued_s": reading.queued_s, "slots": reading.slots}


def _load(data: dict | None) -> EngineLoad | None:
    if data is None:
        return None
    models = data["loaded_models"]
    return EngineLoad(running=_number(data["running"]), waiting=_number(data["waiting"]),
                      kv_usage=_number(data["kv_usage"]), loaded=data["loaded"],
                      loaded_models=frozenset(models) if models is not None else None,
                      finished=_number(data.get("finished")),
                      latency_s=_number(data.get("latency_s")),
                      queued_s=_number(data.get("queued_s")),
                      slots=_number(data.get("slots")))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
