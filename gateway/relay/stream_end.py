"""How a relayed answer is read whole, and how a relayed stream ends early, alike for
every API that relays one.

A whole answer is read in one go, timed as upstream wait and as its first and last
token (`read_whole`); a failure on the way gives the backend back at once.

A stream is cancelled either because its client left or because the gateway's own
drain deadline cut it (`drain_cut` tells the two apart and takes our cancel back); a
connection that breaks under a write is a client gone (`client_gone`); a client that
stops reading is cut by server.client_idle_s (`cut_slow_client`). After a clean end
the runtime's last bytes are read (`drain_runtime`), so its connection is reused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from aiohttp import web

from ..dispatch import Opened
from ..server.drain import Drain
from ..errors import ClientTooSlow, GatewayError, Reason, ShuttingDown, UpstreamError
from ..record import RequestRecord

CLIENT_GONE = (ConnectionResetError, ConnectionError)
DRAIN_AFTER_DONE_S = 1.0
SLOW_CLIENT_GRACE_S = 1.0   # for the error event to a client cut by server.client_idle_s


async def read_whole(opened: Opened, rec: RequestRecord,
                     shape: Callable[[bytes], Any] | None = None) -> Any:
    """The runtime's whole answer (or what `shape` makes of it, timed with the read).

    A failure while reading or shaping gives the backend back with it; after a success
    the caller finishes `opened` once the client has the answer.
    """
    started = time.perf_counter()
    try:
        body = await opened.response.read()
        shaped = body if shape is None else shape(body)
    except BaseException as exc:
        opened.finish(exc)
        raise
    rec.first_token_at = rec.last_token_at = now = time.perf_counter()
    rec.upstream_wait += now - started
    return shaped


def drain_cut(drain: Drain, task: asyncio.Task, rec: RequestRecord) -> bool:
    """After a CancelledError: True when our drain deadline cut the stream (the cancel is
    taken back, so the relay can still end it); False for a client that left, whose
    cancellation the caller raises on."""
    if not drain.was_cut(task):
        rec.aborted = Reason.CLIENT_LEFT
        return False
    task.uncancel()
    rec.aborted = Reason.SHUTDOWN
    return True


async def end_drain_cut(resp: web.StreamResponse,
                        error_event: Callable[[GatewayError], bytes]) -> None:
    """End a stream our drain deadline cut with the API's error event, not silence."""
    await try_write(resp, error_event(ShuttingDown(
        "the gateway is shutting down and its drain time ran out")))


def client_gone(opened: Opened, rec: RequestRecord) -> None:
    """The client's connection broke under a write: the runtime's stream is let go."""
    opened.response.close()
    rec.aborted = Reason.CLIENT_LEFT
    rec.status = 499


async def cut_slow_client(request: web.Request, resp: web.StreamResponse,
                          rec: RequestRecord, client_idle_s: float,
                          rewriter: Any) -> ClientTooSlow:
    """End the stream of a client that stopped reading with an error event, which it
    gets if it reads again; its connection is closed in any case."""
    err = ClientTooSlow(f"the client read nothing for {client_idle_s:g} s "
                        "(server.client_idle_s); the stream was cut")
    rec.aborted = Reason.CLIENT_SLOW
    rec.error = err.message
    resp.force_close()
    task = asyncio.current_task()
    try:
        async with asyncio.timeout(min(client_idle_s, SLOW_CLIENT_GRACE_S)):
            await resp.write(rewriter.error_event(err))
            await resp.write_eof()
        return err
    except asyncio.CancelledError:
        if task is None or task.cancelling():
            raise   # a real cancellation
        # No one cancelled this task: aiohttp's drain waiter is the future the cut
        # cancelled, and stays so until the client reads. The bytes are buffered.
    except (TimeoutError, *CLIENT_GONE):
        pass
    transport = request.transport
    if transport is not None:
        # What is buffered, the error event included, still goes out if the client
        # reads again soon; a client that never does is dropped.
        transport.close()
        asyncio.get_running_loop().call_later(client_idle_s, transport.abort)
    return err


async def drain_runtime(opened: Opened, task: asyncio.Task) -> None:
    """Read the runtime's last bytes after [DONE] (or the terminal event), so its
    connection goes back to the pool.

    The client already has the whole answer: if it leaves now, the stream still counts
    as complete, not as a client that left.
    """
    try:
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in opened.chunks:
                pass
    except asyncio.CancelledError:
        task.uncancel()
        opened.response.close()
    except (TimeoutError, UpstreamError):
        opened.response.close()


async def try_write(resp: web.StreamResponse, data: bytes) -> None:
    """A last write that may fail: the client may be gone already."""
    try:
        await resp.write(data)
    except (asyncio.CancelledError, *CLIENT_GONE):
        pass
