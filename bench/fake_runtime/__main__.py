"""The fake runtime as a program, for the benchmark and for tests that need a process.

    python -m bench.fake_runtime --port 9001 --tokens 16 --chunk-ms 20
    python -m bench.fake_runtime --port 9002 --switches '{"by_model": {"m": {"status": 503}}}'

As a program it records nothing (the benchmark sends it millions of requests),
`max_tokens` in a request sets that answer's tokens (default --tokens), and
GET /stats returns its counters, so the benchmark can compare the events a
client received with the events sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from .runtime import HOST, FakeRuntime


async def serve(rt: FakeRuntime, host: str, port: int) -> None:
    server = await rt.start(host, port)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_runtime",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer by default")
    parser.add_argument("--ttft-ms", type=float, default=0.0,
                        help="delay before an answer, or before a stream's first event")
    parser.add_argument("--chunk-ms", type=float, default=0.0, help="delay after each token")
    parser.add_argument("--switches", type=json.loads, default={}, metavar="JSON",
                        help="any other switches of FakeRuntime, as a JSON object")
    args = parser.parse_args(argv)
    switches = {"words": args.tokens, "ttft_s": args.ttft_ms / 1000,
                "chunk_delay": args.chunk_ms / 1000, "tokens_from_request": True,
                "record": False, **args.switches}
    try:
        rt = FakeRuntime(**switches)
    except TypeError as exc:
        parser.error(f"--switches: {exc}")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(rt, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
