"""gateway.yaml: read, interpolate, validate once, then immutable typed objects.

`load_config(path)` returns a `Config` or raises `ConfigError`, whose `problems`
are `key.path: message` lines (the same lines `gateway check` prints).
Only this package sees raw dicts; everything else gets the frozen dataclasses, and
imports them from here: this module is the package's one face and the loading pipeline.
Each step lives in its own module:

    types     the frozen dataclasses, `backend()`, ConfigError
    source    read -> parse (line/column errors) -> interpolate `${VAR}`
    schema    the cerberus schema and its custom rules
    messages  cerberus errors and other problems -> `key.path: message` lines
    checks    references between sections, fallback cycles, auth keys
    build     the validated dict -> frozen objects
    redact    secrets masked: a Config as plain data, URLs without passwords
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, TextIO

from .build import build
from .checks import references
from .messages import flatten, format_problems
from .redact import REDACTED, SECRET_HEADER, redacted, url_without_password
from .schema import SCHEMA, Validator
from .types import (
    ENGINE_PRIORITY_KINDS, MEMBER_SEP, PRIORITIES, STRATEGIES, ApiKey, BackendConfig, Budget,
    Config, ConfigError, DiscoverConfig, EngineConfig, Fallback, HealthConfig, Problem,
    QueueConfig, ResponsesConfig, RetryConfig, RouteConfig, ServerConfig, StateConfig, Timeouts,
    TracingConfig, WakeConfig, backend, backend_label,
)
from .source import interpolate, parse, plain

__all__ = [
    "ENGINE_PRIORITY_KINDS", "MEMBER_SEP", "PRIORITIES", "STRATEGIES", "ApiKey",
    "BackendConfig", "Budget", "Config", "ConfigError", "DiscoverConfig", "EngineConfig",
    "Fallback", "HealthConfig", "QueueConfig", "ResponsesConfig", "RetryConfig", "RouteConfig",
    "ServerConfig", "StateConfig", "Timeouts", "TracingConfig", "WakeConfig", "backend",
    "backend_label",
    "load_config", "load_config_text", "check", "redacted", "url_without_password",
    "REDACTED", "SECRET_HEADER",
]


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
    """read -> parse -> interpolate -> schema -> references -> build."""
    problems: list[Problem] = []
    doc = interpolate(parse(text), (), env, problems)
    # A failed variable leaves "" behind; the schema's complaint about that value is noise.
    failed = {path for path, _ in problems}
    validator = Validator(SCHEMA)
    if not validator.validate(doc):
        problems += flatten(validator._errors, failed)
    elif not problems:
        doc = plain(validator.document)
        problems += references(doc)
    if problems:
        raise ConfigError(format_problems(problems))
    return build(doc)
