"""Secret scrubbing: credentials the gateway sent to a runtime never reach a client.

A runtime may echo the key it was sent in an error body; every credential of the
backend (its api_key, secret-looking headers) is replaced by "***" before the body
goes anywhere, raw or JSON-escaped.
"""

from __future__ import annotations

import orjson

from ..config import REDACTED, SECRET_HEADER, BackendConfig


def backend_secrets(backend: BackendConfig) -> list[str]:
    secrets = [v for h, v in backend.headers.items() if v and SECRET_HEADER.search(h)]
    if backend.api_key:
        secrets.append(backend.api_key)
    return secrets


def scrub_secrets(data: bytes, backend: BackendConfig) -> bytes:
    """`data` with every credential sent to `backend` replaced by "***" (raw or JSON-escaped)."""
    for secret in backend_secrets(backend):
        for form in {secret.encode(), orjson.dumps(secret)[1:-1]}:
            if form in data:
                data = data.replace(form, REDACTED.encode())
    return data


def scrub_text(text: str, backend: BackendConfig) -> str:
    return scrub_secrets(text.encode(errors="replace"), backend).decode(errors="replace")
