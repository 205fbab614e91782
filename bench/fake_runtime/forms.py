"""multipart/form-data as an upload to the audio APIs arrives: its fields and its file."""

from __future__ import annotations

from typing import Any


def _disposition(head: bytes) -> dict[str, str]:
    """The parameters of a part's Content-Disposition (name, filename)."""
    out: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() != "content-disposition":
            continue
        for param in value.split(";")[1:]:
            key, _, given = param.strip().partition("=")
            out[key.lower()] = given.strip('"')
    return out


def form_fields(content_type: str, raw: bytes) -> dict[str, Any] | None:
    """The text fields as strings (`stream` as a bool), the file as `file`: (filename,
    bytes); None when the body is not a form."""
    _, _, boundary = content_type.partition("boundary=")
    boundary = boundary.split(";")[0].strip().strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        return None
    fields: dict[str, Any] = {}
    for part in raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part[2:].partition(b"\r\n\r\n")
        info = _disposition(head)
        if not sep or "name" not in info:
            return None
        data = data[:-2] if data.endswith(b"\r\n") else data
        if "filename" in info:
            fields[info["name"]] = (info["filename"], data)
        else:
            fields[info["name"]] = data.decode("utf-8", errors="replace")
    fields["stream"] = fields.get("stream") == "true"
    return fields
