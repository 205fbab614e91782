"""The fake runtime's switches and counters, and the server that a start() gives."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from collections import Counter
from typing import Any, Callable

import orjson
from multidict import CIMultiDictProxy

from . import formats
from .formats_messages import Answer
from .protocol import Connection

HOST = "127.0.0.1"
COUNTERS = ("answered", "health_checks", "in_flight", "streams", "events", "usage_events",
            "cancelled")


@dataclass
class Behaviour:
    """How a runtime answers a POST: the switches of all its models, or of one."""

    words: int = 5                    # tokens per answer: "w0 w1 ..."
    hang_s: float = 0.0               # wait this long before sending anything
    ttft_s: float = 0.0               # a stream's headers go out, then this wait
    chunk_delay: float = 0.0          # seconds after each streamed token
    status: int = 200                 # answer every request with this status...
    fail_times: int | None = None     # ...for this many requests only (None = always)
    retry_after: str | None = None
    close_after: int | None = None    # break a stream after this many tokens
    first_event_error: bool = False   # a 200 stream whose first event is an error
    send_usage: bool = True
    # Stream quirks of stuck or unusual runtimes (off: a plain stream).
    keepalives: int = 0               # `: keepalive` comments before the first event...
    keepalive_every_s: float = 0.05   # ...this far apart
    split_done: bool = False          # write `data: [DONE]\n` and its blank line apart
    done_unterminated: bool = False   # end with `data: [DONE]\n` and no blank line
    chunk_bytes: int = 0              # pad each token chunk to about this many bytes
    null_usage: bool = False          # `"usage": null` on every chunk, as OpenAI's API does

    def failing(self) -> bool:
        """Whether this request gets `status` (a limited failure counts one down)."""
        if self.status == 200:
            return False
        if self.fail_times is None:
            return True
        if self.fail_times > 0:
            self.fail_times -= 1
            return True
        return False


@dataclass
class FakeRuntime(Behaviour):
    """One fake model server. Flip the switches from a test to make it misbehave."""

    kind: str = "vllm"
    models: tuple[str, ...] = ("meta-llama/Llama-3.1-8B-Instruct",)
    # A model listed here answers by its own switches alone (defaults where not set).
    by_model: dict[str, Behaviour] = field(default_factory=dict)
    health_status: int = 200
    spaced_json: bool = False         # write `"model": "x"` as Python's json.dumps does
    echo_credentials: bool = False    # error answers quote the credentials they were sent
    extra_headers: dict[str, str] = field(default_factory=dict)   # on every POST's answer
    tokens_from_request: bool = False  # `max_tokens` sets the tokens (the benchmark's use)
    missing: tuple[str, ...] = ()     # POST paths it does not serve (404), e.g. /v1/messages
    answer: Answer | None = None      # a scripted chat and Messages answer, else `words`
    error_body: dict[str, Any] | None = None   # a failure's body, else the API's own
    tokenizer: str = "vllm"           # the /tokenize format: "vllm" or "llamacpp"
    deletes: bool = False             # serves DELETE /v1/responses/{id} (vLLM does not: 405)
    # As llama-server's Responses: nothing stored (a follow-up is a 400, a retrieve a 404),
    # and a stream's `response.completed` without `output`.
    stateless_responses: bool = False
    transcript_done_event: bool = True   # OpenAI's transcript.text.done, else vLLM's [DONE]
    # GET path -> its text, or what makes it on each GET (a runtime's own load: /metrics,
    # /slots, /api/ps); `pages_fault` makes them all misbehave; `unsupported` ones answer
    # 501, as llama-server's /metrics without --metrics.
    pages: dict[str, str | Callable[[], str]] = field(default_factory=dict)
    pages_fault: str = "ok"           # ok | hang (never answers) | 500 | 404 | garbage
    # A batch of `slots` requests at once (vLLM's max_num_seqs, llama-server's -np), the
    # rest queued in order; /metrics then says so in vLLM's format (KV usage: half the
    # batch's occupancy), and a whole answer takes its tokens' time, as a stream does.
    slots: int = 0                    # 0: no batch limit
    unsupported: tuple[str, ...] = ()
    record: bool = True               # keep each POST's path, body, headers and peer address
    keep_sent: bool = False           # keep every stream byte written, in `sent`
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_paths: list[str] = field(default_factory=list)
    headers_seen: list[CIMultiDictProxy[str]] = field(default_factory=list)
    peers: list[tuple] = field(default_factory=list)   # the caller's address per POST
    sent: bytearray = field(default_factory=bytearray)
    scrapes: Counter[str] = field(default_factory=Counter)   # GETs of each page
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)   # responses by id
    created: list[str] = field(default_factory=list)     # the ids of responses made here
    followups: list[str] = field(default_factory=list)   # previous_response_id received
    stored_calls: list[tuple[str, str]] = field(default_factory=list)   # (method, path?query)
    answered: int = 0                 # POSTs read
    health_checks: int = 0
    in_flight: int = 0                # streams being written
    streams: int = 0
    events: int = 0                   # SSE events sent, usage events excluded
    usage_events: int = 0
    cancelled: int = 0                # answers whose caller went away before the end
    running: int = 0                  # in the batch (with `slots`)
    waiting: int = 0                  # queued for it
    served: int = 0                   # answers the batch finished

    def __post_init__(self) -> None:
        # Switches may come as JSON (the command line): lists and plain objects.
        self.models = tuple(self.models)
        self.missing = tuple(self.missing)
        self.by_model = {m: b if isinstance(b, Behaviour) else Behaviour(**b)
                         for m, b in self.by_model.items()}
        self.batch: asyncio.Semaphore | None = None   # made in the loop that serves
        if self.slots and "/metrics" not in self.pages:
            self.pages["/metrics"] = self.batch_load

    def batch_load(self) -> str:
        """/metrics of a runtime with `slots`: what its batch holds now."""
        return formats.vllm_load(self.models[0], self.running, self.waiting,
                                 0.5 * self.running / self.slots, self.served)

    async def start(self, host: str = HOST, port: int = 0) -> FakeServer:
        """Listen in the running loop; port 0 takes a free one."""
        conns: set[Connection] = set()
        if self.slots:
            self.batch = asyncio.Semaphore(self.slots)
        server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self, conns), host, port, backlog=4096, reuse_address=True)
        return FakeServer(server, conns)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode() if self.spaced_json else orjson.dumps(obj)

    def paths(self) -> list[str]:
        """The path of every POST read, in order."""
        return list(self.request_paths)

    def posts(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, body) of every POST read, in order."""
        return list(zip(self.request_paths, self.requests))

    def uploads(self) -> list[dict[str, Any]]:
        """Every form upload read: its model, file name, file bytes and all its fields."""
        return [{"model": body.get("model"), "filename": body["file"][0],
                 "data": body["file"][1], "fields": body}
                for body in self.requests if isinstance(body.get("file"), tuple)]

    def stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


class FakeServer:
    """A listening FakeRuntime. close() drops its open connections too, as a dead runtime."""

    def __init__(self, server: asyncio.Server, conns: set[Connection]) -> None:
        self._server = server
        self._conns = conns
        self.host, self.port = server.sockets[0].getsockname()[:2]

    @property
    def connections(self) -> int:
        """How many connections are open to it now."""
        return len(self._conns)

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    async def close(self, grace_s: float = 5) -> None:
        """Shut down as a runtime does: stop listening and hang up on idle connections at
        once; answers under way may finish for `grace_s`, then their connections go too."""
        self._server.close()
        for conn in list(self._conns):
            conn.shut_down()
        tasks = [c.task for c in self._conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for conn in list(self._conns):
            conn.transport.abort()
        await self._server.wait_closed()
