"""gateway.yaml: read, interpolate, validate once, then immutable typed objects.

`load_config(path)` returns a `Config` or raises `ConfigError`, whose `problems`
are `key.path: message` lines (the same lines `gateway check` prints).
Only this module sees raw dicts; everything else gets the frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, TextIO
from urllib.parse import urlsplit

import cerberus
import yaml
from cerberus import errors as cerberus_errors

from .kinds import CAPABILITIES, KINDS, normalise_root

STRATEGIES = ("weighted", "least_busy", "prefix_affinity", "session_affinity")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 3.0
    first_byte_s: float = 60.0
    idle_s: float = 60.0


@dataclass(frozen=True)
class BackendConfig:
    name: str
    kind: str
    url: str = ""                               # server root: no trailing slash, no /v1
    api_key: str | None = None
    weight: float = 1.0
    models: Mapping[str, str] | None = None     # public name -> runtime id; None = discover
    max_concurrency: int | None = None
    capabilities: Mapping[str, bool] = field(default_factory=dict)   # resolved: kind + overrides
    headers: Mapping[str, str] = field(default_factory=dict)
    health_path: str = ""
    timeouts: Timeouts = Timeouts()

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def identity(self) -> tuple[str, str]:
        """What must stay equal for a reload to keep this backend's runtime state."""
        return (self.kind, self.url)


def backend(name: str, kind: str, url: str = "", *, models=None,
            capabilities: Mapping[str, bool] | None = None,
            health_path: str | None = None, **kw) -> BackendConfig:
    """A BackendConfig with the kind's defaults resolved (for the loader and for tests)."""
    spec = KINDS[kind]
    caps = dict(spec.capabilities)
    caps.update(capabilities or {})
    if isinstance(models, (list, tuple)):
        models = {m: m for m in models}
    return BackendConfig(
        name=name, kind=kind, url=normalise_root(url) if url else "",
        models=MappingProxyType(dict(models)) if models is not None else None,
        capabilities=MappingProxyType(caps),
        health_path=spec.health_path if health_path is None else health_path,
        **kw)


@dataclass(frozen=True)
class Fallback:
    backend: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class RouteConfig:
    strategy: str = "weighted"
    fallbacks: tuple[Fallback, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: tuple[str, ...] = ()
    max_body_mb: float = 16
    drain_s: float = 30
    admin_key: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 10
    timeout_s: float = 2
    unhealthy_after: int = 3
    healthy_after: int = 2
    cooldown_s: float = 5          # passive ejection: first cooldown, doubled per ejection
    max_cooldown_s: float = 120


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 2
    deadline_s: float = 120


@dataclass(frozen=True)
class QueueConfig:
    """Where a request waits when every backend of its pool is at max_concurrency."""
    max_wait_s: float = 10
    max_size: int = 1000


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    health: HealthConfig = HealthConfig()
    retries: RetryConfig = RetryConfig()
    queue: QueueConfig = QueueConfig()
    auth_keys: tuple[ApiKey, ...] = ()

    def route(self, model: str) -> RouteConfig:
        return self.routes.get(model) or RouteConfig()


# ---------------------------------------------------------------------------
# Loading: read -> parse -> interpolate -> schema -> references -> build.
# Problems travel as (key path, message) pairs and become "key.path: message" lines at the end.

Problem = tuple[tuple, str]


def load_config(path: str) -> Config:
    """Read and validate the file at `path`; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config: cannot read {path}: not UTF-8 text "
                           f"(byte {exc.start})"]) from exc
    return load_config_text(text)


def load_config_text(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Like load_config, from the file's text; `env` defaults to os.environ."""
    try:
        return _load(text, os.environ if env is None else env)
    except ConfigError:
        raise
    except RecursionError as exc:
        raise ConfigError(["config: nested too deeply, or a YAML alias refers to itself"]) from exc
    except Exception as exc:  # an input nobody foresaw still reads as a problem, not a traceback
        raise ConfigError([f"config: unexpected error: {type(exc).__name__}: {exc}"]) from exc


def check(path: str, out: TextIO | None = None) -> int:
    """`gateway check`: print every problem and return 1, or a one-line summary and return 0."""
    out = out or sys.stdout   # resolved per call so a redirected sys.stdout is honoured
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=out)
        return 1
    models = {m for b in cfg.backends.values() for m in (b.models or ())}
    print(f"ok: {len(cfg.backends)} backends, {len(models)} models", file=out)
    return 0


def _load(text: str, env: Mapping[str, str]) -> Config:
    problems: list[Problem] = []
    doc = _interpolate(_parse(text), (), env, problems)
    # A failed variable leaves "" behind; the schema's complaint about that value is noise.
    failed = {path for path, _ in problems}
    validator = _Validator(_SCHEMA)
    if not validator.validate(doc):
        problems += _flatten(validator._errors, failed)
    elif not problems:
        doc = _plain(validator.document)
        problems += _references(doc)
    if problems:
        raise ConfigError(_format(problems))
    return _build(doc)


def _format(problems: Iterable[Problem]) -> list[str]:
    def order(problem: Problem):
        path, message = problem
        return [(0, c, "") if isinstance(c, int) else (1, 0, str(c)) for c in path], message

    lines = (f"{'.'.join(map(str, path)) or 'config'}: {message}"
             for path, message in sorted(problems, key=order))
    return list(dict.fromkeys(lines))


# --- YAML ------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """safe_load, except that every mapping key is kept as the text written.

    Keys here are only ever names, and YAML would otherwise turn a backend called `1`, `yes`
    or `2024-01-01` into an int, a bool or a date. A repeated key is refused instead of
    silently keeping the last one (two backends of the same name would merge unnoticed).
    """

    def construct_mapping(self, node, deep=False):
        self._refuse_duplicates(node)
        self.flatten_mapping(node)     # resolves `<<: *anchor` merges
        mapping = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain name, not a list or mapping",
                    key_node.start_mark)
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping

    @staticmethod
    def _refuse_duplicates(node) -> None:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)


def _parse(text: str) -> dict:
    text, refs = _protect(text)
    try:
        doc = yaml.load(text, Loader=_Loader)   # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(exc)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"yaml: {exc}"]) from exc
    if doc is None:
        raise ConfigError(["config: the file is empty"])
    if not isinstance(doc, dict):
        raise ConfigError([f"config: the top level must be a mapping of sections, "
                           f"got {_describe(doc)}"])
    return _restore(doc, refs) if refs else doc


# Quotes stay visible to YAML: a reference never swallows the end of a quoted string.
_PROTECT = re.compile(r"\$?\$\{[^}\n'\"]*\}")
_MARK, _FILL, _FIRST_INDEX, _LAST_INDEX = "\ue000", "\ue001", 0xE100, 0xF8FF
_MARKED = re.compile("\ue000(.)\ue001*", re.S)


def _protect(text: str) -> tuple[str, list[str]]:
    """Hide each ${...} from YAML until the values are parsed.

    `{key: ${KEY}}` is a YAML error (braces are flow syntax), yet it is how DESIGN.md writes
    references. Each one becomes a same-length run of private-use characters, a plain word to
    YAML that keeps error columns true; _restore puts the text back before interpolation.
    """
    if _MARK in text:
        return text, []
    refs: list[str] = []

    def mark(m: re.Match) -> str:
        if _FIRST_INDEX + len(refs) > _LAST_INDEX:
            return m.group(0)
        refs.append(m.group(0))
        return _MARK + chr(_FIRST_INDEX + len(refs) - 1) + _FILL * (len(m.group(0)) - 2)

    return _PROTECT.sub(mark, text), refs


def _restore(node: Any, refs: list[str]) -> Any:
    if isinstance(node, dict):
        return {_restore(k, refs): _restore(v, refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_restore(v, refs) for v in node]
    if isinstance(node, str) and _MARK in node:
        return _MARKED.sub(lambda m: refs[ord(m.group(1)) - _FIRST_INDEX], node)
    return node


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    what = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context and exc.context_mark:
        what += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"yaml: {where}{what}"


# --- ${VAR} interpolation --------------------------------------------------

class _EnvStr(str):
    """A string that came from the environment. `port: ${PORT}` is text to YAML, so the
    schema may read a number or a boolean from such a string (and only from such)."""


_REF = re.compile(r"\$\$\{|\$\{([^}]*)(\}|\Z)")
_REF_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)


def _interpolate(node: Any, path: tuple, env: Mapping[str, str],
                 problems: list[Problem]) -> Any:
    """Runs on parsed values, so a secret holding YAML syntax stays a plain string."""
    if isinstance(node, dict):
        return {k: _interpolate(v, path + (k,), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, path + (i,), env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        value, errors = _expand(node, env)
        problems += [(path, e) for e in errors]
        return _EnvStr(value)
    return node


def _expand(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    errors: list[str] = []

    def substitute(m: re.Match) -> str:
        ref = m.group(0)
        if ref == "$${":          # the escape for a literal "${"
            return "${"
        body = _REF_BODY.fullmatch(m.group(1))
        if not m.group(2) or not body or "${" in (body.group(2) or ""):
            errors.append(f"bad variable reference {ref!r} (use ${{NAME}} or ${{NAME:-default}})")
            return ""
        name, default = body.groups()
        value = env.get(name)
        if value:
            return value
        if default is not None:   # as in the shell, ":-" also replaces a set but empty value
            return default
        if value is None:
            errors.append(f"environment variable {name} is not set")
        return ""

    return _REF.sub(substitute, text), errors


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return str(node) if isinstance(node, _EnvStr) else node


# --- schema ----------------------------------------------------------------

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
}

_ROUTE = {
    "strategy": _string(allowed=list(STRATEGIES)),
    "fallbacks": _list_of({"type": "dict",
                           "schema": {"backend": _string(), "model": _string()}}),
}

_API_KEY = {
    "name": _string(required=True),
    "key": _string(required=True),
    "models": {"type": "list", "empty": False, "schema": _string()},
    "rpm": _integer(gt=0, nullable=True),
    "tpm": _integer(gt=0, nullable=True),
}

_SCHEMA = {
    "server": _section({
        "host": _string(),
        "port": _integer(min=1, max=65535),
        "cors_origins": _list_of(_string(check_with="origin")),
        "max_body_mb": _number(gt=0),
        "drain_s": _number(min=0),
        "admin_key": {"type": "string", "nullable": True},
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
    "queue": _section({"max_wait_s": _number(min=0), "max_size": _integer(min=0)}),
    "auth": _section({"keys": _list_of({"type": "dict", "schema": _API_KEY})}),
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


class _Validator(cerberus.Validator):
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
        if isinstance(value, _EnvStr):
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

    def _error_at(self, crumbs: tuple, message: str) -> None:
        """A custom error below `field`, so the line names the exact item."""
        self._error([cerberus_errors.ValidationError(
            self.document_path + tuple(crumbs), self.schema_path,
            cerberus_errors.CUSTOM.code, None, None, None, (message,))])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_env(value: Any, kind: type) -> Any:
    """Read a number from an interpolated string; leave anything else for the type rule."""
    if isinstance(value, _EnvStr):
        try:
            return kind(value.strip())
        except ValueError:
            return value
    return value


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        parts.port   # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        return f"is not a valid URL ({exc}): {url!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host, got {url!r}"
    if parts.query or parts.fragment:
        return f"must not have a query or fragment, got {url!r}"
    return None


def _model_list_problems(models: list | dict) -> Iterator[tuple[tuple, str]]:
    if not models:
        yield (), "must not be empty; omit it to discover the models from the runtime"
    if isinstance(models, list):
        for i, name in enumerate(models):
            if not isinstance(name, str) or not name:
                yield (i,), f"must be a model name, got {_describe(name)}"
        return
    for name, runtime_id in models.items():
        if not isinstance(name, str) or not name:
            yield (name,), "public model names must be non-empty strings"
        elif not isinstance(runtime_id, str) or not runtime_id:
            yield (name,), f"must be the runtime's model id, got {_describe(runtime_id)}"


def _header_problems(headers: dict) -> Iterator[tuple[tuple, str]]:
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            yield (name,), "is not a valid header name"
        elif not isinstance(value, str):
            yield (name,), f"must be a string (quote it), got {_describe(value)}"
        elif "\r" in value or "\n" in value:
            yield (name,), "must not contain a line break"


# --- cerberus errors -> lines ------------------------------------------------

_TYPE_WORDS = {"dict": "a mapping", "list": "a list", "string": "a string",
               "integer": "an integer", "number": "a number", "boolean": "true or false"}

_OVERRIDES = {
    (("backends",), "required"): "is required: define at least one backend",
    (("backends",), "empty"): "must define at least one backend",
}


def _flatten(errors: Iterable[cerberus_errors.ValidationError],
             failed: set[tuple]) -> Iterator[Problem]:
    """`Validator._errors` is cerberus' documented raw error list; its `errors` property
    only offers nested dicts of canned phrases."""
    for err in errors:
        if err.is_group_error:
            yield from _flatten(err.child_errors, failed)
        elif err.document_path not in failed or err.code == cerberus_errors.UNKNOWN_FIELD.code:
            yield err.document_path, _message(err)


def _message(err: cerberus_errors.ValidationError) -> str:
    rule, limit = err.rule, err.constraint
    if err.code == cerberus_errors.UNKNOWN_FIELD.code:
        return _unknown_key(err.document_path)
    if err.code == cerberus_errors.CUSTOM.code:
        return err.info[0]
    if (err.document_path, rule) in _OVERRIDES:
        return _OVERRIDES[err.document_path, rule]
    if rule == "type":
        kinds = [limit] if isinstance(limit, str) else limit
        wanted = " or ".join(_TYPE_WORDS.get(k, k) for k in kinds)
        return f"must be {wanted}, got {_describe(err.value)}"
    simple = {"required": "is required", "nullable": "must have a value",
              "empty": "must not be empty", "min": f"must be at least {limit}",
              "max": f"must be at most {limit}"}
    if rule in simple:
        return simple[rule]
    if rule == "allowed":
        return f"must be one of: {', '.join(map(str, limit))}; got {err.value!r}"
    return f"is invalid ({rule}: {limit!r})"


def _unknown_key(path: tuple) -> str:
    known = _schema_keys(path[:-1])
    close = difflib.get_close_matches(str(path[-1]), known, n=1)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key (expected one of: {', '.join(known)})" if known else "unknown key"


def _schema_keys(path: tuple) -> list[str]:
    rules: dict = {"type": "dict", "schema": _SCHEMA}
    for crumb in path:
        if rules.get("type") == "list":
            rules = rules.get("schema", {})
        elif "valuesrules" in rules:
            rules = rules["valuesrules"]
        else:
            rules = rules.get("schema", {}).get(crumb, {})
    return list(rules.get("schema", {})) if rules.get("type") == "dict" else []


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, _EnvStr):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{shown!r} from the environment"
    for type_, word in ((str, "a string"), (int, "an integer"), (float, "a number"),
                        (dict, "a mapping"), (list, "a list")):
        if isinstance(value, type_):
            return word
    return f"a {type(value).__name__}"


# --- references between sections (run once the schema holds) ---------------

def _references(doc: dict) -> list[Problem]:
    backends = doc["backends"]
    listed = {m for b in backends.values() for m in (b.get("models") or ())}
    # A backend without a `models` list discovers its models at run time: any name may exist.
    discovering = any(b.get("models") is None for b in backends.values())

    def known(model: str) -> bool:
        return discovering or model in listed

    routes = doc.get("routes") or {}
    problems: list[Problem] = []
    for model, route in routes.items():
        if not known(model):
            problems.append((("routes", model), f"no backend serves model '{model}'"))
        for i, fallback in enumerate((route or {}).get("fallbacks") or ()):
            path = ("routes", model, "fallbacks", i)
            problems += _fallback_problems(path, model, fallback, backends, known)
    problems += _cycle_problems(routes)
    problems += _auth_problems(((doc.get("auth") or {}).get("keys")) or [], known)
    problems += _health_problems(doc.get("health"))
    return problems


def _fallback_problems(path: tuple, model: str, fallback: dict, backends: dict,
                       known) -> list[Problem]:
    target_backend, target_model = fallback.get("backend"), fallback.get("model")
    if (target_backend is None) == (target_model is None):
        return [(path, "must name exactly one of 'backend' or 'model'")]
    if target_backend is not None:
        if target_backend not in backends:
            return [(path + ("backend",), f"unknown backend '{target_backend}'")]
        served = backends[target_backend].get("models")
        if served is not None and model not in served:
            return [(path + ("backend",),
                     f"backend '{target_backend}' does not serve model '{model}'")]
        return []
    if target_model == model:
        return [(path + ("model",), "a model cannot fall back to itself")]
    if not known(target_model):
        return [(path + ("model",), f"unknown model '{target_model}'")]
    return []


def _cycle_problems(routes: dict) -> list[Problem]:
    graph = {model: [(i, f["model"]) for i, f in enumerate((route or {}).get("fallbacks") or ())
                     if f.get("backend") is None and f.get("model") not in (None, model)]
             for model, route in routes.items()}
    reported: set[tuple[str, ...]] = set()
    problems: list[Problem] = []
    for start in sorted(graph):
        cycle = _shortest_cycle(graph, start)
        if cycle is None:
            continue
        first = cycle.index(min(cycle))     # one rotation per cycle, however it was reached
        cycle = cycle[first:] + cycle[:first]
        if cycle in reported:
            continue
        reported.add(cycle)
        index = next(i for i, target in graph[cycle[0]] if target == cycle[1])
        problems.append((("routes", cycle[0], "fallbacks", index, "model"),
                         "fallback cycle " + " -> ".join(cycle + (cycle[0],))))
    return problems


def _shortest_cycle(graph: dict, start: str) -> tuple[str, ...] | None:
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for _, target in graph.get(node, ()):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return tuple(reversed(path))
                if target not in parent:
                    parent[target] = node
                    following.append(target)
        frontier = following
    return None


def _auth_problems(keys: list, known) -> list[Problem]:
    problems: list[Problem] = []
    names: dict[str, int] = {}
    values: dict[str, int] = {}
    for i, key in enumerate(keys):
        path = ("auth", "keys", i)
        if key["name"] in names:
            problems.append((path + ("name",), f"duplicate key name '{key['name']}' "
                                               f"(also auth.keys.{names[key['name']]})"))
        names.setdefault(key["name"], i)
        if key["key"] in values:
            j = values[key["key"]]   # never echo the secret itself
            problems.append((path + ("key",), f"same key as auth.keys.{j} ('{keys[j]['name']}')"))
        values.setdefault(key["key"], i)
        for j, pattern in enumerate(key.get("models") or ()):
            if not any(c in pattern for c in "*?[") and not known(pattern):
                problems.append((path + ("models", j), f"unknown model '{pattern}'"))
    return problems


def _health_problems(health: dict | None) -> list[Problem]:
    resolved = HealthConfig(**_given(health))
    if resolved.cooldown_s > resolved.max_cooldown_s:
        return [(("health", "cooldown_s"),
                 f"must not exceed max_cooldown_s ({resolved.max_cooldown_s:g})")]
    return []


# --- building the frozen objects ---------------------------------------------

def _given(section: dict | None) -> dict:
    """The keys actually set; the dataclasses own every default."""
    return {k: v for k, v in (section or {}).items() if v is not None}


def _build(doc: dict) -> Config:
    auth = doc.get("auth") or {}
    return Config(
        server=_server(_given(doc.get("server"))),
        backends=MappingProxyType({name: _backend(name, _given(raw))
                                   for name, raw in doc["backends"].items()}),
        routes=MappingProxyType({model: _route(_given(raw))
                                 for model, raw in (doc.get("routes") or {}).items()}),
        health=HealthConfig(**_given(doc.get("health"))),
        retries=RetryConfig(**_given(doc.get("retries"))),
        queue=QueueConfig(**_given(doc.get("queue"))),
        auth_keys=tuple(_api_key(_given(raw)) for raw in auth.get("keys") or ()),
    )


def _server(kw: dict) -> ServerConfig:
    kw["cors_origins"] = tuple(kw.get("cors_origins", ()))
    kw["admin_key"] = kw.get("admin_key") or None
    return ServerConfig(**kw)


def _backend(name: str, kw: dict) -> BackendConfig:
    kw["api_key"] = kw.get("api_key") or None   # `${KEY:-}` means no key, not an empty bearer
    kw["headers"] = MappingProxyType(dict(kw.get("headers", {})))
    if "timeouts" in kw:
        kw["timeouts"] = Timeouts(**_given(kw["timeouts"]))
    return backend(name, kw.pop("kind"), kw.pop("url", ""), **kw)


def _route(kw: dict) -> RouteConfig:
    kw["fallbacks"] = tuple(Fallback(**_given(f)) for f in kw.get("fallbacks", ()))
    return RouteConfig(**kw)


def _api_key(kw: dict) -> ApiKey:
    if "models" in kw:
        kw["models"] = tuple(kw["models"])
    return ApiKey(**kw)


# --- redaction -----------------------------------------------------------------

_SECRET_HEADER = re.compile(r"auth|cookie|key|token|secret|passw", re.I)
_URL_PASSWORD = re.compile(r"(//[^/@:]*):[^/@]*@")
REDACTED = "***"


def redacted(cfg: Config) -> dict:
    """The config as plain data (for GET /admin/config) with every secret replaced by "***"."""
    data = _as_data(cfg)
    data["server"]["admin_key"] = _mask(cfg.server.admin_key)
    for b in data["backends"].values():
        b["api_key"] = _mask(b["api_key"])
        b["url"] = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", b["url"])
        # Some runtimes take their key in a header (Azure's api-key, x-api-key).
        b["headers"] = {h: REDACTED if _SECRET_HEADER.search(h) else v
                        for h, v in b["headers"].items()}
    for key in data["auth_keys"]:
        key["key"] = REDACTED
    return data


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
