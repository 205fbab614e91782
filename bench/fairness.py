"""Sharing a saturated pool: the gateway's scheduler against the first-come-first-served
queue it replaced, on the same fake runtime.

    python -m bench.fairness [--fifo-checkout DIR] [--seconds S]

One fake runtime (bench/fake_runtime/) with SLOTS slots, streaming TOKENS tokens
CHUNK_S apart: one request takes SERVICE_S and the pool serves SLOTS at once. The
backend's `max_concurrency` is SLOTS, so every request beyond it waits in the
gateway's queue, where the order is decided. Two gateways, one after the other, on
the same runtime and load:

- "scheduler": this checkout, keys with classes and shares;
- "FIFO": the gateway before the scheduler (a git worktree of `--fifo-commit`,
  default the merge base with origin/main, unless `--fifo-checkout` names a
  checkout), the same keys without classes or shares (its config knows none).

Scenarios (closed-loop clients; each key's load in clients that send again as soon
as their answer ended):

1. shares: keys `three` (share 3) and `one` (share 1), each with 3 x SLOTS clients:
   tokens served to each, after a warm-up; goal 3:1 within 10%.
2. light key: `flood` with 3 x SLOTS clients, `light` with one client (for 2.5 x the
   seconds of the others); the light key's wait (time to first token less its time
   alone); goal p99 <= one service time.
3. interactive under a batch flood: `chat` (interactive) with 2 clients alone, then
   with `nightly` (batch) flooding with 3 x SLOTS clients; goal p99 TTFT with the
   flood <= 1.25 x without + one service time.
4. batch under an interactive flood: `chat` floods with 3 x SLOTS clients; one
   `nightly` request; its time to finish against promote_after_s + one service time.
   (A batch request climbs two classes to reach interactive: by the contract's rule,
   one class per promote_after_s, it goes out after 2 x promote_after_s.)

The clients of a flood join one every SERVICE_S / SLOTS: the runtime's slots then end
one after another, as they do under real traffic, not all at the same instant (a
fixed service time keeps closed-loop clients in step with how they started).

Only 127.0.0.1 is used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):      # run as a file: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench.loadgen import percentile  # noqa: E402
from bench.procs import Proc, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 8
TOKENS = 8
CHUNK_S = 0.025
SERVICE_S = TOKENS * CHUNK_S
PROMOTE_S = 1.5
MODEL = "bench"

STAGGER_S = SERVICE_S / SLOTS

KEYS = [("three", {"share": 3}), ("one", {"share": 1}), ("flood", {}), ("light", {}),
        ("chat", {"priority": "interactive"}), ("nightly", {"priority": "batch"})]


def config(runtime_port: int, scheduler: bool, promote_s: float = 30) -> str:
    lines = ["backends:",
             f"  rt: {{kind: vllm, url: 'http://127.0.0.1:{runtime_port}', "
             f"models: [{MODEL}], max_concurrency: {SLOTS}}}",
             "health: {interval_s: 30}",
             "engine: {interval_s: 30, stale_after_s: 60}",
             "retries: {deadline_s: 600}",
             "auth:", "  keys:"]
    for name, extra in KEYS:
        fields = {"name": name, "key": f"sk-{name}", **(extra if scheduler else {})}
        lines.append("    - " + json.dumps(fields))
    queue = {"max_wait_s": 300, "max_size": 1000}
    if scheduler:
        queue["promote_after_s"] = promote_s
    lines.append("queue: " + json.dumps(queue))
    return "\n".join(lines) + "\n"


class Client:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.url = base + "/v1/chat/completions"
        self.session = session

    async def one(self, key: str) -> tuple[float, float, int]:
        """(time to first token, total time, tokens) of one streamed request."""
        body = {"model": MODEL, "stream": True, "max_tokens": TOKENS,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}]}
        began = time.perf_counter()
        first = None
        tokens = 0
        async with self.session.post(self.url, json=body,
                                     headers={"Authorization": f"Bearer sk-{key}"}) as resp:
            if resp.status != 200:
                await resp.read()
                raise RuntimeError(f"{key}: status {resp.status}")
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                if first is None and event.get("choices"):
                    first = time.perf_counter() - began
                usage = event.get("usage")
                if usage:
                    tokens = usage.get("total_tokens") or 0
        total = time.perf_counter() - began
        return (first if first is not None else total), total, tokens

    async def loop(self, key: str, until: float, out: list, warm_until: float = 0.0,
                   delay: float = 0.0, limit: int = 10_000) -> None:
        await asyncio.sleep(delay)
        for _ in range(limit):
            if time.perf_counter() >= until:
                return
            ttft, total, tokens = await self.one(key)
            ended = time.perf_counter()
            if ended - total >= warm_until:   # sent after the warm-up
                out.append((ttft, total, tokens, ended))


async def shares(c: Client, seconds: float) -> dict:
    start = time.perf_counter()
    warm, until = start + 2.0, start + 2.0 + seconds
    got: dict[str, list] = {"three": [], "one": []}
    # Every answer is kept (warm_until 0); what counts is the tokens of the answers that
    # ended within the window: the service each key got then, however long it waited.
    await asyncio.gather(*(c.loop(k, until, got[k], 0.0, (2 * i + j) * STAGGER_S / 2)
                           for j, k in enumerate(got) for i in range(3 * SLOTS)))
    tokens = {k: sum(t for *_, t, ended in v if warm <= ended <= until)
              for k, v in got.items()}
    return {"tokens_three": tokens["three"], "tokens_one": tokens["one"],
            "ratio": tokens["three"] / max(1, tokens["one"])}


async def light_key(c: Client, seconds: float) -> dict:
    alone = [(await c.one("light"))[0] for _ in range(10)]
    base = sorted(alone)[len(alone) // 2]
    start = time.perf_counter()
    # One request at a time: a longer run, so that p99 is not simply the largest of a few.
    warm, until = start + 1.0, start + 1.0 + 2.5 * seconds
    flood: list = []
    light: list = []
    await asyncio.gather(c.loop("light", until, light, warm),
                         *(c.loop("flood", until, flood, warm, i * STAGGER_S)
                           for i in range(3 * SLOTS)))
    waits = [max(0.0, ttft - base) for ttft, *_ in light]
    p99 = percentile(waits, 99) or 0.0
    return {"requests": len(waits), "p99_wait_s": p99, "p99_wait_per_service": p99 / SERVICE_S}


async def interactive_under_batch(c: Client, seconds: float) -> dict:
    quiet: list = []
    until = time.perf_counter() + seconds / 2
    await asyncio.gather(*(c.loop("chat", until, quiet) for _ in range(2)))
    busy: list = []
    start = time.perf_counter()
    warm, until = start + 1.0, start + 1.0 + seconds
    flood: list = []
    await asyncio.gather(*(c.loop("chat", until, busy, warm) for _ in range(2)),
                         *(c.loop("nightly", until, flood, warm, i * STAGGER_S)
                           for i in range(3 * SLOTS)))
    p0 = percentile([t for t, *_ in quiet], 99) or 0.0
    p1 = percentile([t for t, *_ in busy], 99) or 0.0
    bound = 1.25 * p0 + SERVICE_S
    return {"p99_ttft_alone_s": p0, "p99_ttft_flood_s": p1, "bound_s": bound,
            "flood_over_bound": p1 / bound}


async def batch_under_interactive(c: Client) -> dict:
    until = time.perf_counter() + 2 * PROMOTE_S + 4 * SERVICE_S + 2.0
    flood: list = []
    floods = [asyncio.create_task(c.loop("chat", until, flood, 0.0, i * STAGGER_S))
              for i in range(3 * SLOTS)]
    await asyncio.sleep(3 * SLOTS * STAGGER_S + 0.2)   # the flood fills slots and queue
    _, total, _ = await c.one("nightly")
    await asyncio.gather(*floods)
    return {"batch_finished_s": total, "promote_plus_service_s": PROMOTE_S + SERVICE_S,
            "two_promotions_plus_service_s": 2 * PROMOTE_S + SERVICE_S}


async def run_phase(base: str, seconds: float, phase: str) -> dict:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        c = Client(base, session)
        if phase == "promote":
            return {"batch": await batch_under_interactive(c)}
        return {"shares": await shares(c, seconds),
                "light": await light_key(c, seconds),
                "interactive": await interactive_under_batch(c, seconds)}


def fifo_checkout(commit: str, tmp: Path) -> Path:
    path = tmp / "fifo"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
                   check=True, capture_output=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fifo-checkout", help="a checkout of the gateway before the scheduler")
    parser.add_argument("--fifo-commit", default=None,
                        help="the commit to check out for FIFO (default: merge base with "
                             "origin/main)")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    made_worktree = None
    if args.fifo_checkout:
        fifo = Path(args.fifo_checkout).resolve()
    else:
        commit = args.fifo_commit or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "origin/main"], check=True,
            capture_output=True, text=True).stdout.strip()
        fifo = made_worktree = fifo_checkout(commit, tmp)
    rt_port = free_port()
    switches = {"models": [MODEL], "words": TOKENS, "chunk_delay": CHUNK_S, "slots": SLOTS}
    runtime = Proc("runtime", [sys.executable, "-m", "bench.fake_runtime", "--port",
                               str(rt_port), "--switches", json.dumps(switches)],
                   tmp / "runtime.log", cwd=str(ROOT)).start()
    results = {}
    try:
        runtime.wait_ready(f"http://127.0.0.1:{rt_port}/health", 20)
        # Scenarios 1-3 on the default promote_after_s (30 s: longer than any wait here,
        # so promotion does not blur the shares), scenario 4 on a short one.
        for name, checkout, scheduler in (("scheduler", ROOT, True), ("FIFO", fifo, False)):
            results[name] = {}
            for phase, promote_s in (("main", 30.0), ("promote", PROMOTE_S)):
                port = free_port()
                cfg = tmp / f"{name}-{phase}.yaml"
                cfg.write_text(config(rt_port, scheduler, promote_s))
                proc = Proc(name, [sys.executable, "-m", "gateway", "serve", "--config",
                                   str(cfg), "--port", str(port)], tmp / f"{name}-{phase}.log",
                            cwd=str(checkout)).start()
                try:
                    proc.wait_ready(f"http://127.0.0.1:{port}/ready", 30)
                    results[name].update(asyncio.run(
                        run_phase(f"http://127.0.0.1:{port}", args.seconds, phase)))
                finally:
                    proc.stop()
    finally:
        runtime.stop()
        if made_worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(made_worktree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)
    return 0


def report(results: dict) -> None:
    s, f = results["scheduler"], results["FIFO"]
    print(f"pool: {SLOTS} slots, one request = {TOKENS} tokens x {CHUNK_S * 1000:g} ms = "
          f"{SERVICE_S:g} s of service; promote_after_s {PROMOTE_S:g}")
    print(f"{'':44}{'scheduler':>12}{'FIFO':>12}   goal")
    rows = [
        ("1. shares 3:1, tokens three/one", "ratio", "shares", "{:.2f}", "2.70 .. 3.30"),
        ("2. light key p99 wait / service time", "p99_wait_per_service", "light", "{:.2f}",
         "<= 1"),
        ("3. interactive p99 TTFT flood / bound", "flood_over_bound", "interactive",
         "{:.2f}", "<= 1 (bound = 1.25 x alone + service)"),
        ("4. batch under interactive flood, s", "batch_finished_s", "batch", "{:.2f}",
         f"<= {PROMOTE_S + SERVICE_S:.2f} asked; {2 * PROMOTE_S + SERVICE_S:.2f} by the "
         "rule (two classes)"),
    ]
    for label, field, section, fmt, goal in rows:
        print(f"{label:<44}{fmt.format(s[section][field]):>12}"
              f"{fmt.format(f[section][field]):>12}   {goal}")
    print("details:", json.dumps(_rounded(results)))


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


if __name__ == "__main__":
    sys.exit(main())
