"""Problems into `key.path: message` lines: cerberus errors reworded, sorted, deduplicated."""

from __future__ import annotations

import difflib
from typing import Iterable, Iterator

from cerberus import errors as cerberus_errors

from .schema import SCHEMA
from .types import Problem
from .source import describe

_TYPE_WORDS = {"dict": "a mapping", "list": "a list", "string": "a string",
               "integer": "an integer", "number": "a number", "boolean": "true or false"}

_OVERRIDES = {
    (("backends",), "required"): "is required: define at least one backend",
    (("backends",), "empty"): "must define at least one backend",
}


def flatten(errors: Iterable[cerberus_errors.ValidationError],
            failed: set[tuple]) -> Iterator[Problem]:
    """`Validator._errors` is cerberus' documented raw error list; its `errors` property
    only offers nested dicts of canned phrases."""
    for err in errors:
        if err.is_group_error:
            yield from flatten(err.child_errors, failed)
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
        return f"must be {wanted}, got {describe(err.value)}"
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
    rules: dict = {"type": "dict", "schema": SCHEMA}
    for crumb in path:
        if rules.get("type") == "list":
            rules = rules.get("schema", {})
        elif "valuesrules" in rules:
            rules = rules["valuesrules"]
        else:
            rules = rules.get("schema", {}).get(crumb, {})
    return list(rules.get("schema", {})) if rules.get("type") == "dict" else []


def format_problems(problems: Iterable[Problem]) -> list[str]:
    def order(problem: Problem):
        path, message = problem
        return [(0, c, "") if isinstance(c, int) else (1, 0, str(c)) for c in path], message

    lines = (f"{'.'.join(map(str, path)) or 'config'}: {message}"
             for path, message in sorted(problems, key=order))
    return list(dict.fromkeys(lines))
