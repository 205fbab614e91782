"""The access log `gateway serve` uses: one JSON line per request, written in batches."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os

from gateway.log import StderrAccessLog
from tests.conftest import eventually


async def test_buffered_lines_go_out_together_after_the_flush_delay():
    read_fd, write_fd = os.pipe()
    try:
        log = StderrAccessLog(write_fd, flush_after_s=0.05)
        for i in range(3):
            log.write({"request_id": f"r{i}", "status": 200})
            await asyncio.sleep(0)
        os.set_blocking(read_fd, False)
        try:
            assert os.read(read_fd, 4096) == b""
        except BlockingIOError:
            pass                          # nothing written yet: the delay is not over

        def written() -> bytes:
            try:
                return os.read(read_fd, 4096)
            except BlockingIOError:
                return b""
        # The first read that finds anything holds all three: they went out in one flush.
        lines = (await eventually(written, timeout=5)).decode().splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == ["r0", "r1", "r2"]
        log.write({"request_id": "last"})
        log.flush()                       # what app cleanup does at shutdown
        assert json.loads(os.read(read_fd, 4096))["request_id"] == "last"
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_a_full_buffer_is_written_at_once():
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(read_fd, False)
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)   # room for the whole batch
        log = StderrAccessLog(write_fd, flush_after_s=60)
        written = 0
        while True:                       # bounded: the buffer flushes within 64 KiB
            log.write({"request_id": "x" * 100, "n": written})
            written += 1
            try:
                data = os.read(read_fd, 1 << 20)
                break
            except BlockingIOError:
                assert written < 2000
        lines = data.decode().splitlines()
        assert [json.loads(line)["n"] for line in lines] == list(range(written))
        log.flush()
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_a_closed_stderr_does_not_break_the_gateway():
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    log = StderrAccessLog(write_fd, flush_after_s=0.01)
    try:
        log.write({"request_id": "lost-on-timer"})
        # A fixed wait, 10 flush delays: nothing public shows the timer has run, and
        # the absence of errors is the check.
        await asyncio.sleep(0.1)          # the timer's flush meets EPIPE...
        assert errors == []               # ...and nothing escapes into the event loop
        log.write({"request_id": "lost-on-flush"})
        log.flush()                       # nor from a direct flush
        # Once stderr is back (the same fd, now a live pipe), the log writes again,
        # and only new lines: what was lost is not kept to grow without bound.
        new_read, new_write = os.pipe()
        os.dup2(new_write, write_fd)
        os.close(new_write)
        log.write({"request_id": "after"})
        log.flush()
        os.set_blocking(new_read, False)
        lines = os.read(new_read, 4096).decode().splitlines()
        os.close(new_read)
        assert [json.loads(line)["request_id"] for line in lines] == ["after"]
    finally:
        loop.set_exception_handler(None)
        os.close(write_fd)


def test_log_records_skip_the_caller_lookup():
    """setup_logging's `logging._srcfile = None` (the logging docs' own optimisation, with
    no public switch) still stops the caller lookup: a record names no function or line."""
    import logging

    from gateway.cli import setup_logging

    root = logging.getLogger()
    saved = (logging._srcfile, root.handlers[:], root.level, logging.logThreads,
             logging.logProcesses, logging.logMultiprocessing)
    try:
        setup_logging()
        seen: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)
        logger = logging.getLogger("gateway.test.srcfile")
        logger.addHandler(Keep())
        logger.propagate = False
        logger.warning("one line")
        [record] = seen
        assert (record.funcName, record.lineno) == ("(unknown function)", 0)
    finally:
        (logging._srcfile, root.handlers[:], level, logging.logThreads,
         logging.logProcesses, logging.logMultiprocessing) = saved
        root.setLevel(level)
