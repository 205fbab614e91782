"""Prefix routing on real llama.cpp servers: prompt tokens evaluated and TTFT per strategy.

Two `llama-server`s (the llama.cpp tier's install: Gemma 3 270M Q4_K_M, one thread each,
`-np 4` slots, `--cache-ram 0`: only the slots' own KV cache, no host-RAM prompt cache
that would let `weighted` warm both servers with every conversation) behind
`gateway serve` as `kind: llamacpp`, weights 1:1. For each strategy both servers and the
gateway start afresh (empty caches), then `conversations` multi-turn chats run at once,
each sending its `turns` turns one after the other (starts spread over `stagger_s`,
up to `think_s` between turns, from fixed seeds): a long system prompt shared by all,
an opening question of its own, and the history growing by each answer (`max_tokens`
tokens, temperature 0) and a follow-up.

Per answer, llama-server's `timings` (on a stream's last chunk) say how many prompt tokens
it evaluated (`prompt_n`) and how many came from its cache (`cache_n`); the servers'
`llamacpp:prompt_tokens_total` / `llamacpp:prompt_tokens_cached_total` counters give the
same totals as a cross-check. TTFT is request sent to the first content chunk, through
the gateway. The ratios are prefix_affinity's figure over weighted's in one run.

    python -m bench.llama_prefix [--conversations 8] [--turns 4] [--out PATH]

Needs the llama.cpp install of the llamacpp test tier (.ci/install-llama.sh). About
2 minutes on two cores. Writes bench/results/llama_prefix.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from tests.llama_support import (
    ADMIN_KEY, HOST, PUBLIC_MODEL, Gateway, LlamaServer, find_install, wait_until,
)

from .loadgen import percentile
from .report import publish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "llama_prefix.json"
STRATEGIES = ("weighted", "prefix_affinity")
PARAMS = {"conversations": 8, "turns": 4, "max_tokens": 16, "slots": 4, "ctx": 8192,
          "cache_ram_mib": 0, "stagger_s": 3.0, "think_s": 1.0, "deadline_s": 300}
SYSTEM = (
    "You are the support assistant of a small hardware shop that sells bicycles, spare "
    "parts and repair services. Answer in one short sentence. Be polite and precise. "
    "Opening hours are Monday to Friday from nine to six and Saturday from ten to two. "
    "Repairs take two working days; express repairs the same day cost twenty euros more. "
    "Customers can return unused parts within thirty days with the receipt. Bicycles come "
    "with a two-year warranty on the frame and one year on the other parts. We do not "
    "repair electric motors ourselves but send them to the maker, which takes two weeks. "
    "Delivery within the city is free above one hundred euros, otherwise it costs eight. "
    "Gift cards are sold in steps of ten euros and never expire. Payment by card, cash or "
    "bank transfer; no cheques. The workshop lends a city bike during long repairs when "
    "one is free. Never promise a date that the workshop has not confirmed; say that a "
    "colleague will call back instead. Never give medical or legal advice. If a question "
    "is not about the shop, say politely that you can only help with the shop."
)
OPENINGS = ("My brakes squeak, can you fix them?", "Do you sell child seats?",
            "How long does a wheel truing take?", "Can I return a saddle I tried once?",
            "Is my e-bike motor covered?", "Do you deliver to the suburbs?",
            "Can I pay with a cheque?", "What does an express repair cost?",
            "Do you have gift cards?", "Are you open on Sunday?")
FOLLOW_UPS = ("Thanks. And how much would that cost?", "Could I get it done by Friday?",
              "What if I bring it on Saturday?", "Fine, who do I talk to?",
              "Is there a discount for students?", "Thanks, that is all.")


def gateway_yaml(port: int, servers: list[LlamaServer], strategy: str) -> str:
    lines = [f"server: {{host: {HOST}, port: {port}, drain_s: 2, admin_key: {ADMIN_KEY}}}",
             "backends:"]
    for s in servers:
        lines += [f"  {s.name}:", "    kind: llamacpp", f"    url: {s.url}/v1",
                  f"    models: [{PUBLIC_MODEL}]",
                  "    timeouts: {connect_s: 2, first_byte_s: 120, idle_s: 60}"]
    lines += ["routes:", f"  {PUBLIC_MODEL}: {{strategy: {strategy}}}",
              "health: {interval_s: 5, timeout_s: 2, unhealthy_after: 3, healthy_after: 1}",
              "retries: {attempts: 0}"]
    return "\n".join(lines) + "\n"


async def one_turn(session: aiohttp.ClientSession, url: str, messages: list,
                   p: dict) -> dict:
    """One streamed turn: its answer text, TTFT, backend and llama-server's timings."""
    body = {"model": PUBLIC_MODEL, "messages": messages, "stream": True,
            "max_tokens": p["max_tokens"], "temperature": 0,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    ttft, pieces, timings, usage, buf = None, [], None, None, b""
    async with session.post(url, data=orjson.dumps(body),
                            headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"turn answered {resp.status}: {await resp.text()}")
        backend = resp.headers.get("X-Gateway-Backend")
        async for data in resp.content.iter_any():
            buf += data
            *events, buf = buf.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                chunk = orjson.loads(event[6:])
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        ttft = ttft if ttft is not None else time.perf_counter() - sent
                        pieces.append(text)
                timings = chunk.get("timings") or timings
                usage = chunk.get("usage") or usage
    return {"backend": backend, "ttft_s": ttft, "text": "".join(pieces),
            "prompt_n": (timings or {}).get("prompt_n"),
            "cache_n": (timings or {}).get("cache_n"),
            "prompt_tokens": (usage or {}).get("prompt_tokens")}


async def conversations(gateway: Gateway, p: dict) -> list[dict]:
    """Every conversation at once, each turn after the previous answer."""
    url = gateway.base_url + "/chat/completions"
    turns: list[dict] = []

    async def conversation(i: int) -> None:
        # Staggered starts and a pause between turns, drawn from a fixed seed: in lockstep,
        # round-robin would keep an even number of conversations on their servers by chance.
        rng = random.Random(i)
        await asyncio.sleep(rng.uniform(0, p["stagger_s"]))
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": OPENINGS[i % len(OPENINGS)]}]
        for t in range(p["turns"]):
            if t:
                await asyncio.sleep(rng.uniform(0, p["think_s"]))
            answer = await one_turn(session, url, messages, p)
            turns.append({"conversation": i, "turn": t, **answer})
            messages += [{"role": "assistant", "content": answer["text"] or "Certainly."},
                         {"role": "user", "content": FOLLOW_UPS[(i + t) % len(FOLLOW_UPS)]}]

    timeout = aiohttp.ClientTimeout(total=p["deadline_s"])
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(conversation(i)
                                                for i in range(p["conversations"]))),
                               p["deadline_s"])
    return turns


def run_strategy(tmp: Path, binary: Path, model: Path, strategy: str, p: dict) -> dict:
    servers = [LlamaServer(f"llama-{c}", binary, model, tmp, ctx=p["ctx"],
                           parallel=p["slots"]) for c in "ab"]
    for s in servers:
        s.argv += ["--cache-ram", str(p["cache_ram_mib"])]
        s.log_path = tmp / f"{s.name}-{strategy}.log"
    config = tmp / f"gateway-{strategy}.yaml"
    gateway = Gateway(config, tmp)
    gateway.log_path = tmp / f"gateway-{strategy}.log"
    started = []
    try:
        for s in servers:
            s.start()
            started.append(s)
        for s in servers:
            s.wait_healthy(90)
        config.write_text(gateway_yaml(gateway.port, servers, strategy))
        gateway.start()
        started.append(gateway)
        gateway.wait_ready(gateway.ready_url, 30)
        wait_until(lambda: all(r["healthy"] for r in _admin_rows(gateway)), 20,
                   "both servers healthy in the gateway", gateway)
        before = {s.name: s.metrics() for s in servers}
        wall = time.monotonic()
        turns = asyncio.run(conversations(gateway, p))
        wall = time.monotonic() - wall
        after = {s.name: s.metrics() for s in servers}
    finally:
        for proc in reversed(started):
            proc.stop()
    return summarise(strategy, turns, before, after, wall)


def _admin_rows(gateway: Gateway) -> list[dict]:
    return list(gateway.admin_backends().values())


def summarise(strategy: str, turns: list[dict], before: dict, after: dict,
              wall: float) -> dict:
    delta = lambda name: sum(after[s].get(name, 0) - before[s].get(name, 0)   # noqa: E731
                             for s in after)
    later = [t for t in turns if t["turn"] > 0]
    ms = lambda v: None if v is None else round(v * 1000, 1)   # noqa: E731
    evaluated = sum(t["prompt_n"] or 0 for t in turns)
    cached = sum(t["cache_n"] or 0 for t in turns)
    same = sum(1 for t in later if t["backend"] == next(
        u["backend"] for u in turns if u["conversation"] == t["conversation"]
        and u["turn"] == t["turn"] - 1))
    return {
        "strategy": strategy, "requests": len(turns), "wall_s": round(wall, 1),
        "timings_seen": sum(1 for t in turns if t["prompt_n"] is not None),
        "prompt_tokens": sum(t["prompt_tokens"] or 0 for t in turns),
        "evaluated": evaluated, "cached": cached,
        "cached_share": round(cached / (evaluated + cached), 3) if evaluated + cached else None,
        "metrics_evaluated": delta("llamacpp:prompt_tokens_total"),
        "metrics_cached": delta("llamacpp:prompt_tokens_cached_total"),
        "ttft_p50_ms": ms(percentile([t["ttft_s"] for t in turns if t["ttft_s"]], 50)),
        "ttft_p50_later_ms": ms(percentile([t["ttft_s"] for t in later if t["ttft_s"]], 50)),
        "ttft_p90_ms": ms(percentile([t["ttft_s"] for t in turns if t["ttft_s"]], 90)),
        "same_backend_as_last_turn": round(same / len(later), 3) if later else None,
        "evaluated_by_turn": [sum(t["prompt_n"] or 0 for t in turns if t["turn"] == k)
                              for k in range(max(t["turn"] for t in turns) + 1)],
        "cached_by_turn": [sum(t["cache_n"] or 0 for t in turns if t["turn"] == k)
                           for k in range(max(t["turn"] for t in turns) + 1)],
        "by_backend": {b: sum(1 for t in turns if t["backend"] == b)
                       for b in sorted({t["backend"] for t in turns})},
    }


def render(doc: dict) -> str:
    p = doc["params"]
    head = (f"{'strategy':<17}{'evaluated':>10}{'cached':>8}{'cached %':>9}"
            f"{'(metrics)':>10}{'TTFT p50':>9}{'later p50':>10}{'same srv':>9}{'wall s':>7}")
    out = [f"{p['conversations']} conversations x {p['turns']} turns at once, "
           f"{p['max_tokens']} tokens per answer; 2 llama-servers -np {p['slots']} "
           f"-c {p['ctx']} --cache-ram {p['cache_ram_mib']}", head, "-" * len(head)]
    for r in doc["results"]:
        out.append(f"{r['strategy']:<17}{r['evaluated']:>10}{r['cached']:>8}"
                   f"{100 * (r['cached_share'] or 0):>8.1f}%{r['metrics_evaluated']:>10.0f}"
                   f"{r['ttft_p50_ms']:>9.0f}{r['ttft_p50_later_ms']:>10.0f}"
                   f"{r['same_backend_as_last_turn']:>9.2f}{r['wall_s']:>7.1f}")
    for r in doc["results"]:
        out.append(f"{r['strategy']}: evaluated per turn {r['evaluated_by_turn']}, "
                   f"cached per turn {r['cached_by_turn']}")
    for key, value in doc["ratios"].items():
        out.append(f"prefix_affinity / weighted, {key}: {value}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=PARAMS["conversations"])
    parser.add_argument("--turns", type=int, default=PARAMS["turns"])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    binary, model, why = find_install()
    if binary is None:
        sys.stderr.write(f"llama.cpp not installed: {why}\n")
        return 2
    p = {**PARAMS, "conversations": args.conversations, "turns": args.turns}
    started, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-llama-prefix-") as tmp:
        results = []
        for strategy in STRATEGIES:
            sys.stderr.write(f"{strategy}...\n")
            results.append(run_strategy(Path(tmp), binary, model, strategy, p))
    w, a = results
    ratio = lambda k: round(a[k] / w[k], 3) if w.get(k) and a.get(k) else None  # noqa: E731
    doc = {"params": p, "results": results,
           "ratios": {"prompt tokens evaluated": ratio("evaluated"),
                      "evaluated (servers' counters)": ratio("metrics_evaluated"),
                      "TTFT p50": ratio("ttft_p50_ms"),
                      "TTFT p50 of turns 2+": ratio("ttft_p50_later_ms")},
           "machine": {"cpus": os.cpu_count(), "load_avg_before": load_before,
                       "load_avg_after": os.getloadavg()},
           "total_s": round(time.monotonic() - started, 1)}
    return publish(doc, args.out, render(doc))


if __name__ == "__main__":
    sys.exit(main())
