"""Routing strategies on two runtimes of unequal speed: p99 latency and throughput.

Two fake runtimes (`bench/fake_runtime/` with its `slots` switch, one process each), each
serving at most `slots` requests at once and queueing the rest, as a runtime with a fixed
batch size does; `slow` is 3x slower than `fast` in time to first token and per token. Both report their
real running and waiting counts on a vLLM-format `/metrics`. In front of them,
`gateway serve` (one worker), started afresh for each strategy so no average or count
carries over:

    weighted              weights 1:1, smooth round-robin
    least_busy (gateway)  the same runtimes as `kind: openai`, a kind that exposes nothing:
                          the gateway's own in-flight count only (there is no switch that
                          turns scraping off for a kind that has metrics)
    least_busy (engine)   `kind: vllm`: in-flight blended with the runtimes' own counts
    least_latency         `kind: vllm`: power of two choices on the predicted time to
                          answer (service time x queue factor of the runtime's batch)
    prefix_affinity       `kind: vllm`: every request has one prompt, so one key: its ring
                          owner up to the load bound (c = 1.25), the spill on the next
    session_affinity      `kind: vllm`: no session is sent, so least_busy on the blend

A closed loop of `concurrency` clients sends `requests` streamed chat requests in all;
latency is end to end (request sent to `[DONE]` read). Three scenarios:

    alone     the gateway's clients are the runtimes' only clients
    shared    another client, not behind the gateway, keeps `outside` streams going
              straight to `fast` all the while: only the runtime's own counts show it
    replicas  two gateway replicas (two `gateway serve` processes, one config) in front
              of the same runtimes, the clients split between them as a load balancer
              would; each replica counts only its own requests in flight, the runtimes'
              readings show both

Ratios are each strategy's figure over weighted's in the same scenario. Every loop is
bounded by a count and a deadline; only 127.0.0.1 is addressed.

    python -m bench.unequal [--requests N] [--scenarios alone,shared,replicas]
                            [--max-queue N] [--out PATH]

Writes bench/results/unequal.json and prints a table (about 6 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from .loadgen import percentile
from .report import publish
from .procs import Proc, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "unequal.json"
PUBLIC = "bench-unequal"
ADMIN_KEY = "bench-unequal-admin"
RUNTIMES = {"fast": (30.0, 6.0), "slow": (90.0, 18.0)}     # (TTFT ms, ms per token)
PARAMS = {"requests": 320, "concurrency": 16, "tokens": 24, "slots": 4, "outside": 4,
          "deadline_s": 120}
# (label, strategy, backend kind)
RUNS = (("weighted", "weighted", "vllm"),
        ("least_busy (gateway)", "least_busy", "openai"),
        ("least_busy (engine)", "least_busy", "vllm"),
        ("least_latency", "least_latency", "vllm"),
        ("prefix_affinity", "prefix_affinity", "vllm"),
        ("session_affinity", "session_affinity", "vllm"))
# scenario: (runtime straight to fast from another client, gateway replicas)
SCENARIOS = {"alone": (False, 1), "shared": (True, 1), "replicas": (False, 2)}


@dataclass
class Load:
    """What one strategy's run gave: per request latency, TTFT, and backend."""
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)
    outside_done: int = 0

    def summary(self) -> dict:
        ms = lambda v: None if v is None else round(v * 1000, 1)   # noqa: E731
        return {"ok": self.ok, "errors": self.errors, "wall_s": round(self.wall_s, 2),
                "rps": round(self.ok / self.wall_s, 2) if self.wall_s else None,
                "p50_ms": ms(percentile(self.latencies, 50)),
                "p99_ms": ms(percentile(self.latencies, 99)),
                "ttft_p50_ms": ms(percentile(self.ttfts, 50)),
                "ttft_p99_ms": ms(percentile(self.ttfts, 99)),
                "backends": dict(sorted(self.backends.items())),
                "outside_done": self.outside_done}


def gateway_config(urls: dict[str, str], strategy: str, kind: str,
                   max_queue: int | None = None) -> str:
    lines = ["server: {host: 127.0.0.1, port: 8080, drain_s: 2, "
             f"admin_key: {ADMIN_KEY}}}", "backends:"]
    if max_queue is not None:
        lines.insert(0, f"engine: {{max_queue: {max_queue}}}")
    for name, url in urls.items():
        lines += [f"  {name}:", f"    kind: {kind}", f"    url: {url}/v1",
                  f"    models: {{{PUBLIC}: fake-model}}"]
    lines += ["routes:", f"  {PUBLIC}: {{strategy: {strategy}}}",
              "health: {interval_s: 10, timeout_s: 2, unhealthy_after: 3, healthy_after: 1}",
              "retries: {attempts: 0}"]
    return "\n".join(lines) + "\n"


async def stream_once(session: aiohttp.ClientSession, url: str, payload: bytes,
                      load: Load | None) -> bool:
    """One streamed chat; its latency, TTFT and backend go into `load` (None: not kept)."""
    sent = time.perf_counter()
    ttft = None
    tail = b""
    try:
        async with session.post(url, data=payload,
                                headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                await resp.read()
                if load is not None:
                    load.errors += 1
                return False
            async for data in resp.content.iter_any():
                if ttft is None:
                    ttft = time.perf_counter() - sent
                tail = (tail + data)[-32:]
            backend = resp.headers.get("X-Gateway-Backend", "?")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        if load is not None:
            load.errors += 1
        return False
    done = b"data: [DONE]" in tail
    if load is not None:
        if done:
            load.ok += 1
            load.latencies.append(time.perf_counter() - sent)
            load.ttfts.append(ttft)
            load.backends[backend] = load.backends.get(backend, 0) + 1
        else:
            load.errors += 1
    return done


async def drive(gateway_urls: list[str], outside_url: str | None, p: dict) -> Load:
    """`requests` streams through the gateways from `concurrency` clients in a closed loop
    (client i always to gateway i mod n); with `outside_url`, `outside` more streams go
    straight there until they are done."""
    load = Load()
    body = {"model": PUBLIC, "stream": True, "max_tokens": p["tokens"],
            "messages": [{"role": "user", "content": "Say something."}]}
    payload = orjson.dumps(body)
    direct = orjson.dumps({**body, "model": "fake-model"})
    loop = asyncio.get_running_loop()
    end_by = loop.time() + p["deadline_s"]
    left = p["requests"]
    finished = asyncio.Event()

    async def client(gateway_url: str) -> None:
        nonlocal left
        while left > 0 and loop.time() < end_by:
            left -= 1
            await stream_once(session, gateway_url, payload, load)

    async def other() -> None:
        while not finished.is_set() and loop.time() < end_by:
            if await stream_once(session, outside_url, direct, None):
                load.outside_done += 1
            else:
                await asyncio.sleep(0.05)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        others = [asyncio.create_task(other()) for _ in range(p["outside"] if outside_url
                                                               else 0)]
        if others:
            await asyncio.sleep(0.5)          # the other client's load is there first
        started = loop.time()
        await asyncio.gather(*(client(gateway_urls[i % len(gateway_urls)])
                               for i in range(p["concurrency"])))
        load.wall_s = loop.time() - started
        finished.set()
        await asyncio.wait_for(asyncio.gather(*others), 30)
    return load


async def wait_engine_fresh(port: int, deadline_s: float = 10) -> None:
    """An engine-aware run starts once the gateway has a reading of both runtimes."""
    url = f"http://127.0.0.1:{port}/admin/backends"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(int(deadline_s / 0.1)):
            async with session.get(url, headers=headers) as resp:
                rows = (await resp.json())["backends"]
            if all(r["engine"] and r["engine"]["fresh"] for r in rows):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway has no fresh engine reading of the runtimes")


async def runtime_idle(urls: dict[str, str], deadline_s: float = 30) -> None:
    """Between runs: nothing left running or waiting in either runtime."""
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    async with aiohttp.ClientSession() as session:
        for _ in range(int(deadline_s / 0.1)):
            busy = 0.0
            for url in urls.values():
                async with session.get(url + "/metrics") as resp:
                    text = await resp.text()
                busy += sum(s.value for f in text_string_to_metric_families(text)
                            for s in f.samples if s.name in names)
            if busy == 0:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the runtimes did not go idle between runs")


def run_one(tmp: Path, urls: dict[str, str], label: str, strategy: str, kind: str,
            outside: str | None, replicas: int, p: dict) -> dict:
    config = tmp / "gateway.yaml"
    config.write_text(gateway_config(urls, strategy, kind, p.get("max_queue")))
    procs, ports = [], []
    try:
        for i in range(replicas):
            port = free_port()
            ports.append(port)
            procs.append(Proc(f"gateway-{i}", [sys.executable, "-m", "gateway", "serve",
                                               "--config", str(config), "--port", str(port)],
                              tmp / f"gateway-{strategy}-{kind}-{i}.log",
                              cwd=str(ROOT)).start())
        for proc, port in zip(procs, ports):
            proc.wait_ready(f"http://127.0.0.1:{port}/ready", 30)
            if kind == "vllm":
                asyncio.run(wait_engine_fresh(port))
        load = asyncio.run(drive([f"http://127.0.0.1:{port}/v1/chat/completions"
                                  for port in ports], outside, p))
    finally:
        for proc in procs:
            proc.stop()
    asyncio.run(runtime_idle(urls))
    return {"label": label, "strategy": strategy, "kind": kind, **load.summary()}


def ratios(rows: list[dict]) -> None:
    """Each row's p99 and throughput over the first row's (weighted)."""
    base = rows[0]
    for row in rows:
        row["p99_vs_weighted"] = (round(row["p99_ms"] / base["p99_ms"], 3)
                                  if row["p99_ms"] and base["p99_ms"] else None)
        row["rps_vs_weighted"] = (round(row["rps"] / base["rps"], 3)
                                  if row["rps"] and base["rps"] else None)


def verdicts(scenarios: dict[str, list[dict]]) -> list[tuple[str, float | None, str, bool]]:
    """The issue's targets for least_latency, per scenario: (what, value, goal, met)."""
    out = []
    for name, rows in scenarios.items():
        by = {r["label"]: r for r in rows}
        ll = by.get("least_latency")
        if ll is None or not ll["p99_ms"]:
            continue
        if name == "alone":
            value = ll["p99_vs_weighted"]
            out.append((f"{name}: least_latency p99 / weighted's", value, "<= 0.75",
                        value is not None and value <= 0.75))
        best = min(r["p99_ms"] for r in rows if r["p99_ms"])
        value = round(ll["p99_ms"] / best, 3)
        out.append((f"{name}: least_latency p99 / the best strategy's", value, "<= 1.05",
                    value <= 1.05))
        busy = max(by[k]["rps"] for k in ("least_busy (gateway)", "least_busy (engine)")
                   if k in by and by[k]["rps"])
        value = round(ll["rps"] / busy, 3)
        out.append((f"{name}: least_latency req/s / least_busy's (the better of the two)",
                    value, ">= 1", value >= 1))
        if name == "replicas" and "least_busy (gateway)" in by:
            gateway_only = by["least_busy (gateway)"]["p99_ms"]
            for label in ("least_busy (engine)", "least_latency"):
                if label in by:
                    value = round(by[label]["p99_ms"] / gateway_only, 3)
                    out.append((f"{name}: {label} p99 / least_busy (gateway)'s", value,
                                "< 1", value < 1))
    return out


def render(doc: dict) -> str:
    p = doc["params"]
    out = [f"{p['requests']} streamed requests, {p['concurrency']} clients in a closed loop, "
           f"{p['tokens']} tokens each; each runtime serves {p['slots']} at once",
           "fast: TTFT {:g} ms, {:g} ms/token; slow: TTFT {:g} ms, {:g} ms/token".format(
               *RUNTIMES["fast"], *RUNTIMES["slow"]),
           f"engine.max_queue: {p['max_queue'] if p.get('max_queue') is not None else 8}"]
    head = (f"{'strategy':<22}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'TTFT p99':>9}"
            f"{'on slow':>8}{'errors':>7}{'p99/w':>7}{'rps/w':>7}")
    for name, rows in doc["scenarios"].items():
        extra = {"shared": f" (+{p['outside']} streams straight to fast, not via the "
                           "gateway)",
                 "replicas": " (2 gateway replicas, half the clients each)"}.get(name, "")
        out += ["", f"scenario {name}{extra}", head, "-" * len(head)]
        for r in rows:
            slow = r["backends"].get("slow", 0) / r["ok"] if r["ok"] else 0
            out.append(f"{r['label']:<22}{r['rps']:>7.1f}{r['p50_ms']:>8.0f}"
                       f"{r['p99_ms']:>8.0f}{r['ttft_p99_ms']:>9.0f}{slow:>8.2f}"
                       f"{r['errors']:>7}{r['p99_vs_weighted']:>7.2f}"
                       f"{r['rps_vs_weighted']:>7.2f}")
    out += ["", "targets (ratios from this one run):"]
    for what, value, goal, met in verdicts(doc["scenarios"]):
        out.append(f"  {what}: {value} (goal {goal}) -> {'met' if met else 'NOT met'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=PARAMS["requests"])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--max-queue", type=int, default=None,
                        help="engine.max_queue of the gateway (default: the gateway's, 8)")
    parser.add_argument("--strategies", default=None,
                        help="only these rows (labels, comma-separated); weighted always runs "
                             "first, as the ratios' base")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    runs = [r for r in RUNS if args.strategies is None or r[0] == "weighted"
            or r[0] in args.strategies.split(",")]
    p = {**PARAMS, "requests": args.requests, "max_queue": args.max_queue}
    scenarios = [s for s in args.scenarios.split(",") if s in SCENARIOS]
    started = time.monotonic()
    load_before = os.getloadavg()
    doc: dict = {"params": p, "runtimes": RUNTIMES, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-unequal-") as tmp_name:
        tmp = Path(tmp_name)
        procs, urls = [], {}
        try:
            for name, (ttft, token) in RUNTIMES.items():
                port = free_port()
                switches = {"slots": p["slots"], "models": ["fake-model"]}
                procs.append(Proc(name, [sys.executable, "-m", "bench.fake_runtime",
                                         "--port", str(port), "--ttft-ms", str(ttft),
                                         "--chunk-ms", str(token),
                                         "--switches", json.dumps(switches)],
                                  tmp / f"{name}.log", cwd=str(ROOT)).start())
                urls[name] = f"http://127.0.0.1:{port}"
            for proc, url in zip(procs, urls.values()):
                proc.wait_ready(url + "/health", 20)
            for scenario in scenarios:
                shared, replicas = SCENARIOS[scenario]
                outside = urls["fast"] + "/v1/chat/completions" if shared else None
                rows = []
                for label, strategy, kind in runs:
                    print(f"{scenario}: {label}...", file=sys.stderr, flush=True)
                    rows.append(run_one(tmp, urls, label, strategy, kind, outside, replicas,
                                        p))
                ratios(rows)
                doc["scenarios"][scenario] = rows
        finally:
            for proc in procs:
                proc.stop()
    doc["machine"] = {"cpus": os.cpu_count(), "load_avg_before": load_before,
                      "load_avg_after": os.getloadavg()}
    doc["total_s"] = round(time.monotonic() - started, 1)
    return publish(doc, args.out, render(doc))


if __name__ == "__main__":
    sys.exit(main())
