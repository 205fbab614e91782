"""The cerberus schema of gateway.yaml and the validator for its custom rules."""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from typing import Any, Iterator
from urllib.parse import SplitResult, urlsplit

import cerberus
from cerberus import errors as cerberus_errors

from .redact import url_without_password
from .types import PRIORITIES, STRATEGIES
from .source import EnvStr, describe
from .kinds import CAPABILITIES, KINDS


def _number(**rules) -> dict:
    return {"type": "number", "coerce": "env_number", "finite": True, **rules}


def _integer(**rules) -> dict:
    return {"type": "integer", "coerce": "env_integer", **rules}


def _string(**rules) -> dict:
    return {"type": "string", "empty": False, **rules}


def _section(schema: dict, **rules) -> dict:
    return {"type": "dict", "nullable": True, "schema": schema, **rules}


def _list_of(item: dict, **rules) -> dict:
    return {"type": "list", "nullable": True, "schema": item, **rules}


_BACKEND = {
    "kind": _string(required=True, allowed=list(KINDS)),
    "url": _string(check_with="url"),
    "api_key": {"type": "string", "nullable": True},
    "weight": _number(gt=0),
    "models": {"type": ["list", "dict"], "nullable": True, "check_with": "models"},
    "max_concurrency": _integer(min=1, nullable=True),
    "capabilities": _section({c: {"type": "boolean", "coerce": "env_boolean"}
                              for c in CAPABILITIES}),
    "headers": {"type": "dict", "nullable": True, "check_with": "headers"},
    "health_path": _string(check_with="health_path"),
    "timeouts": _section({t: _number(gt=0) for t in ("connect_s", "first_byte_s", "idle_s")}),
    "discover": _section({
        "dns": {"type": "boolean", "coerce": "env_boolean", "required": True},
        "interval_s": _number(gt=0),
        "nameservers": _list_of(_string(check_with="nameserver")),
    }),
    "wake": _section({
        "url": _string(required=True, check_with="wake_url"),
        "method": _string(allowed=["GET", "POST", "PUT"]),
    }),
    "engine_priority": {"type": "boolean", "coerce": "env_boolean", "nullable": True},
}

_ROUTE = {
    "strategy": _string(allowed=list(STRATEGIES)),
    "fallbacks": _list_of({"type": "dict",
                           "schema": {"backend": _string(), "model": _string()}}),
    "max_output_tokens": _integer(min=1, nullable=True),
}

_API_KEY = {
    "name": _string(required=True),
    "key": _string(required=True),
    "models": {"type": "list", "empty": False, "schema": _string()},
    "rpm": _integer(gt=0, nullable=True),
    "tpm": _integer(gt=0, nullable=True),
    "priority": _string(allowed=list(PRIORITIES)),
    "share": _number(gt=0),
    "max_concurrency": _integer(min=1, nullable=True),
    "budget": _section({"tokens_per_day": _integer(gt=0, nullable=True),
                        "tokens_per_month": _integer(gt=0, nullable=True)}),
}

SCHEMA = {
    "server": _section({
        "host": _string(),
        "port": _integer(min=1, max=65535),
        "cors_origins": _list_of(_string(check_with="origin")),
        "max_body_mb": _number(gt=0),
        "drain_s": _number(min=0),
        "admin_key": {"type": "string", "nullable": True},
        "client_idle_s": _number(gt=0),
    }),
    "backends": {"type": "dict", "required": True, "empty": False,
                 "keysrules": _string(check_with="name"),
                 "valuesrules": {"type": "dict", "schema": _BACKEND, "check_with": "backend"}},
    "routes": {"type": "dict", "nullable": True, "keysrules": _string(),
               "valuesrules": _section(_ROUTE)},
    "health": _section({
        "interval_s": _number(gt=0),
        "timeout_s": _number(gt=0),
        "unhealthy_after": _integer(min=1),
        "healthy_after": _integer(min=1),
        "cooldown_s": _number(gt=0),
        "max_cooldown_s": _number(gt=0),
    }),
    "retries": _section({"attempts": _integer(min=0), "deadline_s": _number(gt=0)}),
    "queue": _section({"max_wait_s": _number(min=0), "max_size": _integer(min=0),
                       "promote_after_s": _number(gt=0)}),
    "auth": _section({"keys": _list_of({"type": "dict", "schema": _API_KEY})}),
    "engine": _section({
        "interval_s": _number(gt=0),
        "stale_after_s": _number(gt=0),
        "max_queue": _integer(min=0),
        "max_kv_usage": _number(gt=0, max=1),
    }),
    "tracing": _section({
        "otlp_endpoint": _string(check_with="url"),
        "sample_ratio": _number(min=0, max=1),
        "service_name": _string(),
    }),
    "state": _section({"redis": _string(check_with="redis_url"), "sqlite": _string()}),
    "responses": _section({"ttl_s": _number(gt=0), "max_stored": _integer(min=1)}),
}

_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ORIGIN = re.compile(r"https?://[^/?#\s]+")


def _only(types):
    """cerberus still runs check_with after `nullable` or `type` failed; skip those values."""
    def wrap(check):
        @functools.wraps(check)
        def checked(self, field, value):
            if isinstance(value, types):
                check(self, field, value)
        return checked
    return wrap


class Validator(cerberus.Validator):
    # Python's bool is an int: without this, `port: true` would pass as port 1.
    types_mapping = {**cerberus.Validator.types_mapping,
                     "integer": cerberus.TypeDefinition("integer", (int,), (bool,))}

    def _validate_gt(self, limit, field, value):
        """Exclusive lower bound.

        The rule's arguments are validated against this schema: {'type': 'number'}
        """
        if _is_number(value) and math.isfinite(value) and not value > limit:
            self._error(field, f"must be greater than {limit}")

    def _validate_finite(self, finite, field, value):
        """Reject NaN, which passes every min/max comparison, and infinity (`.inf`).

        The rule's arguments are validated against this schema: {'type': 'boolean'}
        """
        if finite and _is_number(value) and not math.isfinite(value):
            self._error(field, "must be a finite number")

    def _normalize_coerce_env_number(self, value):
        return _from_env(value, float)

    def _normalize_coerce_env_integer(self, value):
        return _from_env(value, int)

    def _normalize_coerce_env_boolean(self, value):
        if isinstance(value, EnvStr):
            return _BOOLEANS.get(value.strip().lower(), value)
        return value

    @_only(str)
    def _check_with_name(self, field, value):
        if not _NAME.fullmatch(value):
            self._error(field, "backend names may only use letters, digits, '.', '_' and '-' "
                               "(they appear in response headers and metric labels)")

    @_only(str)
    def _check_with_url(self, field, value):
        problem = _url_problem(value)
        if problem:
            self._error(field, problem)

    @_only(str)
    def _check_with_wake_url(self, field, value):
        # A scaler's hook names what to wake in its query (`/up?model=llama`).
        problem = _url_problem(value, query=True)
        if problem:
            self._error(field, problem)

    @_only(str)
    def _check_with_redis_url(self, field, value):
        problem = _redis_url_problem(value)
        if problem:
            self._error(field, problem)

    @_only(str)
    def _check_with_nameserver(self, field, value):
        if nameserver_address(value) is None:
            self._error(field, f"must be an IP address, optionally with a port "
                               f"(10.96.0.10, 10.96.0.10:53, [fd00::a]:53), got {value!r}")

    @_only(str)
    def _check_with_origin(self, field, value):
        if value != "*" and not _ORIGIN.fullmatch(value):
            self._error(field, f"must be \"*\" or an origin like https://app.example.com "
                               f"(no path or trailing slash), got {value!r}")

    @_only(str)
    def _check_with_health_path(self, field, value):
        if not value.startswith("/"):
            self._error(field, f"must start with '/', got {value!r}")

    @_only((list, dict))
    def _check_with_models(self, field, value):
        for crumbs, message in _model_list_problems(value):
            self._error_at((field, *crumbs), message)

    @_only(dict)
    def _check_with_headers(self, field, value):
        for crumbs, message in _header_problems(value):
            self._error_at((field, *crumbs), message)

    @_only(dict)
    def _check_with_backend(self, field, value):
        kind = value.get("kind")
        if isinstance(kind, str) and kind in KINDS and KINDS[kind].needs_url \
                and "url" not in value:
            self._error_at((field, "url"), f"is required for kind '{kind}'")
        discover = value.get("discover")
        if isinstance(discover, dict) and discover.get("dns") is True \
                and isinstance(kind, str) and kind in KINDS and not KINDS[kind].needs_url:
            self._error_at((field, "discover"), f"kind '{kind}' has no URL to resolve")

    def _error_at(self, crumbs: tuple, message: str) -> None:
        """A custom error below `field`, so the line names the exact item."""
        self._error([cerberus_errors.ValidationError(
            self.document_path + tuple(crumbs), self.schema_path,
            cerberus_errors.CUSTOM.code, None, None, None, (message,))])


def nameserver_address(text: str) -> tuple[str, int] | None:
    """(ip, port) of `discover.nameservers` item: "ip", "ip:port" or "[v6]:port"."""
    host, port = text.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, digits = host.partition(":")
        if not digits.isdigit():
            return None
        port = int(digits)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_env(value: Any, kind: type) -> Any:
    """Read a number from an interpolated string; leave anything else for the type rule."""
    if isinstance(value, EnvStr):
        try:
            return kind(value.strip())
        except ValueError:
            return value
    return value


def _split_url(url: str) -> tuple[SplitResult | None, str]:
    """The URL's parts and how a message shows it; (None, the problem) when it does not parse.

    Messages are logged and shown by /admin/config: a URL's password must not be.
    """
    shown = repr(url_without_password(url))
    try:
        parts = urlsplit(url.strip())
        parts.port   # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        return None, f"is not a valid URL ({exc}): {shown}"
    return parts, shown


def _url_problem(url: str, *, query: bool = False) -> str | None:
    parts, shown = _split_url(url)
    if parts is None:
        return shown
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host, got {shown}"
    if parts.fragment or parts.query and not query:
        return (f"must not have a fragment, got {shown}" if query
                else f"must not have a query or fragment, got {shown}")
    return None


def _redis_url_problem(url: str) -> str | None:
    parts, shown = _split_url(url)
    if parts is None:
        return shown
    if parts.scheme == "unix":
        return None if parts.path else f"must name the socket's path, got {shown}"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return f"must be a redis://, rediss:// or unix:// URL with a host, got {shown}"
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return f"the path must be a database number like /0, got {shown}"
    return None


def _model_list_problems(models: list | dict) -> Iterator[tuple[tuple, str]]:
    if not models:
        yield (), "must not be empty; omit it to discover the models from the runtime"
    if isinstance(models, list):
        for i, name in enumerate(models):
            if not isinstance(name, str) or not name:
                yield (i,), f"must be a model name, got {describe(name)}"
        return
    for name, runtime_id in models.items():
        if not isinstance(name, str) or not name:
            yield (name,), "public model names must be non-empty strings"
        elif not isinstance(runtime_id, str) or not runtime_id:
            yield (name,), f"must be the runtime's model id, got {describe(runtime_id)}"


def _header_problems(headers: dict) -> Iterator[tuple[tuple, str]]:
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            yield (name,), "is not a valid header name"
        elif not isinstance(value, str):
            yield (name,), f"must be a string (quote it), got {describe(value)}"
        elif "\r" in value or "\n" in value:
            yield (name,), "must not contain a line break"
