"""The access log `gateway serve` uses: one JSON line per request, batched per loop turn."""

from __future__ import annotations

import asyncio
import json
import os

from gateway.accesslog import StderrAccessLog


async def test_lines_of_one_loop_turn_go_out_in_one_write():
    read_fd, write_fd = os.pipe()
    try:
        log = StderrAccessLog(write_fd)
        for i in range(3):
            log.write({"request_id": f"r{i}", "status": 200})
        os.set_blocking(read_fd, False)
        try:
            assert os.read(read_fd, 4096) == b""
        except BlockingIOError:
            pass                          # nothing written yet: the turn is not over
        await asyncio.sleep(0)
        lines = os.read(read_fd, 4096).decode().splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == ["r0", "r1", "r2"]
        log.write({"request_id": "last"})
        log.flush()                       # what app cleanup does at shutdown
        assert json.loads(os.read(read_fd, 4096))["request_id"] == "last"
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_a_closed_stderr_does_not_break_the_gateway():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    log = StderrAccessLog(write_fd)
    log.write({"request_id": "x"})
    log.flush()                           # EPIPE is swallowed
    os.close(write_fd)
