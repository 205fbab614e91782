"""The speed benchmark's table and its verdicts against the targets, from speed.json's data;
`publish`, how every benchmark leaves its results."""

from __future__ import annotations

import json
from pathlib import Path

ORDER = ("direct", "bare", "base", "gateway", "traced", "gateway2", "gateway_sup", "litellm")


def _get(doc: dict, target: str, *path: str):
    value = doc["targets"].get(target)
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def verdicts(doc: dict) -> list[dict]:
    """Each target of the speed issue: the measured figure, the goal, and whether it is met."""
    gw = lambda *p: _get(doc, "gateway", *p)         # noqa: E731
    bare = lambda *p: _get(doc, "bare", *p)          # noqa: E731
    out = []

    def add(name, value, goal, ok):
        met = None if value is None else ok(value)
        out.append({"target": name, "value": value, "goal": goal,
                    "met": None if met is None else bool(met)})

    add("gateway CPU per request / bare proxy's",
        _ratio(gw("saturation", "cpu_s_per_1k"), bare("saturation", "cpu_s_per_1k")),
        "<= 1.5", lambda v: v <= 1.5)
    add("gateway CPU per streamed chunk / bare proxy's",
        _ratio(gw("streams", "cpu_s_per_1k_chunks"), bare("streams", "cpu_s_per_1k_chunks")),
        "<= 1.5", lambda v: v <= 1.5)
    add("gateway throughput / LiteLLM's",
        _ratio(gw("saturation", "rps"), _get(doc, "litellm", "saturation", "rps")),
        ">= 10", lambda v: v >= 10)
    add("added p50 latency at 100 req/s (ms)", gw("paced", "added_p50_ms"),
        "<= 1", lambda v: v <= 1)
    gw_added, bare_added = gw("paced", "added_p50_ms"), bare("paced", "added_p50_ms")
    add("  of which over the bare proxy's (ms)",
        gw_added - bare_added if gw_added is not None and bare_added is not None else None,
        "(info)", lambda v: None)
    many = gw("many_2000")
    add("2,000 concurrent streams: events lost, failed streams",
        None if many is None else [many["lost"], many["errors"]], "0, 0",
        lambda v: v == [0, 0])
    add("throughput with 2 workers / 1 worker",
        _ratio(_get(doc, "gateway2", "saturation", "rps"), gw("saturation", "rps")),
        ">= 1.8", lambda v: v >= 1.8)
    add("CPU per request, 1 supervised worker (multiprocess metrics) / 1 process",
        _ratio(_get(doc, "gateway_sup", "saturation", "cpu_s_per_1k"),
               gw("saturation", "cpu_s_per_1k")),
        "<= 1.1", lambda v: v <= 1.1)
    if "base" in doc["targets"]:
        add("gateway CPU per request / the baseline checkout's",
            _ratio(gw("saturation", "cpu_s_per_1k"), _get(doc, "base", "saturation", "cpu_s_per_1k")),
            "near 1 (info)", lambda v: None)
    if "traced" in doc["targets"]:
        traced = lambda *p: _get(doc, "traced", *p)   # noqa: E731
        add("traced (sample ratio 1.0) CPU per request / gateway's",
            _ratio(traced("saturation", "cpu_s_per_1k"), gw("saturation", "cpu_s_per_1k")),
            "<= 1.25", lambda v: v <= 1.25)
        add("traced CPU per streamed chunk / gateway's",
            _ratio(traced("streams", "cpu_s_per_1k_chunks"), gw("streams", "cpu_s_per_1k_chunks")),
            "(info)", lambda v: None)
    return out


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(doc: dict) -> str:
    names = [n for n in ORDER if n in doc["targets"]]
    p = doc["params"]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, *path: str, digits: int = 2, fn=None) -> None:
        cells = []
        for n in names:
            v = _get(doc, n, *path)
            cells.append(_fmt(fn(v) if fn and v is not None else v, digits))
        if any(c != "-" for c in cells):
            rows.append((label, cells))

    def heading(text: str) -> None:
        rows.append((text, [""] * len(names)))

    heading(f"non-streaming, wrk {p['sat_conns']} conns, best of {p['sat_rounds']}")
    row("  requests/s", "saturation", "rps")
    row("  errors", "saturation", "errors")
    row("  CPU s per 1,000 requests", "saturation", "cpu_s_per_1k", digits=3)
    row("  cores used by the proxy", "saturation", "rounds",
        fn=lambda r: max((x["cores_used"] for x in r if x["cores_used"] is not None),
                         default=None))
    row("  CPU s per process (last round)", "saturation", "rounds",
        fn=lambda r: "/".join(f"{c:.1f}" for c in r[-1]["cpu_s_per_process"])
        if len(r[-1]["cpu_s_per_process"]) > 1 else None)
    row("  latency p50 ms (wrk)", "saturation", "rounds", fn=lambda r: r[-1]["p50_ms"])
    heading(f"paced {p['paced_rate']} req/s, open loop, {p['paced_s']} s per target "
            f"in {p['paced_rounds']} interleaved rounds")
    row("  latency p50 ms", "paced", "p50_ms", digits=3)
    row("  latency p99 ms", "paced", "p99_ms", digits=3)
    row("  added p50 ms", "paced", "added_p50_ms", digits=3)
    row("  added p99 ms", "paced", "added_p99_ms", digits=3)
    row("  errors", "paced", "errors")
    heading(f"streams: {p['stream_conc']} concurrent, {p['stream_total']} x "
            f"{p['stream_tokens']} tokens, 20 ms apart (LiteLLM: {p['stream_conc']})")
    row("  TTFT p50 ms", "streams", "ttft_p50_ms")
    row("  TTFT p99 ms", "streams", "ttft_p99_ms")
    row("  added TTFT p50 ms", "streams", "added_ttft_p50_ms")
    row("  added TTFT p99 ms", "streams", "added_ttft_p99_ms")
    row("  events received", "streams", "events_received")
    row("  events lost (sent - received)", "streams", "lost")
    row("  failed streams", "streams", "errors")
    row("  CPU s per 1,000 chunks", "streams", "cpu_s_per_1k_chunks", digits=3)
    for size in p["many_sizes"]:
        key = f"many_{size}"
        heading(f"{size:,} concurrent streams x {p['many_tokens']} tokens, 500 ms apart")
        row("  peak streams open at once", key, "peak_open")
        row("  completed", key, "completed")
        row("  events lost (sent - received)", key, "lost")
        row("  failed streams", key, "errors")
        row("  TTFT p99 ms", key, "ttft_p99_ms")
        row("  RSS before MB", key, "rss_before_mb", digits=1)
        row("  peak RSS MB (sampled)", key, "rss_peak_mb", digits=1)
        row("  CPU s per 1,000 chunks", key, "cpu_s_per_1k_chunks", digits=3)

    header = ["", *(doc["targets"][n]["label"] for n in names)]
    width0 = max(len(r[0]) for r in rows + [("", [])])
    widths = [max(len(header[i + 1]), *(len(r[1][i]) for r in rows)) for i in range(len(names))]
    lines = ["  ".join([header[0].ljust(width0)] + [h.rjust(w) for h, w in
                                                     zip(header[1:], widths)])]
    lines.append("-" * len(lines[0]))
    for label, cells in rows:
        lines.append("  ".join([label.ljust(width0)] + [c.rjust(w) for c, w in
                                                        zip(cells, widths)]))
    lines.append("")
    lines.append("targets (ratios from this one run):")
    for v in doc["verdicts"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[v["met"]]
        if v["goal"].endswith("(info)") and v["value"] is not None:
            mark = "info"
        value = v["value"]
        shown = _fmt(value, 3) if not isinstance(value, list) else ", ".join(map(str, value))
        lines.append(f"  {v['target']}: {shown} (goal {v['goal']}) -> {mark}")
    if doc.get("otlp_sink"):
        sink = doc["otlp_sink"]
        lines.append(f"otlp sink: {sink['spans']:,} spans received in {sink['exports']:,} exports")
    for note in doc.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"machine: {doc['machine']['cpus']} CPUs, load average before "
                 f"{doc['machine']['load_avg_before'][0]:.2f}, after "
                 f"{doc['machine']['load_avg_after'][0]:.2f}; total {doc['total_s']} s")
    return "\n".join(lines)


def publish(doc: dict, out: str | Path, table: str) -> int:
    """Write a benchmark's results as JSON to `out` and show its table (and its run time,
    when the results have one); the exit status."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    took = f" ({doc['total_s']} s)" if "total_s" in doc else ""
    print(table)
    print(f"\nwrote {path}{took}")
    return 0
