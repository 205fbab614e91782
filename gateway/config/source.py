"""Reading gateway.yaml: YAML with line/column errors, then `${VAR}` interpolation."""

from __future__ import annotations

import re
from typing import Any, Mapping

import yaml

from .types import ConfigError, Problem


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


def parse(text: str) -> dict:
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
                           f"got {describe(doc)}"])
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

class EnvStr(str):
    """A string that came from the environment. `port: ${PORT}` is text to YAML, so the
    schema may read a number or a boolean from such a string (and only from such)."""


_REF = re.compile(r"\$\$\{|\$\{([^}]*)(\}|\Z)")
_REF_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)


def interpolate(node: Any, path: tuple, env: Mapping[str, str],
                problems: list[Problem]) -> Any:
    """Runs on parsed values, so a secret holding YAML syntax stays a plain string."""
    if isinstance(node, dict):
        return {k: interpolate(v, path + (k,), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, path + (i,), env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        value, errors = _expand(node, env)
        problems += [(path, e) for e in errors]
        return EnvStr(value)
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


def plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return str(node) if isinstance(node, EnvStr) else node


# --- values as problems name them (here because it knows what came from the environment) ---

def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, EnvStr):
        # Never the value itself: environment variables carry secrets.
        return "a string from the environment"
    for type_, word in ((str, "a string"), (int, "an integer"), (float, "a number"),
                        (dict, "a mapping"), (list, "a list")):
        if isinstance(value, type_):
            return word
    return f"a {type(value).__name__}"
