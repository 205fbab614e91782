"""The floor for any aiohttp gateway: a pass-through proxy with no parsing at all.

`/NAME/rest` goes to `UPSTREAM[NAME]/rest`; the request body is sent as read and
the answer is streamed back chunk by chunk. uvloop, one pooled ClientSession,
no limits, no timeouts, no logging: what is left is aiohttp's own cost.

    python -m bench.bare_proxy --port 9100 --upstream fast=http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

UPSTREAMS = web.AppKey("upstreams", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.StreamResponse:
    url = request.app[UPSTREAMS][request.match_info["name"]] + "/" + request.match_info["rest"]
    body = await request.read()
    async with request.app[SESSION].request(
            request.method, url, data=body, allow_redirects=False,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
    ) as upstream:
        resp = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json")})
        await resp.prepare(request)
        async for data in upstream.content.iter_any():
            await resp.write(data)
        await resp.write_eof()
        return resp


async def session_ctx(app: web.Application):
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None))
    yield
    await app[SESSION].close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", default=[], metavar="NAME=URL")
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    app = web.Application()
    app[UPSTREAMS] = dict(item.split("=", 1) for item in args.upstream)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{name}/{rest:.*}", proxy)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None,
                backlog=4096)


if __name__ == "__main__":
    main()
