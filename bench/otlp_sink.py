"""An OTLP/HTTP trace receiver for the speed benchmark: counts what the gateway exports.

    python -m bench.otlp_sink --port 4318

POST /v1/traces takes an `ExportTraceServiceRequest` (protobuf), counts its spans
and answers 200 as a collector does; GET /stats returns the counts, so the bench can
check that the traced gateway really exported a span per request and per try.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

STATS = web.AppKey("stats", dict)


async def traces(request: web.Request) -> web.Response:
    export = ExportTraceServiceRequest.FromString(await request.read())
    stats = request.app[STATS]
    stats["exports"] += 1
    stats["spans"] += sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
    return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                        content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 2**20)
    app[STATS] = {"exports": 0, "spans": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
