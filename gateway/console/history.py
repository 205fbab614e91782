"""The console's 15 minutes: requests/s, error rate and TTFT p50 per backend.

Nothing is done per request: every `STEP_S` the counters the metrics already keep
(`gateway_requests_total` by status, the `gateway_time_to_first_token_seconds` buckets)
are read, and the change since the last read becomes one point per backend. The ring
holds `POINTS` points (15 minutes): POINTS × backends × 3 numbers, about 450 KiB for
20 backends with traffic on each (`python -m bench.console` measures it), and no more
however long the gateway runs.

An error is an answer with status 5xx; TTFT is measured on streams (as in the metrics),
and its p50 is interpolated within the histogram's buckets as Prometheus'
`histogram_quantile` does.
"""

from __future__ import annotations

import glob
import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from ..metrics import TTFT_BUCKETS, Metrics

STEP_S = 5.0
POINTS = 180   # 15 minutes of STEP_S
BOUNDS = (*TTFT_BUCKETS, math.inf)


@dataclass
class Counts:
    """One backend's cumulative counters at one reading."""
    requests: float = 0.0
    errors: float = 0.0
    ttft: list[float] = field(default_factory=lambda: [0.0] * len(BOUNDS))


def read_counts(metrics: Metrics) -> dict[str, Counts]:
    """Every backend's counters now; under --workers the whole server's (every worker's
    files, as a scrape sums them)."""
    counts: dict[str, Counts] = {}
    for family in _families(metrics):
        for sample in family.samples:
            backend = sample.labels.get("backend")
            if not backend:
                continue   # refused before any backend was chosen
            c = counts.get(backend)
            if c is None:
                c = counts[backend] = Counts()
            if sample.name == "gateway_requests_total":
                c.requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    c.errors += sample.value
            elif sample.name == "gateway_time_to_first_token_seconds_bucket":
                c.ttft[BOUNDS.index(float(sample.labels["le"]))] += sample.value
    return counts


def _families(metrics: Metrics) -> Iterable[Any]:
    if not metrics.multiprocess_dir:
        return [*metrics.requests.collect(), *metrics.ttft.collect()]
    from prometheus_client.multiprocess import MultiProcessCollector
    files = [path for kind in ("counter", "histogram")
             for path in glob.glob(os.path.join(metrics.multiprocess_dir, f"{kind}_*.db"))]
    wanted = ("gateway_requests", "gateway_time_to_first_token_seconds")
    return [f for f in MultiProcessCollector.merge(files, accumulate=True) if f.name in wanted]


def p50(buckets: list[float]) -> float | None:
    """The median within cumulative histogram buckets; None without observations."""
    total = buckets[-1]
    if total <= 0:
        return None
    rank = total / 2
    below, lower = 0.0, 0.0
    for bound, count in zip(BOUNDS, buckets):
        if count >= rank:
            if math.isinf(bound):
                return lower   # past the last finite bucket: its bound, as Prometheus does
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1)
        below, lower = count, bound
    return lower


class History:
    """The ring of points; `add` takes a reading, `to_dict` gives the series."""

    def __init__(self, step_s: float = STEP_S, points: int = POINTS) -> None:
        self.step_s = step_s
        # Each point: (wall time, {backend: (requests/s, error rate, ttft p50)}).
        self.points: deque[tuple[float, dict[str, tuple]]] = deque(maxlen=points)
        self._last: tuple[float, dict[str, Counts]] | None = None
        self.version = 0   # bumped at each new point: the page asks again only then
        self._json: tuple[tuple, bytes] | None = None

    def add(self, at: float, counts: dict[str, Counts]) -> None:
        last, self._last = self._last, (at, counts)
        if last is None or at <= last[0]:
            return
        span = at - last[0]
        point = {}
        for backend, now in counts.items():
            before = last[1].get(backend, Counts())
            requests = max(0.0, now.requests - before.requests)
            errors = min(requests, max(0.0, now.errors - before.errors))
            ttft = [max(0.0, a - b) for a, b in zip(now.ttft, before.ttft)]
            median = p50(ttft)
            point[backend] = (round(requests / span, 3),
                              round(errors / requests, 4) if requests else None,
                              round(median, 4) if median is not None else None)
        self.points.append((at, point))
        self.version += 1

    def load(self, points: list) -> None:
        """Points another worker published (the leader's ring), replacing these."""
        self.points = deque(((at, {b: tuple(v) for b, v in point.items()})
                             for at, point in points), maxlen=self.points.maxlen)
        self.version += 1

    def dump(self) -> list:
        return [[at, point] for at, point in self.points]

    def to_json(self, backends: Iterable[str]) -> bytes:
        """`to_dict` as JSON, made once per new point (the page asks every 2 s)."""
        key = (self.version, tuple(backends))
        if self._json is None or self._json[0] != key:
            self._json = (key, orjson.dumps(self.to_dict(key[1])))
        return self._json[1]

    def to_dict(self, backends: Iterable[str]) -> dict[str, Any]:
        """The series per backend, aligned on `t` (null where nothing was measured)."""
        times = [round(at, 3) for at, _ in self.points]
        series = {}
        for name in backends:
            values = [point.get(name, (0.0, None, None)) for _, point in self.points]
            series[name] = {"rps": [v[0] for v in values],
                            "error_rate": [v[1] for v in values],
                            "ttft_p50_s": [v[2] for v in values]}
        return {"step_s": self.step_s, "t": times, "backends": series}
