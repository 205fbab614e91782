"""The one relay: every streamed answer, of any format, goes to its client here.

`relay` drives a stream format (`formats.StreamFormat`) over an opened try, and owns
every way a stream ends:

    the end event            the format says it is out: the runtime's last bytes are
                             drained, so its connection is reused
    the runtime's close      clean if the format says so, else a break
    an upstream break        the format's error event (bytes: the connection is cut)
    the client leaving       a cancel, or a write that fails: the runtime is let go
    a slow client            one write waiting server.client_idle_s (`ClientWatch`): the
                             stream ends with the error event, logged as client_slow
    the drain cut            SIGTERM's server.drain_s ran out: the error event

Whatever way it ended, the backend is given back once, with why (`Opened.finish`), and
the usage the stream reported is the record's.
"""

from __future__ import annotations

import asyncio
import time
from aiohttp import web

from ..dispatch import Opened
from ..errors import ClientTooSlow, Reason, ShuttingDown, UpstreamError
from ..record import RequestRecord
from .drain import Drain
from .clientwatch import ClientWatch
from .formats import StreamFormat

CLIENT_GONE = (ConnectionResetError, ConnectionError)
DRAIN_AFTER_DONE_S = 1.0
SLOW_CLIENT_GRACE_S = 1.0   # for the error event to a client cut by server.client_idle_s


async def relay(request: web.Request, resp: web.StreamResponse, opened: Opened,
                fmt: StreamFormat, rec: RequestRecord, drain: Drain,
                client_idle_s: float) -> web.StreamResponse:
    """Send `opened`'s stream to the client as `resp` (stamped, not prepared yet)."""
    error: BaseException | None = None
    task = asyncio.current_task()
    assert task is not None
    watch = ClientWatch(task, client_idle_s)
    drain.track(task)
    try:
        try:
            await resp.prepare(request)
            try:
                await _pump(resp, opened, fmt, rec, watch)
            except UpstreamError as err:
                error = err
                await _broken(request, resp, fmt, rec, err, watch)
                return resp
            watch.since = time.perf_counter()
            await resp.write_eof()
        except asyncio.CancelledError:
            opened.response.close()
            if watch.fired:
                # Our own cut: the client read nothing for client_idle_s.
                task.uncancel()
                error = await _cut_slow_client(request, resp, rec, client_idle_s, fmt)
                return resp
            if not _drain_cut(drain, task, rec):
                raise
            await _end_drain_cut(request, resp, fmt)
            return resp
        except CLIENT_GONE as exc:
            opened.response.close()
            rec.aborted, rec.status = Reason.CLIENT_LEFT, 499
            error = exc
            return resp
        finally:
            watch.cancel()
            drain.untrack(task)
            rec.usage = fmt.usage
        if fmt.failed is not None:
            # The client has the runtime's own error event: the stream counts as broken
            # off, but the runtime said what went wrong, so it is no verdict on its health.
            rec.aborted, rec.error = Reason.STREAM_ERROR, fmt.failed
        await _drain_runtime(opened, task)
        return resp
    except BaseException as exc:
        error = exc
        raise
    finally:
        opened.finish(error)


async def _pump(resp: web.StreamResponse, opened: Opened, fmt: StreamFormat,
                rec: RequestRecord, watch: ClientWatch) -> None:
    """Pass the stream through chunk by chunk until the format's end; the runtime's close
    before it is a break. `watch` times each write to the client. One loop, no layer in
    between: every chunk resumes each coroutine awaiting it."""
    clock = time.perf_counter
    out = fmt.feed(opened.first)
    if fmt.saw_token:
        rec.first_token_at = rec.last_token_at = clock()
    if out:
        watch.since = clock()
        await resp.write(out)
        watch.since = 0.0
    if fmt.finished:
        return
    waited = clock()
    async for data in opened.chunks:   # type: ignore[union-attr]
        now = clock()
        rec.upstream_wait += now - waited
        out = fmt.feed(data)
        if fmt.saw_token:
            if rec.first_token_at is None:
                rec.first_token_at = now
            rec.last_token_at = now
        if out:
            watch.since = now
            await resp.write(out)
            watch.since = 0.0
        if fmt.finished:
            return
        waited = clock()
    out = fmt.flush()
    if out:
        watch.since = clock()
        await resp.write(out)
        watch.since = 0.0
    if not fmt.closed_cleanly():
        raise UpstreamError("the runtime closed the stream before it finished",
                            reason=Reason.UPSTREAM_CLOSED)


async def _broken(request: web.Request, resp: web.StreamResponse, fmt: StreamFormat,
                  rec: RequestRecord, err: UpstreamError, watch: ClientWatch) -> None:
    """The runtime broke off after the first byte: the client is told in the format's
    error event, or, for a format that has none, the connection is cut before its end."""
    rec.aborted, rec.error = err.reason, err.message
    event = fmt.error_event(err)
    if event is None:
        _close(request)
        return
    watch.since = time.perf_counter()
    await resp.write(event)
    await resp.write_eof()
    watch.since = 0.0


def _drain_cut(drain: Drain, task: asyncio.Task, rec: RequestRecord) -> bool:
    """After a CancelledError: True when our drain deadline cut the stream (the cancel is
    taken back, so the relay can still end it); False for a client that left, whose
    cancellation the caller raises on."""
    if not drain.was_cut(task):
        rec.aborted = Reason.CLIENT_LEFT
        return False
    task.uncancel()
    rec.aborted = Reason.SHUTDOWN
    return True


async def _end_drain_cut(request: web.Request, resp: web.StreamResponse,
                         fmt: StreamFormat) -> None:
    """End a stream our drain deadline cut with the format's error event, not silence."""
    event = fmt.error_event(ShuttingDown(
        "the gateway is shutting down and its drain time ran out"))
    if event is None:
        _close(request)
        return
    try:
        await resp.write(event)
        await resp.write_eof()
    except (asyncio.CancelledError, *CLIENT_GONE):
        pass


async def _cut_slow_client(request: web.Request, resp: web.StreamResponse,
                           rec: RequestRecord, client_idle_s: float,
                           fmt: StreamFormat) -> ClientTooSlow:
    """End the stream of a client that stopped reading with the format's error event,
    which it gets if it reads again; its connection is closed in any case."""
    err = ClientTooSlow(f"the client read nothing for {client_idle_s:g} s "
                        "(server.client_idle_s); the stream was cut")
    rec.aborted = Reason.CLIENT_SLOW
    rec.error = err.message
    resp.force_close()
    event = fmt.error_event(err)
    task = asyncio.current_task()
    if event is not None:
        try:
            async with asyncio.timeout(min(client_idle_s, SLOW_CLIENT_GRACE_S)):
                await resp.write(event)
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


async def _drain_runtime(opened: Opened, task: asyncio.Task) -> None:
    """Read the runtime's last bytes after the end event, so its connection goes back to
    the pool. The client already has the whole answer: if it leaves now, the stream
    still counts as complete, not as a client that left."""
    try:
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in opened.chunks:   # type: ignore[union-attr]
                pass
    except asyncio.CancelledError:
        task.uncancel()
        opened.response.close()
    except (TimeoutError, UpstreamError):
        opened.response.close()


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


__all__ = ["CLIENT_GONE", "relay"]
