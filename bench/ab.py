"""Two checkouts of the gateway side by side: CPU per request and per streamed chunk.

    python -m bench.ab OLD_CHECKOUT NEW_CHECKOUT [--rounds 6] [--seconds 4]

Each checkout's gateway (`python -m gateway serve`, run from that checkout) proxies the
same fake runtime (bench/fake_runtime/) on the same config. The two are measured in
alternating short rounds, so drift of a shared machine falls on both alike: wrk at 64
connections on non-streamed chat, then a wave of streams (64 tokens each). CPU is
utime+stime of each gateway's process from /proc around each round. Prints the median
per target and the ratio NEW/OLD; only 127.0.0.1 is used.
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
from bench.speed import MESSAGES, RUNTIME_MODEL, WRK_LUA, wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
backends:
  rt:
    kind: vllm
    url: {url}
    models: {{bench: "{model}"}}
health: {{interval_s: 30}}
"""


async def measure(names: list[str], procs: dict[str, Proc], ports: dict[str, int],
                  rounds: int, seconds: float, lua: Path) -> dict[str, dict[str, list]]:
    out = {n: {"request_us": [], "chunk_us": []} for n in names}
    stream_body = {"model": "bench", "messages": MESSAGES, "max_tokens": 64, "stream": True}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            url = f"http://127.0.0.1:{ports[name]}/v1/chat/completions"
            before = cpu_seconds(procs[name].pid)
            res = await wrk(url, lua, 64, seconds)
            spent = cpu_seconds(procs[name].pid) - before
            if res["requests"]:
                out[name]["request_us"].append(spent / res["requests"] * 1e6)
            before = cpu_seconds(procs[name].pid)
            streams = await loadgen.streams(url, stream_body, 200, 100, 0.5, 60)
            spent = cpu_seconds(procs[name].pid) - before
            if streams.events:
                out[name]["chunk_us"].append(spent / streams.events * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    rt_port = free_port()
    runtime = Proc("runtime", [sys.executable, "-m", "bench.fake_runtime", "--port",
                               str(rt_port)], tmp / "runtime.log", cwd=str(ROOT)).start()
    config = tmp / "gateway.yaml"
    config.write_text(CONFIG.format(url=f"http://127.0.0.1:{rt_port}", model=RUNTIME_MODEL))
    lua = tmp / "chat.lua"
    lua.write_text(WRK_LUA % ('{"model": "bench", "messages": [{"role": "user", '
                              '"content": "hi"}], "max_tokens": 16}'))
    procs: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    try:
        runtime.wait_ready(f"http://127.0.0.1:{rt_port}/health", 20)
        for name, checkout in (("old", args.old), ("new", args.new)):
            ports[name] = free_port()
            procs[name] = Proc(name, [sys.executable, "-m", "gateway", "serve", "--config",
                                      str(config), "--port", str(ports[name])],
                               tmp / f"{name}.log", cwd=str(Path(checkout).resolve())).start()
        for name, proc in procs.items():
            proc.wait_ready(f"http://127.0.0.1:{ports[name]}/ready", 30)
        out = asyncio.run(measure(["old", "new"], procs, ports, args.rounds, args.seconds, lua))
    finally:
        for proc in (*procs.values(), runtime):
            proc.stop()
    for what in ("request_us", "chunk_us"):
        old, new = (statistics.median(out[n][what]) for n in ("old", "new"))
        print(f"{what:<11} old {old:8.1f}  new {new:8.1f}  new/old {new / old:.3f}  "
              f"(rounds old {[round(v) for v in out['old'][what]]}, "
              f"new {[round(v) for v in out['new'][what]]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
