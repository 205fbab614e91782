"""The gateway's CPU per streamed Anthropic Messages event, next to a chat chunk's.

Run from the repository root:

    python -m bench.messages_speed            # about half a minute
    python -m bench.messages_speed --quick

One fake runtime (bench/fake_runtime/, one event per token, 20 ms apart) serves chat
completions and /v1/messages; one `gateway serve` has it twice: as an SGLang backend
(chat only: Messages are translated) and as a vLLM backend (Messages passed through).
The same streams then run, in interleaved rounds, as

  chat        /v1/chat/completions          one `data:` chunk per token
  translated  /v1/messages -> chat          each chat chunk parsed and translated
  native      /v1/messages -> /v1/messages  Anthropic events relayed, model rewritten

and the gateway's CPU (utime+stime from /proc) is divided by the token events the client
received. The target (issue: within 1.2x of a chat chunk's) is the ratio printed last.
Writes bench/results/messages_speed.json. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):      # run as a file: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from bench.procs import Proc, cpu_seconds, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "messages_speed.json"
RUNTIME_MODEL = "meta-llama/Bench-8B-Instruct"
PROMPT = [{"role": "user", "content": "Say something short about benchmarks."}]
# (path, public model, what ends a stream, what marks an event that carries a token)
WORKLOADS = {
    "chat": ("/v1/chat/completions", "bench-chat", b"data: [DONE]", b'"content":"w'),
    "translated": ("/v1/messages", "bench-chat", b"event: message_stop",
                   b"event: content_block_delta"),
    "native": ("/v1/messages", "bench-native", b"event: message_stop",
               b"event: content_block_delta"),
}
PARAMS = {"default": {"streams": 400, "concurrency": 100, "tokens": 64, "rounds": 3},
          "quick": {"streams": 200, "concurrency": 100, "tokens": 32, "rounds": 2}}


def gateway_config(url: str) -> str:
    return "\n".join([
        "server: {host: 127.0.0.1, port: 8080, drain_s: 5}",
        "backends:",
        "  rt-chat:", "    kind: sglang", f"    url: {url}/v1",
        f"    models: {{bench-chat: {RUNTIME_MODEL}}}",
        "  rt-native:", "    kind: vllm", f"    url: {url}/v1",
        f"    models: {{bench-native: {RUNTIME_MODEL}}}",
        "health: {interval_s: 10, timeout_s: 2, unhealthy_after: 3, healthy_after: 2}", ""])


async def run_streams(base: str, workload: str, p: dict) -> dict:
    """`streams` streams, `concurrency` at once: token events, all events, completed."""
    path, model, end, token_mark = WORKLOADS[workload]
    body = {"model": model, "max_tokens": p["tokens"], "messages": PROMPT, "stream": True}
    payload = orjson.dumps(body)
    counts = {"token_events": 0, "events": 0, "completed": 0, "errors": 0}
    queue = list(range(p["streams"]))

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post(base + path, data=payload, headers={
                "Content-Type": "application/json"}) as resp:
            raw = await resp.read()
        if resp.status != 200 or end not in raw[-300:]:
            counts["errors"] += 1
            return
        counts["completed"] += 1
        counts["events"] += raw.count(b"\n\n")
        counts["token_events"] += raw.count(token_mark)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            queue.pop()
            try:
                await one(session)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["errors"] += 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.wait_for(asyncio.gather(
            *(worker(session) for _ in range(p["concurrency"]))), 300)
    return counts


async def measure(base: str, pid: int, p: dict) -> dict:
    totals = {w: {"cpu_s": 0.0, "token_events": 0, "events": 0, "completed": 0, "errors": 0}
              for w in WORKLOADS}
    await run_streams(base, "chat", {**p, "streams": p["concurrency"]})   # warm-up
    for _ in range(p["rounds"]):
        for workload in WORKLOADS:      # interleaved: drift on a shared machine hits all
            before = cpu_seconds(pid)
            counts = await run_streams(base, workload, p)
            totals[workload]["cpu_s"] += cpu_seconds(pid) - before
            for k, v in counts.items():
                totals[workload][k] += v
    for t in totals.values():
        t["cpu_us_per_token_event"] = (round(1e6 * t["cpu_s"] / t["token_events"], 2)
                                       if t["token_events"] else None)
        t["cpu_us_per_event"] = (round(1e6 * t["cpu_s"] / t["events"], 2)
                                 if t["events"] else None)
        t["cpu_s"] = round(t["cpu_s"], 3)
    chat = totals["chat"]["cpu_us_per_token_event"]
    for w in ("translated", "native"):
        mine = totals[w]["cpu_us_per_token_event"]
        totals[w]["ratio_to_chat"] = round(mine / chat, 3) if mine and chat else None
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    p = PARAMS["quick" if args.quick else "default"]
    procs: list[Proc] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-messages-") as tmp:
        try:
            rt_port, gw_port = free_port(), free_port()
            runtime = Proc("runtime", [sys.executable, "-m", "bench.fake_runtime", "--port",
                                       str(rt_port), "--chunk-ms", "20"],
                           Path(tmp) / "runtime.log", cwd=str(ROOT)).start()
            procs.append(runtime)
            runtime.wait_ready(f"http://127.0.0.1:{rt_port}/health", 20)
            config = Path(tmp) / "gateway.yaml"
            config.write_text(gateway_config(f"http://127.0.0.1:{rt_port}"))
            gateway = Proc("gateway", [sys.executable, "-m", "gateway", "serve", "--config",
                                       str(config), "--port", str(gw_port)],
                           Path(tmp) / "gateway.log", cwd=str(ROOT)).start()
            procs.append(gateway)
            base = f"http://127.0.0.1:{gw_port}"
            gateway.wait_ready(base + "/ready", 30)
            results = asyncio.run(measure(base, gateway.pid, p))
        finally:
            for proc in reversed(procs):
                proc.stop()
    doc = {"params": p, "total_s": round(time.monotonic() - started, 1), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'workload':<11} {'token events':>12} {'errors':>6} {'CPU s':>7} "
          f"{'us/token event':>14} {'us/event':>9} {'vs chat':>8}")
    for name, r in results.items():
        print(f"{name:<11} {r['token_events']:>12} {r['errors']:>6} {r['cpu_s']:>7} "
              f"{r['cpu_us_per_token_event']:>14} {r['cpu_us_per_event']:>9} "
              f"{r.get('ratio_to_chat', 1.0):>8}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
