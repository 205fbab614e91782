"""Reading a few gauges out of a Prometheus text answer, and folding their series into one value.

The text is parsed by prometheus-client's own parser. Before that, only the sample lines of
the wanted metric names are kept: a vLLM answer has thousands of histogram lines, and parsing
them all costs tens of milliseconds of event-loop time on every scrape, for four numbers. The
selection looks only at each line's metric name (what comes before `{`, a space or a tab);
labels and values are left to the parser. When no line is kept, the whole answer goes through
the parser, so an answer that is not Prometheus text at all is still told apart from one that
lacks the gauges (a fresh TGI renders a gauge only once it was first set).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Series = tuple[Mapping[str, str], float]


class PromTextError(ValueError):
    """The answer is not UTF-8 (`reason` "decode") or not Prometheus text ("format")."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def select(body: bytes, names: Iterable[str]) -> dict[str, list[Series]]:
    """Every series of the named metrics, by name; a name with no series is absent.

    Values that are not finite or are negative say nothing about load (a gauge that was never
    set, a counter gone wrong): such series are dropped rather than read as a number.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromTextError("decode", f"not UTF-8: {exc}") from None
    wanted = frozenset(names)
    kept = [line for line in _lines(text) if _metric_name(line) in wanted]
    found: dict[str, list[Series]] = {}
    for name, labels, value in _parse("\n".join(kept) + "\n" if kept else text):
        if name in wanted and math.isfinite(value) and value >= 0:
            found.setdefault(name, []).append((labels, value))
    return found


def _lines(text: str) -> Iterable[str]:
    # Split on "\n" only: str.splitlines() would also split on characters a label value may hold.
    return (line.strip() for line in text.split("\n"))


def _metric_name(line: str) -> str:
    if not line or line.startswith("#"):
        return ""
    for i, char in enumerate(line):
        if char in "{ \t":
            return line[:i]
    return line


def _parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    try:
        return [(s.name, s.labels, float(s.value))
                for family in text_string_to_metric_families(text) for s in family.samples]
    except Exception as exc:  # noqa: BLE001 - the parser's errors on garbage are not all ValueError
        raise PromTextError("format", f"not Prometheus text: {_brief(exc)}") from None


def _brief(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def first(found: Mapping[str, list[Series]], *names: str) -> list[Series]:
    """The series of the first name that has any: runtimes renamed gauges, newest name first."""
    for name in names:
        if found.get(name):
            return found[name]
    return []


def total(series: Iterable[Series], replicas: frozenset[str] = frozenset()) -> float | None:
    """Sum of the series (data-parallel ranks, several models); None when there are none.

    Series that differ only in `replicas` labels are one count reported by several ranks of
    the same group (tensor- or pipeline-parallel ranks hold the same requests): each such
    group counts once, with its largest report.
    """
    groups: dict[frozenset[tuple[str, str]], float] = {}
    for labels, value in series:
        key = frozenset((k, v) for k, v in labels.items() if k not in replicas)
        groups[key] = max(value, groups.get(key, value))
    return float(sum(groups.values())) if groups else None


def peak(series: Iterable[Series]) -> float | None:
    """The largest value (the fullest KV cache of several ranks); None when there are none."""
    values = [value for _, value in series]
    return float(max(values)) if values else None
