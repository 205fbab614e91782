"""Checking an Anthropic Messages request before it is routed, passed on or translated.

A malformed body must be a 400 naming the field (`messages.1.content.0.text`), never a
runtime's 500 or a traceback, on both paths: the runtimes that serve /v1/messages and the
translation. The checks follow the Messages API reference for what the gateway can judge.
Block, source and tool types this module does not know are let through: a runtime serving
/v1/messages itself may know newer ones, and the translation refuses those it cannot express
on its own (anthropic_request). JSON null in an optional field counts as absent.

Two depths: `validate_route` is what the gateway needs to route any Messages request (a
JSON object, its model, its stream flag), all that is checked before a runtime serving
/v1/messages gets the body (the runtime judges the rest, so the gateway is never stricter
than it); `validate_messages` is the whole check, made before a request is translated.
A `{"role": "system"}` message anywhere in `messages` (Anthropic's
`mid-conversation-system-2026-04-07` beta, sent by Claude Code) carries text, like `system`.
"""

from __future__ import annotations

from typing import Any

from gateway.translate.anthropic_errors import TranslationError

ROLES = ("user", "assistant")
MESSAGE_ROLES = ("user", "assistant", "system")
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_CHOICES = ("auto", "any", "tool", "none")
# Known block types and the roles that may carry them; unknown types are not judged here.
_BLOCK_ROLES = {
    "text": ROLES, "image": ("user",), "document": ("user",), "search_result": ("user",),
    "tool_result": ("user",), "tool_use": ("assistant",), "thinking": ("assistant",),
    "redacted_thinking": ("assistant",),
}


def validate_route(body: Any) -> None:
    """Raise TranslationError unless the body can be routed: an object naming its model,
    with a boolean (or absent) stream flag."""
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    _need_str(body, "model", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise TranslationError("must be a boolean", "stream")


def validate_messages(body: Any, *, count_tokens: bool = False) -> None:
    """Raise TranslationError for the first thing wrong with a Messages request body.

    `count_tokens`: the body is for /v1/messages/count_tokens, which has no max_tokens."""
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    _need_str(body, "model", "model")
    if not count_tokens:
        _check_max_tokens(body.get("max_tokens"))
    _check_messages(body.get("messages"))
    _check_system(body.get("system"))
    _check_sampling(body)
    _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"))
    _check_metadata(body.get("metadata"))


def _check_max_tokens(max_tokens: Any) -> None:
    if max_tokens is None:
        raise TranslationError("field required", "max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise TranslationError("must be an integer of at least 1", "max_tokens")


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise TranslationError("field required", "messages")
    if not isinstance(messages, list):
        raise TranslationError("must be a list of messages", "messages")
    if not messages:
        raise TranslationError("at least one message is required", "messages")
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(msg, dict):
            raise TranslationError("must be an object with role and content", where)
        role = msg.get("role")
        if role not in MESSAGE_ROLES:
            raise TranslationError(
                f"role must be 'user', 'assistant' or 'system', not {role!r}", f"{where}.role")
        content = msg.get("content")
        if isinstance(content, str):
            continue
        if role == "system":
            _check_system(content, f"{where}.content")
            continue
        if not isinstance(content, list):
            raise TranslationError("must be a string or a list of content blocks",
                                   f"{where}.content")
        # Anthropic lets only a final assistant message (a prefill) be empty.
        if not content and not (i == last and role == "assistant"):
            raise TranslationError("must not be empty", f"{where}.content")
        for j, block in enumerate(content):
            _check_block(block, role, f"{where}.content.{j}")


def _check_block(block: Any, role: str, where: str) -> None:
    btype = _block_type(block, where)
    roles = _BLOCK_ROLES.get(btype)
    if roles is None:
        return
    if role not in roles:
        raise TranslationError(f"a {btype!r} block cannot be in a {role} message",
                               f"{where}.type")
    if btype == "text":
        _need_str(block, "text", f"{where}.text", empty_ok=True)
    elif btype == "image":
        _check_image(block, where)
    elif btype == "tool_use":
        _need_str(block, "id", f"{where}.id")
        _need_str(block, "name", f"{where}.name")
        if not isinstance(block.get("input"), dict):
            raise TranslationError("must be an object", f"{where}.input")
    elif btype == "tool_result":
        _check_tool_result(block, where)
    elif btype == "thinking":
        _need_str(block, "thinking", f"{where}.thinking", empty_ok=True)
    elif btype == "redacted_thinking":
        _need_str(block, "data", f"{where}.data", empty_ok=True)


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict):
        raise TranslationError("must be a content block object", where)
    btype = block.get("type")
    if not isinstance(btype, str) or not btype:
        raise TranslationError("a content block needs a string type", f"{where}.type")
    return btype


def _check_image(block: dict, where: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError("field required (an object)", f"{where}.source")
    stype = source.get("type")
    if stype == "base64":
        if source.get("media_type") not in IMAGE_MEDIA_TYPES:
            raise TranslationError(f"must be one of {', '.join(IMAGE_MEDIA_TYPES)}",
                                   f"{where}.source.media_type")
        _need_str(source, "data", f"{where}.source.data")
    elif stype == "url":
        _need_str(source, "url", f"{where}.source.url")
    elif not isinstance(stype, str) or not stype:
        raise TranslationError("an image source needs a string type", f"{where}.source.type")


def _check_tool_result(block: dict, where: str) -> None:
    _need_str(block, "tool_use_id", f"{where}.tool_use_id")
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise TranslationError("must be a boolean", f"{where}.is_error")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise TranslationError("must be a string or a list of content blocks",
                               f"{where}.content")
    for k, inner in enumerate(content):
        inner_where = f"{where}.content.{k}"
        btype = _block_type(inner, inner_where)
        if btype == "text":
            _need_str(inner, "text", f"{inner_where}.text", empty_ok=True)
        elif btype == "image":
            _check_image(inner, inner_where)


def _check_system(system: Any, where: str = "system") -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise TranslationError("must be a string or a list of text blocks", where)
    for i, block in enumerate(system):
        if _block_type(block, f"{where}.{i}") != "text":
            raise TranslationError("system blocks must be text blocks", f"{where}.{i}.type")
        _need_str(block, "text", f"{where}.{i}.text", empty_ok=True)


def _check_sampling(body: dict) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (_is_int(value) or isinstance(value, float)):
            raise TranslationError("must be a number", name)
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise TranslationError("must be a non-negative integer", "top_k")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise TranslationError("must be a boolean", "stream")
    stops = body.get("stop_sequences")
    if stops is None:
        return
    if not isinstance(stops, list):
        raise TranslationError("must be a list of strings", "stop_sequences")
    for i, stop in enumerate(stops):
        if not isinstance(stop, str) or not stop:
            raise TranslationError("must be a non-empty string", f"stop_sequences.{i}")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise TranslationError("must be a list of tools", "tools")
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise TranslationError("must be a tool object", where)
        _need_str(tool, "name", f"{where}.name")
        ttype = tool.get("type")
        if ttype is not None and ttype != "custom":
            if not isinstance(ttype, str):
                raise TranslationError("must be a string", f"{where}.type")
            continue   # a server or Anthropic-defined tool: no input_schema of its own
        if not isinstance(tool.get("input_schema"), dict):
            raise TranslationError("field required (a JSON schema object)",
                                   f"{where}.input_schema")
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            raise TranslationError("must be a string", f"{where}.description")


def _check_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise TranslationError("must be an object with a type", "tool_choice")
    if choice.get("type") not in TOOL_CHOICES:
        raise TranslationError(f"must be one of {', '.join(TOOL_CHOICES)}", "tool_choice.type")
    if choice["type"] == "tool":
        _need_str(choice, "name", "tool_choice.name")
    flag = choice.get("disable_parallel_tool_use")
    if flag is not None and not isinstance(flag, bool):
        raise TranslationError("must be a boolean", "tool_choice.disable_parallel_tool_use")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise TranslationError("must be an object", "metadata")
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise TranslationError("must be a string", "metadata.user_id")


def _need_str(obj: dict, key: str, where: str, *, empty_ok: bool = False) -> None:
    value = obj.get(key)
    if value is None:
        raise TranslationError("field required", where)
    if not isinstance(value, str) or not (value or empty_ok):
        raise TranslationError("must be a non-empty string" if not empty_ok
                               else "must be a string", where)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
