"""A fake runtime for the APIs beyond chat: Responses (stored), audio, speech, images,
rerank, score and the tokenizer, in the formats the real runtimes use (vLLM's
Responses, rerank, score and tokenizer; OpenAI's transcription events and images).

Kept apart from tests/fakes.py so that file stays the chat/completions fake.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeApis:
    models: tuple[str, ...] = ("meta-llama/Llama-3.1-8B-Instruct",)
    words: int = 4
    serves_delete: bool = False       # vLLM serves no DELETE /v1/responses/{id}
    close_after: int | None = None    # break a stream after this many events / chunks
    first_event_error: bool = False   # a Responses stream whose first event is an error
    transcript_done_event: bool = True   # OpenAI's transcript.text.done, else vLLM's [DONE]
    chunk_delay: float = 0.0
    created: list[str] = field(default_factory=list)        # response ids made here
    followups: list[str] = field(default_factory=list)      # previous_response_id received
    stored_calls: list[tuple[str, str]] = field(default_factory=list)   # (method, path)
    requests: list[tuple[str, Any]] = field(default_factory=list)       # (path, body)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    _stored: dict[str, dict] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 ** 2)
        r = app.router
        r.add_get("/health", self._health)
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/responses", self._create)
        r.add_get("/v1/responses/{rid}", self._retrieve)
        r.add_post("/v1/responses/{rid}/cancel", self._retrieve)
        if self.serves_delete:
            r.add_delete("/v1/responses/{rid}", self._delete)
        for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
            r.add_post(path, self._rerank)
        r.add_post("/v1/score", self._score)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        r.add_post("/v1/audio/transcriptions", self._transcribe)
        r.add_post("/v1/audio/translations", self._transcribe)
        r.add_post("/v1/audio/speech", self._speech)
        r.add_post("/v1/images/generations", self._images)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model"} for m in self.models]})

    # -- Responses -----------------------------------------------------------------------

    def _response(self, body: dict) -> dict:
        rid = "resp_" + uuid.uuid4().hex
        text = " ".join(f"w{i}" for i in range(self.words))
        return {"id": rid, "object": "response", "created_at": int(time.time()),
                "status": "completed", "model": body["model"], "error": None,
                "previous_response_id": body.get("previous_response_id"),
                "output": [{"id": "msg_" + rid[5:], "type": "message", "status": "completed",
                            "role": "assistant", "content": [
                                {"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": 7, "output_tokens": self.words,
                          "total_tokens": 7 + self.words}}

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        previous = body.get("previous_response_id")
        if previous is not None:
            self.followups.append(previous)
            if previous not in self._stored:
                return web.json_response({"error": {"message": f"no response {previous}",
                                                    "type": "invalid_request_error"}},
                                         status=404)
        done = self._response(body)
        self.created.append(done["id"])
        self._stored[done["id"]] = done
        if not body.get("stream"):
            return web.json_response(done)
        return await self._events(request, done)

    async def _events(self, request: web.Request, done: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        going = {**done, "status": "in_progress", "output": [], "usage": None}
        item_id = done["output"][0]["id"]
        events: list[tuple[str, dict]] = [("response.created", {"response": going}),
                                          ("response.in_progress", {"response": going})]
        if self.first_event_error:
            events = [("error", {"code": "server_error", "message": "model overloaded"})]
        else:
            events += [("response.output_item.added", {"output_index": 0, "item": {
                "id": item_id, "type": "message", "status": "in_progress", "content": []}})]
            events += [("response.output_text.delta", {"item_id": item_id, "output_index": 0,
                                                       "content_index": 0, "delta": f" w{i}"})
                       for i in range(self.words)]
            events += [("response.output_item.done", {"output_index": 0,
                                                      "item": done["output"][0]}),
                       ("response.completed", {"response": done})]
        for seq, (kind, data) in enumerate(events):
            if self.close_after is not None and seq >= self.close_after:
                request.transport.close()
                return resp
            payload = json.dumps({"type": kind, "sequence_number": seq, **data},
                                 separators=(",", ":"))
            await resp.write(f"event: {kind}\ndata: {payload}\n\n".encode())
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    async def _retrieve(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        self.stored_calls.append((request.method, request.path_qs))
        if rid not in self._stored:
            return web.json_response({"error": {"message": "Response not found",
                                                "type": "invalid_request_error"}}, status=404)
        if request.method == "GET" and request.query.get("stream") == "true":
            return await self._events(request, self._stored[rid])
        return web.json_response(self._stored[rid])

    async def _delete(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        self.stored_calls.append((request.method, request.path_qs))
        self._stored.pop(rid, None)
        return web.json_response({"id": rid, "object": "response", "deleted": True})

    # -- rerank, score, tokenizer --------------------------------------------------------

    async def _rerank(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        return web.json_response({"id": "rerank-1", "model": body["model"],
                                  "usage": {"total_tokens": 11},
                                  "results": [{"index": i, "relevance_score": 1 / (i + 1)}
                                              for i in range(len(body["documents"]))]})

    async def _score(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        return web.json_response({"id": "score-1", "object": "list", "model": body["model"],
                                  "data": [{"index": 0, "object": "score", "score": 0.5}],
                                  "usage": {"prompt_tokens": 9, "total_tokens": 9}})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        tokens = list(range(len(body["prompt"].split())))
        return web.json_response({"count": len(tokens), "max_model_len": 8192,
                                  "tokens": tokens, "token_strs": None})

    async def _detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        return web.json_response({"prompt": " ".join(f"t{t}" for t in body["tokens"])})

    # -- audio and images ----------------------------------------------------------------

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form["file"]
        self.uploads.append({"model": form.get("model"), "filename": upload.filename,
                             "data": upload.file.read(), "fields": dict(form)})
        text = " ".join(f"w{i}" for i in range(self.words))
        if form.get("stream") != "true":
            return web.json_response({"text": text, "usage": {
                "type": "tokens", "input_tokens": 20, "output_tokens": self.words,
                "total_tokens": 20 + self.words}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.words):
            if self.close_after is not None and i >= self.close_after:
                request.transport.close()
                return resp
            if self.transcript_done_event:
                chunk = {"type": "transcript.text.delta", "delta": f" w{i}"}
            else:
                chunk = {"object": "transcription.chunk", "model": form.get("model"),
                         "choices": [{"delta": {"content": f" w{i}"}}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if self.transcript_done_event:
            await resp.write(b"data: " + json.dumps({"type": "transcript.text.done",
                                                     "text": text}).encode() + b"\n\n")
        else:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        for i in range(self.words):
            if self.close_after is not None and i >= self.close_after:
                request.transport.close()
                return resp
            await resp.write(bytes([i]) * 1000)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    async def _images(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        return web.json_response({"created": int(time.time()),
                                  "data": [{"b64_json": "aGk=" * 2000}],
                                  "usage": {"input_tokens": 12, "output_tokens": 30,
                                            "total_tokens": 42,
                                            "input_tokens_details": {"text_tokens": 12}}})
