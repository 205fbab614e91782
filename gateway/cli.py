"""`gateway serve` and `gateway check`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .config import ConfigError, check, load_config

DEFAULT_CONFIG = "gateway.yaml"


def config_path(arg: str | None) -> str:
    return arg or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="path to gateway.yaml "
                       "(default: $GATEWAY_CONFIG, else ./gateway.yaml)")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes under one supervisor; metrics, limits and "
                       "reloads are the whole server's (default: 1)")
    chk = sub.add_parser("check", help="validate a config file and exit")
    chk.add_argument("--config", help="path to gateway.yaml")
    args = parser.parse_args(argv)
    path = config_path(args.config)
    if args.command == "check":
        return check(path)
    return serve_command(path, args.host, args.port, args.workers)


def serve_command(path: str, host: str | None, port: int | None, workers: int) -> int:
    try:
        config = load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 1
    if workers < 1:
        print("--workers: must be at least 1", file=sys.stderr)
        return 1
    setup_logging()
    host, port = host or config.server.host, port or config.server.port
    # Imported here: aiohttp and the whole app are not needed by `check`, and
    # workers/supervise.py must set up prometheus-client's multiprocess mode before the app loads.
    if workers > 1:
        from .server.supervise import run as run_workers
        return run_workers(config, path, host, port, workers)
    from .server.serve import run
    return run(config, path, host, port)


class JsonFormatter(logging.Formatter):
    """Every log line is one JSON object; the access log's message already is one."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "gateway.access":
            return record.getMessage()
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging() -> None:
    # One access line per request: skip the lookups no line of ours prints.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # No caller lookup per record. The logging docs' "Optimization" table names this very
    # switch; the standard library has no public one (3.11-3.14).
    # tests/test_accesslog.py::test_log_records_skip_the_caller_lookup guards it.
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


if __name__ == "__main__":
    sys.exit(main())
