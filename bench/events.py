"""The gateway's CPU per streamed Responses event, next to its CPU per chat chunk.

    python -m bench.events            # about a minute
    python -m bench.events --quick    # about 20 s

Starts one fake runtime (bench/fake_runtime/, which streams both chat chunks and the
Responses API's named events) and `gateway serve` with one worker in front of it, the
runtime as a `kind: vllm` backend whose public name maps to another runtime id, so
model names (and, for Responses, response ids) are rewritten on every event. Then it
runs rounds of concurrent streams, chat and Responses in turn with the same number of
tokens, and measures the gateway's CPU (utime+stime from /proc) around each round.
The figure is CPU per event the client received; the target is Responses within 1.2x
of chat. Prints a table; writes bench/results/events.json. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):      # run as a file: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen  # noqa: E402
from bench.procs import Proc, cpu_seconds, free_port  # noqa: E402
from bench.report import publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "events.json"
RUNTIME_MODEL = "meta-llama/Bench-8B-Instruct"
TARGET_RATIO = 1.2
PARAMS = {
    "default": {"rounds": 4, "streams": 400, "conc": 100, "tokens": 64, "chunk_ms": 10},
    "quick": {"rounds": 2, "streams": 150, "conc": 50, "tokens": 48, "chunk_ms": 10},
}
KINDS = {
    "chat": ("/v1/chat/completions", None),
    "responses": ("/v1/responses", b"event: response.completed"),
}


def gateway_config(runtime_port: int) -> str:
    return ("server: {host: 127.0.0.1, port: 8080, drain_s: 5}\nbackends:\n"
            f"  rt:\n    kind: vllm\n    url: http://127.0.0.1:{runtime_port}/v1\n"
            f"    models: {{bench: {RUNTIME_MODEL}}}\n")


def body(kind: str, tokens: int) -> dict:
    if kind == "chat":
        return {"model": "bench", "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": "Say something short."}]}
    return {"model": "bench", "stream": True, "max_output_tokens": tokens,
            "input": "Say something short."}


async def measure(gateway: Proc, port: int, p: dict) -> dict:
    """Alternating rounds of each kind; per round, gateway CPU per received event."""
    rounds: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(p["rounds"]):
        for kind, (path, done) in KINDS.items():
            before = cpu_seconds(gateway.pid)
            r = await loadgen.streams(f"http://127.0.0.1:{port}{path}", body(kind, p["tokens"]),
                                      p["streams"], p["conc"], 0.5, 120, done=done)
            cpu = cpu_seconds(gateway.pid) - before
            rounds[kind].append({"streams": r.streams, "completed": r.completed,
                                 "errors": r.errors, "events": r.events,
                                 "cpu_s": round(cpu, 3),
                                 "cpu_us_per_event": 1e6 * cpu / r.events if r.events else None})
    out: dict = {"rounds": rounds}
    for kind, runs in rounds.items():
        per = [r["cpu_us_per_event"] for r in runs if r["cpu_us_per_event"]]
        out[kind] = {"cpu_us_per_event": statistics.median(per) if per else None,
                     "events_per_stream": runs[0]["events"] / max(1, runs[0]["completed"]),
                     "errors": sum(r["errors"] for r in runs),
                     "incomplete": sum(r["streams"] - r["completed"] for r in runs)}
    ratios = [b["cpu_us_per_event"] / a["cpu_us_per_event"]
              for a, b in zip(rounds["chat"], rounds["responses"])
              if a["cpu_us_per_event"] and b["cpu_us_per_event"]]
    out["ratio_per_round"] = [round(x, 3) for x in ratios]
    out["ratio"] = round(statistics.median(ratios), 3) if ratios else None
    out["within_target"] = out["ratio"] is not None and out["ratio"] <= TARGET_RATIO
    return out


def render(doc: dict) -> str:
    lines = [f"{'stream':<10} {'CPU us/event':>13} {'events/stream':>14} {'errors':>7}"]
    for kind in KINDS:
        r = doc[kind]
        lines.append(f"{kind:<10} {r['cpu_us_per_event']:>13.1f} "
                     f"{r['events_per_stream']:>14.1f} {r['errors'] + r['incomplete']:>7}")
    verdict = "within" if doc["within_target"] else "NOT within"
    lines.append(f"Responses / chat: {doc['ratio']} per event (rounds: "
                 f"{doc['ratio_per_round']}), {verdict} the {TARGET_RATIO}x target")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    p = dict(PARAMS["quick" if args.quick else "default"])
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        procs: list[Proc] = []
        try:
            rt_port, gw_port = free_port(), free_port()
            runtime = Proc("runtime", [sys.executable, "-m", "bench.fake_runtime", "--port",
                                       str(rt_port), "--chunk-ms", str(p["chunk_ms"])],
                           Path(tmp) / "runtime.log", cwd=str(ROOT)).start()
            procs.append(runtime)
            config = Path(tmp) / "gateway.yaml"
            config.write_text(gateway_config(rt_port))
            gateway = Proc("gateway", [sys.executable, "-m", "gateway", "serve", "--config",
                                       str(config), "--port", str(gw_port)],
                           Path(tmp) / "gateway.log", cwd=str(ROOT)).start()
            procs.append(gateway)
            runtime.wait_ready(f"http://127.0.0.1:{rt_port}/health", 20)
            gateway.wait_ready(f"http://127.0.0.1:{gw_port}/ready", 30)
            doc = {"params": p, **asyncio.run(measure(gateway, gw_port, p))}
        finally:
            for proc in reversed(procs):
                proc.stop()
    return publish(doc, args.out, render(doc))


if __name__ == "__main__":
    sys.exit(main())
