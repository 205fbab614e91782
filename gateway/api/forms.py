"""Multipart uploads (audio transcriptions and translations): read once, sent as slices.

The body is read into one buffer within `server.max_body_mb` (413 as soon as it is
known to be larger); its parts are found in place, and only the small text fields
are decoded. The upload goes to the runtime as slices of that same buffer, with the
`model` field's value swapped for the runtime's id, so the file is never copied:
one copy of it is in memory, however many backends are tried.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any, Callable

from aiohttp import web
from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import parse_content_disposition
from aiohttp.payload import Payload

from ..endpoints import Body, Endpoint
from ..errors import BadRequest, BodyTooLarge, RequestTimeout

READ_TIMEOUT_S = 60
MAX_FIELD = 64 * 1024       # a text field larger than this is not kept (only files are big)
MAX_PARTS = 256
WRITE_SLICE = 256 * 1024    # written to the runtime in pieces of at most this


def body_for(endpoint: Endpoint, payload: Any, model_id: str) -> Any:
    """What one backend gets: the body with the model as that backend knows it."""
    if endpoint.body is Body.JSON:
        body = dict(payload)
        body["model"] = model_id
        return body
    if endpoint.body is Body.MULTIPART:
        return payload.for_model(model_id)
    return None


class Form(dict):
    """The form's text fields (`model`, `stream` as a bool, ...), plus where its parts are.

    A dict, so routing and validation read it like a JSON body.
    """

    __slots__ = ("buffer", "content_type", "files", "sizes", "_model_span")

    def __init__(self, buffer: bytearray, content_type: str) -> None:
        super().__init__()
        self.buffer = buffer
        self.content_type = content_type
        self.files: list[str] = []          # names of the parts that carry a filename
        self.sizes: dict[str, int] = {}     # bytes of each of those parts
        self._model_span: tuple[int, int] | None = None

    def for_model(self, model_id: str) -> Upload:
        """The upload for a backend that knows the model as `model_id`."""
        view = memoryview(self.buffer)
        fields = {**self, "model": model_id}
        start, end = self._model_span or (0, 0)
        if self._model_span is None or bytes(view[start:end]) == model_id.encode():
            return Upload((view,), self.content_type, fields, self.sizes)
        return Upload((view[:start], memoryview(model_id.encode()), view[end:]),
                      self.content_type, fields, self.sizes)


class Upload:
    """What goes to one runtime: the slices and the content type with its boundary; the
    text fields and file sizes for a runtime that answers in process."""

    __slots__ = ("slices", "content_type", "fields", "sizes")

    def __init__(self, slices: tuple[memoryview, ...], content_type: str,
                 fields: dict[str, Any], sizes: dict[str, int]) -> None:
        self.slices = slices
        self.content_type = content_type
        self.fields = fields
        self.sizes = sizes

    def payload(self) -> Payload:
        return SlicesPayload(self.slices, content_type=self.content_type)


class SlicesPayload(Payload):
    """An aiohttp payload written from memoryviews, with a Content-Length, never joined."""

    _autoclose = True

    def __init__(self, slices: tuple[memoryview, ...], **kwargs: Any) -> None:
        super().__init__(slices, **kwargs)
        self._size = sum(s.nbytes for s in slices)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        for piece in self._value:
            for at in range(0, piece.nbytes, WRITE_SLICE):
                await writer.write(piece[at:at + WRITE_SLICE])

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await self.write(writer)


async def read_form(request: web.Request, limit: int,
                    noted: Callable[[dict[str, Any]], None] | None = None) -> Form:
    """The request's multipart form, checked: a `model` field and a file are required.
    `noted`: told what the form names (its model, stream flag) before any check refuses it."""
    mime = parse_mimetype(request.headers.get("Content-Type", ""))
    boundary = mime.parameters.get("boundary", "")
    if (mime.type, mime.subtype) != ("multipart", "form-data") or not boundary:
        raise BadRequest("the body must be multipart/form-data with a boundary "
                         "(send the file as the 'file' field)", param="file")
    form = Form(await _read_into_buffer(request, limit), request.headers["Content-Type"])
    _parse(form, boundary.encode("latin-1"))
    if noted is not None:
        noted({"model": form.get("model"),
               "stream": str(form.get("stream", "")).strip().lower() == "true"})
    model = form.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required and must be a non-empty form field", param="model")
    if "file" not in form.files:
        raise BadRequest("'file' is required: the audio as a file field", param="file")
    stream = str(form.get("stream", "false")).strip().lower()
    if stream not in ("true", "false"):
        raise BadRequest("'stream' must be true or false", param="stream")
    form["stream"] = stream == "true"
    return form


async def _read_into_buffer(request: web.Request, limit: int) -> bytearray:
    """The whole body in one buffer, refused with 413 as soon as it exceeds `limit`."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    # Grown as the bytes arrive, never made at the announced size up front: a client
    # announcing max_body_mb and sending nothing must not cost that much memory. (A
    # bytearray over-allocates as it grows, so it is moved a few times at most, and a
    # large one is usually remapped by the allocator rather than copied.)
    buffer = bytearray()
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async for chunk in request.content.iter_any():
                if len(buffer) + len(chunk) > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
                buffer += chunk
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within "
                             f"{READ_TIMEOUT_S:g} s") from None
    except web.RequestPayloadError as exc:
        raise BadRequest(f"the request body could not be read: {exc}") from None
    return buffer


def _parse(form: Form, boundary: bytes) -> None:
    """Find each part in place: text fields are decoded, files only noted."""
    buf, delimiter = form.buffer, b"--" + boundary
    at = buf.find(delimiter)
    if at < 0:
        raise BadRequest("the multipart body has no part with its boundary", param="file")
    for _ in range(MAX_PARTS):
        at += len(delimiter)
        if buf[at:at + 2] == b"--":
            return                                   # the closing delimiter
        head_end = buf.find(b"\r\n\r\n", at)
        end = buf.find(b"\r\n" + delimiter, head_end + 4) if head_end >= 0 else -1
        if end < 0:
            raise BadRequest("the multipart body is cut short", param="file")
        _add_part(form, bytes(buf[at:head_end]), head_end + 4, end)
        at = end + 2
    raise BadRequest(f"the multipart body has more than {MAX_PARTS} parts", param="file")


def _add_part(form: Form, head: bytes, start: int, end: int) -> None:
    disposition = ""
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            disposition = value.strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # aiohttp warns on a malformed header; we answer 400
        _, params = parse_content_disposition(disposition)
    name = params.get("name")
    if not name:
        raise BadRequest("a multipart part has no name in its Content-Disposition",
                         param="file")
    if "filename" in params or "filename*" in params:
        form.files.append(name)
        form.sizes[name] = end - start
        return
    if end - start > MAX_FIELD:
        return
    try:
        form[name] = bytes(form.buffer[start:end]).decode()
    except UnicodeDecodeError:
        raise BadRequest(f"the form field '{name}' is not UTF-8 text", param=name) from None
    if name == "model":
        form._model_span = (start, end)
