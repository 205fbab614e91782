"""A Config as plain data with every secret masked (for GET /admin/config)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from .types import Config

# Header names that carry a credential (Azure's api-key, x-api-key, ...).
SECRET_HEADER = re.compile(r"auth|cookie|key|token|secret|passw", re.I)
_URL_PASSWORD = re.compile(r"(//[^/@:]*):[^/@]*@")
REDACTED = "***"


def redacted(cfg: Config) -> dict:
    """The config as plain data (for GET /admin/config) with every secret replaced by "***"."""
    data = _as_data(cfg)
    data["server"]["admin_key"] = _mask(cfg.server.admin_key)
    for b in data["backends"].values():
        b["api_key"] = _mask(b["api_key"])
        b["url"] = url_without_password(b["url"])
        if b["wake"] is not None:
            b["wake"]["url"] = url_without_password(b["wake"]["url"])
        # Some runtimes take their key in a header (Azure's api-key, x-api-key).
        b["headers"] = {h: REDACTED if SECRET_HEADER.search(h) else v
                        for h, v in b["headers"].items()}
    for key in data["auth_keys"]:
        key["key"] = REDACTED
    if data["tracing"] is not None:
        data["tracing"]["otlp_endpoint"] = url_without_password(data["tracing"]["otlp_endpoint"])
    if data["state"]["redis"]:
        data["state"]["redis"] = url_without_password(data["state"]["redis"])
    return data


def url_without_password(url: str) -> str:
    """A URL's `user:password@` shown as `user:***@`."""
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", url)


def _mask(secret: str | None) -> str | None:
    return REDACTED if secret else secret   # None stays visible: "not set" is not a secret


def _as_data(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _as_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _as_data(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_as_data(v) for v in obj]
    return obj
