"""A fast fake OpenAI-compatible runtime for the speed benchmark: raw asyncio on uvloop.

It must cost far less CPU per request than anything measured through it, so it
is a bare HTTP/1.1 protocol, not a web framework: keep-alive, Content-Length
request bodies, JSON answers and SSE streams as chunked transfer encoding.

    python -m bench.fake_runtime --port 9001 --ttft-ms 0 --chunk-ms 20

`max_tokens` in the request sets the tokens per answer (default --tokens). A
stream writes one SSE event per token, a finish event, a usage event when
`stream_options.include_usage` is set, then `data: [DONE]`; each event goes out
as its own write, `--chunk-ms` apart. GET /stats returns what was sent, so the
benchmark can compare chunks received with chunks sent. POST /v1/messages answers in
Anthropic's format (whole, or one SSE event per token), for the Messages benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

MAX_HEAD = 64 * 1024
MAX_TOKENS = 4096


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.streams = 0
        self.events = 0          # SSE events sent, usage events excluded
        self.usage_events = 0
        self.broken = 0          # streams whose client went away before the end


class Runtime:
    def __init__(self, tokens: int, ttft_s: float, chunk_s: float) -> None:
        self.tokens = tokens
        self.ttft_s = ttft_s
        self.chunk_s = chunk_s
        self.stats = Stats()


class RuntimeProtocol(asyncio.Protocol):
    __slots__ = ("rt", "transport", "buf", "busy", "closed")

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False        # a stream is being written: later requests wait in buf
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        """Answer every complete request in the buffer (in order; a stream pauses this)."""
        while not self.busy:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head = self.buf[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4:end]
            self.buf = self.buf[end:]
            method, path = head.split(b" ", 2)[:2]
            self._handle(method, path, body)

    def _handle(self, method: bytes, path: bytes, body: bytes) -> None:
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self._chat(body)
        elif method == b"POST" and path.endswith(b"/v1/messages"):
            self._messages(body)
        elif path in (b"/health", b"/v1/health"):
            self._send(200, b"{}")
        elif path in (b"/v1/models", b"/models"):
            self._send(200, b'{"object":"list","data":[]}')
        elif path == b"/stats":
            s = self.rt.stats
            self._send(200, orjson.dumps({"requests": s.requests, "streams": s.streams,
                                          "events": s.events, "usage_events": s.usage_events,
                                          "broken": s.broken}))
        else:
            self._send(404, b'{"error":{"message":"not found"}}')

    def _send(self, status: int, body: bytes) -> None:
        reason = b"OK" if status == 200 else b"Not Found"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(body), body))

    def _chat(self, body: bytes) -> None:
        rt = self.rt
        rt.stats.requests += 1
        req = orjson.loads(body)
        model = req.get("model", "")
        tokens = min(int(req.get("max_tokens") or rt.tokens), MAX_TOKENS)
        if req.get("stream"):
            options = req.get("stream_options") or {}
            self.busy = True
            asyncio.get_running_loop().create_task(
                self._stream(model, tokens, bool(options.get("include_usage"))))
            return
        text = " ".join(["tok"] * tokens)
        answer = orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {
                "role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": tokens,
                      "total_tokens": 8 + tokens}})
        if rt.ttft_s:
            self.busy = True
            asyncio.get_running_loop().call_later(rt.ttft_s, self._late_answer, answer)
        else:
            self._send(200, answer)

    def _late_answer(self, answer: bytes) -> None:
        if not self.closed:
            self._send(200, answer)
            self.busy = False
            self._drain()

    async def _stream(self, model: str, tokens: int, usage: bool) -> None:
        rt, stats = self.rt, self.rt.stats
        stats.streams += 1
        created = int(time.time())
        prefix = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,'
                  b'"model":%s,"choices":[' % (created, orjson.dumps(model)))
        write = self.transport.write
        write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        if rt.ttft_s:
            await asyncio.sleep(rt.ttft_s)
        events = [prefix + b'{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
                  ] * tokens
        events.append(prefix + b'{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
        if usage:
            events.append(prefix + b'],"usage":{"prompt_tokens":8,"completion_tokens":%d,'
                          b'"total_tokens":%d}}\n\n' % (tokens, tokens + 8))
        events.append(b"data: [DONE]\n\n")
        last = len(events) - 1
        for i, event in enumerate(events):
            if self.closed:
                stats.broken += 1
                return
            write(b"%x\r\n%s\r\n" % (len(event), event))
            if usage and i == last - 1:
                stats.usage_events += 1
            else:
                stats.events += 1
            if rt.chunk_s and i < last:
                await asyncio.sleep(rt.chunk_s)
        write(b"0\r\n\r\n")
        self.busy = False
        self._drain()


    # -- Anthropic's /v1/messages, as vLLM and llama-server serve it ----------------------

    def _messages(self, body: bytes) -> None:
        rt = self.rt
        rt.stats.requests += 1
        req = orjson.loads(body)
        model = req.get("model", "")
        tokens = min(int(req.get("max_tokens") or rt.tokens), MAX_TOKENS)
        if req.get("stream"):
            self.busy = True
            asyncio.get_running_loop().create_task(self._message_stream(model, tokens))
            return
        self._send(200, orjson.dumps({
            "id": "msg_bench", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": " ".join(["tok"] * tokens)}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 8, "output_tokens": tokens}}))

    async def _message_stream(self, model: str, tokens: int) -> None:
        """One event per token, each its own write, `--chunk-ms` apart, like _stream."""
        rt, stats = self.rt, self.rt.stats
        stats.streams += 1
        start = orjson.dumps({"type": "message_start", "message": {
            "id": "msg_bench", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 8, "output_tokens": 0}}})
        events = [b"event: message_start\ndata: " + start + b"\n\n",
                  b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                  b'"content_block":{"type":"text","text":""}}\n\n']
        events += [b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                   b'"delta":{"type":"text_delta","text":"tok "}}\n\n'] * tokens
        events += [b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}'
                   b"\n\n",
                   b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
                   b'"end_turn","stop_sequence":null},"usage":{"output_tokens":%d}}\n\n' % tokens,
                   b'event: message_stop\ndata: {"type":"message_stop"}\n\n']
        write = self.transport.write
        write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        if rt.ttft_s:
            await asyncio.sleep(rt.ttft_s)
        last = len(events) - 1
        for i, event in enumerate(events):
            if self.closed:
                stats.broken += 1
                return
            write(b"%x\r\n%s\r\n" % (len(event), event))
            stats.events += 1
            if rt.chunk_s and i < last:
                await asyncio.sleep(rt.chunk_s)
        write(b"0\r\n\r\n")
        self.busy = False
        self._drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer by default")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the answer")
    parser.add_argument("--chunk-ms", type=float, default=0.0, help="delay between events")
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    rt = Runtime(args.tokens, args.ttft_ms / 1000, args.chunk_ms / 1000)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: RuntimeProtocol(rt), args.host, args.port,
                                          backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
