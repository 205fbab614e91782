"""What the echo runtime says to a request that offers tools: pure, no I/O.

Echo runs an agent loop's three steps the same way on every API (chat and Responses; the
Messages API reaches it translated to chat):

1. after a tool result (the conversation ends with one or more results): it answers with
   the results' text, so a client sees its tool's output come back;
2. when the last user message names one of the offered tools (the name as a word, e.g.
   "use get_weather Paris"): it calls that tool once, with arguments built from the tool's
   JSON schema (`arguments`);
3. otherwise: it echoes the last user message, as without tools.

What echo reads of a message (`said`) leaves `<system-reminder>` blocks out: they are what
a client tells the model beside the user's words, not the user's words (Claude Code puts
its context in them, and the Messages translation folds a system message sent mid-
conversation into a user turn as one: translate/anthropic_system.py). Read as words, ~9k
characters of Claude Code's environment became a tool's argument. A user message holding
nothing but reminders is passed over, so a tool result followed by a folded system message
still reads as the conversation ending with that result.

`tool_choice` is honoured as far as it says something echo can do: "none" never calls, a
named function (or Messages' `tool`, translated to it) calls that one, "required" calls the
named tool or else the first. Arguments fill the schema's required properties: a string
gets the user's words after the tool's name (its `default`, first `enum` value or `const`
win; no words: the property's own name), numbers their `minimum` or 0, booleans false,
arrays one item (or `minItems`), objects their own required properties, so the arguments
validate against the schema a client declared.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from ..translate.content import content_text

MAX_DEPTH = 6      # nested object schemas deeper than this get {}
MAX_ITEMS = 16     # minItems beyond this is not honoured (echo is a test runtime)
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call: its id, the tool's name, and the arguments as a JSON string."""
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Echo's answer: words of text, or one tool call (then `words` is empty)."""
    words: list[str]
    call: Call | None = None


def chat_tools(tools: Any) -> dict[str, dict]:
    """The offered tools of a chat request: name -> JSON schema of its parameters."""
    found: dict[str, dict] = {}
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            params = function.get("parameters")
            found[function["name"]] = params if isinstance(params, dict) else {}
    return found


def responses_tools(tools: Any) -> dict[str, dict]:
    """The offered function tools of a Responses request (flat: name, parameters)."""
    found: dict[str, dict] = {}
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function" \
                and isinstance(tool.get("name"), str):
            params = tool.get("parameters")
            found[tool["name"]] = params if isinstance(params, dict) else {}
    return found


def said(content: Any) -> str | None:
    """The text echo reads in a message's content: its text without `<system-reminder>`
    blocks; None when it had text and all of it was reminders."""
    text = content_text(content)
    if "<system-reminder>" not in text:
        return text
    left = _REMINDER.sub(" ", text)
    return None if not left.strip() and text.strip() else left


def chat_reply(payload: Mapping[str, Any]) -> Reply:
    """Echo's answer to a chat request (with or without tools)."""
    messages = [m for m in payload.get("messages") or () if isinstance(m, dict)
                and not (m.get("role") == "user" and said(m.get("content")) is None)]
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(said(message.get("content")) or "")
    if results:
        return Reply(" ".join(reversed(results)).split())
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = said(message.get("content")) or ""
            break
    return decide(text, chat_tools(payload.get("tools")), _chat_choice(payload))


def responses_reply(items: list[dict], payload: Mapping[str, Any]) -> Reply:
    """Echo's answer to a Responses request's input items."""
    items = [i for i in items if not (_user_item(i) and said(i.get("content")) is None)]
    results = []
    for item in reversed(items):
        if item.get("type") != "function_call_output":
            break
        results.append(said(item.get("output")) or "")
    if results:
        return Reply(" ".join(reversed(results)).split())
    text = ""
    for item in reversed(items):
        if _user_item(item):
            text = said(item.get("content")) or ""
            break
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = choice.get("name")
    return decide(text, responses_tools(payload.get("tools")), choice)


def decide(text: str, tools: Mapping[str, dict], choice: Any) -> Reply:
    """Call the tool the text names (or the choice forces), else echo the text.
    `choice`: None/"auto", "none", "required", or a tool's name."""
    if not tools or choice == "none":
        return Reply(text.split())
    named = named_tool(text, tools)
    if isinstance(choice, str) and choice in tools and choice not in ("auto", "required"):
        named = choice
    elif named is None and choice == "required":
        named = next(iter(tools))
    if named is None:
        return Reply(text.split())
    args = arguments(tools[named], _words_after(text, named))
    return Reply([], Call("call_" + uuid.uuid4().hex[:24], named, orjson.dumps(args).decode()))


def named_tool(text: str, tools: Mapping[str, dict]) -> str | None:
    """The first offered tool whose name appears in `text` as a word of its own."""
    best: tuple[int, str] | None = None
    for name in tools:
        match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return best[1] if best else None


def arguments(schema: Any, words: str, depth: int = 0, name: str = "") -> Any:
    """A value that fits `schema` (the subset of JSON schema tools use), for arguments.
    `name`: the property's, said when there are no words to fill a string with."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return {} if depth == 0 else None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return arguments((typed or options)[0], words, depth + 1, name)
    # A tool's parameters are an object, also when its schema is just {}.
    kind = schema.get("type", "object" if depth == 0 or "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {n: arguments(props.get(n, {}), words, depth + 1, n) for n in names}
    if kind == "array":
        count = schema.get("minItems", 1)
        count = min(count, MAX_ITEMS) if isinstance(count, int) and count > 0 else 1
        item = schema.get("items", {"type": "string"})
        if isinstance(item, dict) and item.get("type", "string") == "string" and words \
                and not {"enum", "const", "default"} & item.keys():
            pieces = words.split()
            return (pieces + [pieces[-1]] * count)[:max(count, len(pieces))]
        return [arguments(item, words, depth + 1, name) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        low = low if isinstance(low, (int, float)) and not isinstance(low, bool) else 0
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            low += 1
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return words or name


def _words_after(text: str, name: str) -> str:
    """The user's words after the tool's name, without surrounding punctuation."""
    match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
    rest = text[match.end():] if match else ""
    return " ".join(rest.split()).strip(" .,;:!?\"'()[]")


def _user_item(item: dict) -> bool:
    return item.get("role", "user") == "user" and item.get("type", "message") == "message"


def _chat_choice(payload: Mapping[str, Any]) -> Any:
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        return function.get("name") if isinstance(function, dict) else None
    return choice
