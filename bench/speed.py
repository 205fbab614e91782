"""The gateway's speed, side by side with a direct call, a bare aiohttp proxy and LiteLLM.

Run from the repository root:

    python -m bench.speed            # a few minutes
    python -m bench.speed --quick    # about a minute

One run starts fake runtimes (bench/fake_runtime/), the bare pass-through proxy
(bench/bare_proxy.py), `gateway serve` with 1 and with 2 workers on a generated
config, and LiteLLM's proxy when it is installed; then measures each target in
turn on the same workloads:

  saturation   non-streaming chat with wrk: requests/s, errors, CPU per 1,000 requests
  paced        100 requests/s open loop: latency p50/p99 and what each proxy adds
  streams      many concurrent SSE streams: TTFT added, events lost, CPU per 1,000 chunks
  many         1,000 and 2,000 concurrent streams: zero lost events, peak RSS

CPU is utime+stime of each proxy's process tree from /proc, before and after each
workload: on a shared machine that figure holds where requests/s does not.
Prints a table; writes bench/results/speed.json. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):      # run as a file: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen  # noqa: E402
from bench.procs import Proc, cpu_by_pid, cpu_seconds, free_port, memory  # noqa: E402
from bench.report import publish, render, verdicts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "speed.json"
RUNTIME_MODEL = "meta-llama/Bench-8B-Instruct"     # what the runtimes know
MESSAGES = [{"role": "user", "content": "Say something short about benchmarks."}]

# Runtime profiles: (ttft_ms, chunk_ms). One fake runtime process per profile.
PROFILES = {"fast": (0, 0), "stream": (0, 20), "many": (0, 500)}

PARAMS = {
    "default": {
        "sat_rounds": 2, "sat_s": 6, "sat_warm_s": 2, "sat_conns": 64, "sat_tokens": 16,
        "paced_rate": 100, "paced_s": 10, "paced_warm_s": 1, "paced_rounds": 5,
        "stream_conc": 200, "stream_total": 600, "stream_tokens": 64,
        "many_tokens": 20, "many_ramp_s": 3, "many_sizes": [1000, 2000],
        "many_targets": ["direct", "bare", "gateway"], "deadline_s": 90,
    },
    "quick": {
        "sat_rounds": 1, "sat_s": 2, "sat_warm_s": 1, "sat_conns": 64, "sat_tokens": 16,
        "paced_rate": 100, "paced_s": 2, "paced_warm_s": 0.5, "paced_rounds": 2,
        "stream_conc": 100, "stream_total": 200, "stream_tokens": 32,
        "many_tokens": 10, "many_ramp_s": 2, "many_sizes": [1000, 2000],
        "many_targets": ["gateway"], "deadline_s": 45,
    },
}

SUPERVISED_ONE = """import sys
from gateway.cli import setup_logging
from gateway.config import load_config
from gateway.server.supervise import run
setup_logging()
sys.exit(run(load_config(sys.argv[1]), sys.argv[1], "127.0.0.1", int(sys.argv[2]), 1))
"""

WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,'
    .. '"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Target:
    name: str
    label: str
    proc: Proc | None                   # None for direct: no proxy in between
    urls: dict[str, str]                # runtime profile -> chat completions URL
    models: dict[str, str]              # runtime profile -> model name to send
    results: dict = field(default_factory=dict)

    def body(self, profile: str, tokens: int, stream: bool = False) -> dict:
        body = {"model": self.models[profile], "messages": MESSAGES, "max_tokens": tokens}
        if stream:
            body["stream"] = True
        return body

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else 0.0


class Bench:
    def __init__(self, p: dict, tmp: Path, litellm: str | None, workers: int,
                 tracing: bool = False, baseline: str | None = None) -> None:
        self.p = p
        self.tracing = tracing
        self.baseline = baseline
        self.tmp = tmp
        self.litellm = litellm
        self.workers = workers
        self.procs: list[Proc] = []
        self.runtimes: dict[str, tuple[Proc, int]] = {}
        self.targets: dict[str, Target] = {}
        self.notes: list[str] = []

    # -- processes ---------------------------------------------------------------

    def start(self) -> None:
        for profile, (ttft, chunk) in PROFILES.items():
            port = free_port()
            proc = self._spawn(f"runtime-{profile}", [
                sys.executable, "-m", "bench.fake_runtime", "--port", str(port),
                "--ttft-ms", str(ttft), "--chunk-ms", str(chunk)])
            self.runtimes[profile] = (proc, port)
        for proc, port in self.runtimes.values():
            proc.wait_ready(f"http://127.0.0.1:{port}/health", 20)
        rt_url = {k: f"http://127.0.0.1:{port}" for k, (_, port) in self.runtimes.items()}
        same = {k: RUNTIME_MODEL for k in PROFILES}
        public = {k: f"bench-{k}" for k in PROFILES}
        self.targets["direct"] = Target(
            "direct", "direct", None,
            {k: f"{u}/v1/chat/completions" for k, u in rt_url.items()}, same)

        port = free_port()
        bare = self._spawn("bare", [sys.executable, "-m", "bench.bare_proxy", "--port",
                                    str(port)] + [f"--upstream={k}={u}"
                                                  for k, u in rt_url.items()])
        self.targets["bare"] = Target(
            "bare", "bare proxy", bare,
            {k: f"http://127.0.0.1:{port}/{k}/v1/chat/completions" for k in PROFILES}, same)

        config = self.tmp / "gateway.yaml"
        config.write_text(gateway_config(rt_url))
        for name, workers in (("gateway", 1), ("gateway2", self.workers)):
            port = free_port()
            proc = self._spawn(name, [sys.executable, "-m", "gateway", "serve", "--config",
                                      str(config), "--port", str(port),
                                      "--workers", str(workers)])
            self.targets[name] = Target(
                name, "gateway" if workers == 1 else f"gateway x{workers}", proc,
                {k: f"http://127.0.0.1:{port}/v1/chat/completions" for k in PROFILES}, public)
        # One worker under the supervisor: what --workers N costs per request (multiprocess
        # metrics, shared-file limits, the health leader) without the cores' contention.
        port = free_port()
        proc = self._spawn("gateway_sup", [sys.executable, "-c", SUPERVISED_ONE, str(config),
                                           str(port)])
        self.targets["gateway_sup"] = Target(
            "gateway_sup", "gateway x1 supervised", proc,
            {k: f"http://127.0.0.1:{port}/v1/chat/completions" for k in PROFILES}, public)

        self._more_gateways(rt_url, config, public)

        if self.litellm:
            port = free_port()
            cfg = self.tmp / "litellm.yaml"
            cfg.write_text(litellm_config(rt_url))
            # No auth on either side (the gateway's config has no keys): LiteLLM refuses to
            # start without a master key unless told this is a local run.
            env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                   "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True",
                   "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
            env.pop("DATABASE_URL", None)
            proc = self._spawn("litellm", [self.litellm, "--config", str(cfg), "--host",
                                           "127.0.0.1", "--port", str(port),
                                           "--num_workers", "1"], env=env, cwd=str(self.tmp))
            self.targets["litellm"] = Target(
                "litellm", "LiteLLM", proc,
                {k: f"http://127.0.0.1:{port}/v1/chat/completions" for k in PROFILES}, public)
        else:
            self.notes.append("LiteLLM not installed: its column is skipped "
                              "(pip install 'litellm[proxy]', or --litellm PATH)")

        for name, t in self.targets.items():
            if name == "direct":
                continue
            base = t.urls["fast"].rsplit("/v1/", 1)[0]
            ready = {"bare": base + "/v1/models", "litellm": base + "/health/liveliness"}.get(
                name, base + "/ready")
            t.proc.wait_ready(ready, 180 if name == "litellm" else 30)

    def _more_gateways(self, rt_url: dict[str, str], config: Path, public: dict) -> None:
        """`--tracing`: the gateway again with every request traced to an OTLP sink;
        `--baseline DIR`: the gateway of another checkout, on the same config."""
        extra = []
        if self.tracing:
            port = free_port()
            self.sink = f"http://127.0.0.1:{port}"
            sink = self._spawn("otlp-sink", [sys.executable, "-m", "bench.otlp_sink",
                                             "--port", str(port)])
            sink.wait_ready(self.sink + "/stats", 20)
            traced = self.tmp / "gateway-traced.yaml"
            traced.write_text(config.read_text() + f"tracing: {{otlp_endpoint: {self.sink}, "
                              "sample_ratio: 1.0, service_name: bench}\n")
            extra.append(("traced", "gateway traced", traced, None))
        if self.baseline:
            env = {**os.environ, "PYTHONPATH": self.baseline}
            extra.append(("base", "gateway before", config, env))
        for name, label, path, env in extra:
            port = free_port()
            proc = self._spawn(name, [sys.executable, "-m", "gateway", "serve", "--config",
                                      str(path), "--port", str(port)], env=env,
                               cwd=self.baseline if env else None)
            self.targets[name] = Target(
                name, label, proc,
                {k: f"http://127.0.0.1:{port}/v1/chat/completions" for k in PROFILES}, public)

    def sink_stats(self) -> dict | None:
        if not self.tracing:
            return None
        import urllib.request
        with urllib.request.urlopen(self.sink + "/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def _spawn(self, name: str, argv: list[str], env: dict | None = None,
               cwd: str | None = None) -> Proc:
        proc = Proc(name, argv, self.tmp / f"{name}.log", env=env, cwd=cwd or str(ROOT))
        self.procs.append(proc)
        return proc.start()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def runtime_stats(self, profile: str) -> dict:
        import urllib.request
        port = self.runtimes[profile][1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:
            return json.loads(resp.read())

    # -- workloads -----------------------------------------------------------------

    async def saturation(self, names: list[str]) -> None:
        p = self.p
        for name in names:
            self.targets[name].results["saturation"] = {"rounds": [], "cpu_s": 0.0,
                                                         "requests": 0, "errors": 0}
        for _ in range(p["sat_rounds"]):
            for name in names:
                t = self.targets[name]
                lua = self.tmp / f"{name}.lua"
                lua.write_text(WRK_LUA % json.dumps(t.body("fast", p["sat_tokens"])))
                await wrk(t.urls["fast"], lua, p["sat_conns"], p["sat_warm_s"])
                before = cpu_by_pid(t.proc.pid) if t.proc else {}
                out = await wrk(t.urls["fast"], lua, p["sat_conns"], p["sat_s"])
                after = cpu_by_pid(t.proc.pid) if t.proc else {}
                per_process = sorted((round(after[k] - before.get(k, 0.0), 2) for k in after),
                                     reverse=True)
                cpu = sum(per_process)
                res = t.results["saturation"]
                errors = out["connect"] + out["read"] + out["write"] + out["status"] + out[
                    "timeout"]
                ok = out["requests"] - out["status"]
                wall = out["duration_us"] / 1e6
                res["rounds"].append({"rps": ok / wall, "ok": ok, "errors": errors,
                                      "cpu_s": cpu, "cores_used": cpu / wall if t.proc else None,
                                      "cpu_s_per_process": per_process,
                                      "p50_ms": out["p50_us"] / 1000,
                                      "p99_ms": out["p99_us"] / 1000})
                res["cpu_s"] += cpu
                res["requests"] += ok
                res["errors"] += errors
        for name in names:
            res = self.targets[name].results["saturation"]
            res["rps"] = max(r["rps"] for r in res["rounds"])
            res["cpu_s_per_1k"] = (1000 * res["cpu_s"] / res["requests"]
                                   if res["requests"] and name != "direct" else None)

    async def paced(self, names: list[str]) -> None:
        """Open loop at a fixed rate, in short rounds with the targets interleaved.

        At 100 requests/s each request meets cold caches, so latency follows whatever
        else the shared machine does; interleaving spreads that drift over all targets
        instead of landing on whichever one ran during it.
        """
        p = self.p
        rounds = p["paced_rounds"]
        latencies: dict[str, list[float]] = {name: [] for name in names}
        counts = {name: {"sent": 0, "ok": 0, "errors": 0, "late": 0, "cpu": 0.0}
                  for name in names}
        for name in names:
            t = self.targets[name]
            body = t.body("fast", p["sat_tokens"])
            await loadgen.paced(t.urls["fast"], body, p["paced_rate"], p["paced_warm_s"])
        for _ in range(rounds):
            for name in names:
                t = self.targets[name]
                body = t.body("fast", p["sat_tokens"])
                before = t.cpu()
                r = await loadgen.paced(t.urls["fast"], body, p["paced_rate"],
                                        p["paced_s"] / rounds)
                c = counts[name]
                c["cpu"] += t.cpu() - before
                for what in ("sent", "ok", "errors", "late"):
                    c[what] += getattr(r, what)
                latencies[name] += r.latencies
        for name in names:
            t, c, lat = self.targets[name], counts[name], latencies[name]
            t.results["paced"] = {
                "rate": p["paced_rate"], "rounds": rounds, "sent": c["sent"], "ok": c["ok"],
                "errors": c["errors"], "late": c["late"],
                "p50_ms": ms(loadgen.percentile(lat, 50)),
                "p99_ms": ms(loadgen.percentile(lat, 99)),
                "cpu_s_per_1k": 1000 * c["cpu"] / c["ok"] if c["ok"] and t.proc else None}
        _added(self.targets, names, "paced", ("p50_ms", "p99_ms"))

    async def streams(self, names: list[str]) -> None:
        p = self.p
        for name in names:
            t = self.targets[name]
            body = t.body("stream", p["stream_tokens"], stream=True)
            # LiteLLM spends ~100x the CPU per chunk: one wave of streams keeps it bounded.
            total = p["stream_conc"] if name == "litellm" else p["stream_total"]
            t.results["streams"] = await self._measured_streams(
                t, "stream", body, total, p["stream_conc"], 0.5)
        _added(self.targets, names, "streams", ("ttft_p50_ms", "ttft_p99_ms"))

    async def many(self, names: list[str], size: int) -> None:
        p = self.p
        key = f"many_{size}"
        for name in names:
            t = self.targets[name]
            body = t.body("many", p["many_tokens"], stream=True)
            peak = [0]
            sampled = 0
            base_rss = memory(t.proc.pid)[0] if t.proc else 0

            def sample() -> None:
                nonlocal sampled
                sampled += 1
                if sampled % 4 == 0 and t.proc:       # every 200 ms: /proc walks cost CPU
                    peak[0] = max(peak[0], memory(t.proc.pid)[0])

            res = await self._measured_streams(t, "many", body, size, size, p["many_ramp_s"],
                                               on_tick=sample)
            if t.proc:
                rss, hwm = memory(t.proc.pid)
                res.update(rss_before_mb=mb(base_rss), rss_peak_mb=mb(max(peak[0], rss)),
                           hwm_mb=mb(hwm))
            t.results[key] = res

    async def _measured_streams(self, t: Target, profile: str, body: dict, total: int,
                                conc: int, ramp_s: float, on_tick=None) -> dict:
        """Run streams against `profile`'s runtime, with the target's CPU and the events
        the runtime sent counted around the run."""
        before_stats = self.runtime_stats(profile)
        before = t.cpu()
        r = await loadgen.streams(t.urls[profile], body, total, conc, ramp_s,
                                  self.p["deadline_s"], on_tick=on_tick)
        cpu = t.cpu() - before
        return _stream_result(r, before_stats, self.runtime_stats(profile), cpu, t)


def _stream_result(r: loadgen.StreamResult, before: dict, after: dict, cpu: float,
                   t: Target) -> dict:
    sent = after["events"] - before["events"]
    return {
        "streams": r.streams, "completed": r.completed, "errors": r.errors,
        "peak_open": r.peak_open, "events_sent": sent, "events_received": r.events,
        "lost": sent - r.events, "wall_s": round(r.wall_s, 2),
        "broken_upstream": after["cancelled"] - before["cancelled"],
        "ttft_p50_ms": ms(loadgen.percentile(r.ttfts, 50)),
        "ttft_p99_ms": ms(loadgen.percentile(r.ttfts, 99)),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1k_chunks": 1000 * cpu / r.events if r.events and t.proc else None,
    }


def _added(targets: dict[str, Target], names: list[str], key: str, fields: tuple) -> None:
    direct = targets["direct"].results.get(key) if "direct" in names else None
    for name in names:
        res = targets[name].results[key]
        for f in fields:
            res["added_" + f] = (res[f] - direct[f] if direct and res[f] is not None
                                 and direct[f] is not None else None)


async def wrk(url: str, lua: Path, conns: int, seconds: float) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(lua), url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:])
    raise RuntimeError(f"wrk gave no summary:\n{out.decode(errors='replace')}")


def gateway_config(rt_url: dict[str, str]) -> str:
    lines = ["server: {host: 127.0.0.1, port: 8080, drain_s: 5}", "backends:"]
    for profile, url in rt_url.items():
        lines += [f"  rt-{profile}:", "    kind: vllm", f"    url: {url}/v1",
                  f"    models: {{bench-{profile}: {RUNTIME_MODEL}}}"]
    lines.append("health: {interval_s: 10, timeout_s: 2, unhealthy_after: 3, healthy_after: 2}")
    return "\n".join(lines) + "\n"


def litellm_config(rt_url: dict[str, str]) -> str:
    lines = ["model_list:"]
    for profile, url in rt_url.items():
        lines += [f"  - model_name: bench-{profile}", "    litellm_params:",
                  f"      model: openai/{RUNTIME_MODEL}", f"      api_base: {url}/v1",
                  "      api_key: none"]
    return "\n".join(lines) + "\n"


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def mb(n: int) -> float:
    return round(n / 2**20, 1)


def find_litellm(arg: str | None) -> str | None:
    if arg:
        return arg if os.access(arg, os.X_OK) else None
    env = os.environ.get("BENCH_LITELLM")
    if env and os.access(env, os.X_OK):
        return env
    beside = Path(sys.executable).parent / "litellm"
    if beside.exists():
        return str(beside)
    return shutil.which("litellm")


async def run(bench: Bench, p: dict) -> None:
    names = [n for n in ("direct", "bare", "base", "gateway", "traced", "gateway2", "gateway_sup",
                         "litellm")
             if n in bench.targets]
    one_worker = [n for n in names if n not in ("gateway2", "gateway_sup")]
    print(f"saturation ({p['sat_rounds']} x {p['sat_s']} s per target)...", flush=True)
    await bench.saturation(names)
    print(f"paced {p['paced_rate']} req/s...", flush=True)
    await bench.paced(one_worker)
    print(f"{p['stream_conc']} concurrent streams...", flush=True)
    await bench.streams(one_worker)
    for size in p["many_sizes"]:
        print(f"{size} concurrent streams...", flush=True)
        await bench.many([n for n in p["many_targets"] if n in bench.targets], size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--duration", type=float,
                        help="seconds of each saturation round and of the paced run")
    parser.add_argument("--workers", type=int, default=2, help="workers of the scaling run")
    parser.add_argument("--litellm", help="path to the litellm CLI (default: beside this "
                        "python, then $BENCH_LITELLM, then PATH)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--tracing", action="store_true", help="also the gateway with "
                        "tracing at sample ratio 1.0, exporting to a local OTLP sink")
    parser.add_argument("--baseline", metavar="DIR", help="also the gateway of another "
                        "checkout (e.g. `git worktree add DIR main`), for a before/after")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    p = dict(PARAMS["quick" if args.quick else "default"])
    if args.duration:
        p["sat_s"] = p["paced_s"] = args.duration
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # 2,000 streams x 2 hops
    litellm = None if args.no_litellm else find_litellm(args.litellm)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        bench = Bench(p, Path(tmp), litellm, args.workers, args.tracing, args.baseline)
        try:
            bench.start()
            asyncio.run(run(bench, p))
            sink = bench.sink_stats()
        finally:
            bench.stop()
    doc = {
        "mode": "quick" if args.quick else "default", "params": p,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "litellm": litellm, "notes": bench.notes, "otlp_sink": sink,
        "total_s": round(time.monotonic() - started, 1),
        "targets": {n: {"label": t.label, **t.results} for n, t in bench.targets.items()},
    }
    doc["verdicts"] = verdicts(doc)
    return publish(doc, args.out, render(doc))


if __name__ == "__main__":
    sys.exit(main())
