"""An Anthropic Messages request as a chat completions request, for runtimes without /v1/messages.

Choices where the two APIs differ (each is what a client of either API would least expect
to lose):
- `system` (a string or text blocks) becomes one leading system message; blocks are joined
  with a newline. System messages inside `messages` are folded in by anthropic_system (into
  that prompt when they lead, else into a user turn), so every chat template takes them. `cache_control` marks are dropped: chat completions has no such thing.
- A user message's `tool_result` blocks become `tool` messages, placed before the rest of the
  message, because chat completions wants them right after the assistant's tool calls. An
  error result keeps its text behind an "Error: " prefix (chat completions has no is_error
  flag). Images inside a tool result go into the user message that follows: `tool` messages
  carry text only.
- User text blocks are joined with a newline into one string when the message has no image:
  every runtime accepts string content, not every one a list of text parts.
- Assistant `thinking` blocks are passed as `reasoning_content` (the field llama.cpp and
  vLLM's chat templates read back), not dropped: models that think between tool calls need
  their earlier reasoning; templates that do not use it ignore it. `redacted_thinking` is
  opaque and dropped. Signatures are not checked: only Anthropic could.
- An assistant turn with tool calls and no text has `content: ""`, not null: OpenAI's chat
  spec takes a string there, and some runtimes refuse null (see `_assistant_message`).
- `top_k` is passed through (vLLM, SGLang, llama.cpp and Ollama accept it). `thinking` and
  other Anthropic-only settings are not forwarded: the runtime's reasoning parser decides.
- Blocks and tools chat completions cannot express (documents, server tools, file sources)
  are a TranslationError naming the field, not silently dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.translate.anthropic_errors import TranslationError
from gateway.translate.anthropic_system import fold_system_messages
from gateway.translate.anthropic_validate import validate_messages

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def messages_to_chat(body: dict[str, Any], *, count_tokens: bool = False) -> dict[str, Any]:
    """The chat completions request for an Anthropic one; validates it first.

    `count_tokens`: a /v1/messages/count_tokens body, made into the messages and tools a
    runtime's tokenizer endpoint takes (no max_tokens, sampling or stream)."""
    validate_messages(body, count_tokens=count_tokens)
    system, turns = fold_system_messages(body.get("system"), body["messages"])
    messages = _system_messages(system)
    for i, msg, skip in turns:
        where = f"messages.{i}"
        if msg["role"] == "user":
            messages.extend(_user_messages(msg["content"], where, skip))
        else:
            messages.append(_assistant_message(msg["content"], where))
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if not count_tokens:
        chat["max_tokens"] = body["max_tokens"]
        _copy_sampling(body, chat)
    _copy_tools(body, chat)
    return chat


def _system_messages(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, list):
        system = "\n".join(block["text"] for block in system)
    return [{"role": "system", "content": system}] if system else []


def _user_messages(content: Any, where: str, skip: int = 0) -> list[dict[str, Any]]:
    """Tool results first (as `tool` messages), then one user message with the rest.
    `skip`: blocks the gateway put first (system reminders), not counted in error paths."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        btype = block["type"]
        at = f"{where}.content.{j - skip}"
        if btype == "tool_result":
            tools.append(_tool_message(block, parts, at))
        else:
            parts.append(_user_part(block, at))
    if parts:
        tools.append({"role": "user", "content": _collapse(parts)})
    return tools


def _user_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    btype = block["type"]
    if btype == "text":
        return {"type": "text", "text": block["text"]}
    if btype == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}
    raise _untranslatable(btype, f"{where}.type")


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block["source"]
    if source["type"] == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    if source["type"] == "url":
        return source["url"]
    raise TranslationError(f"image source type {source['type']!r} cannot be translated to "
                           "chat completions (use base64 or url)", f"{where}.source.type")


def _tool_message(block: dict[str, Any], parts: list[dict[str, Any]], where: str
                  ) -> dict[str, Any]:
    """A `tool` message for one tool_result; its images are added to `parts`."""
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            itype = inner["type"]
            if itype == "text":
                texts.append(inner["text"])
            elif itype == "image":
                parts.append({"type": "image_url",
                              "image_url": {"url": _image_url(inner, f"{where}.content.{k}")}})
            else:
                raise _untranslatable(itype, f"{where}.content.{k}.type")
        content = "\n".join(texts)
    text = content or ""
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        btype = block["type"]
        if btype == "text":
            texts.append(block["text"])
        elif btype == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": orjson.dumps(block["input"]).decode()}})
        elif btype == "thinking":
            reasoning.append(block["thinking"])
        elif btype != "redacted_thinking":
            raise _untranslatable(btype, f"{where}.content.{j}.type")
    # Assistant text blocks are pieces of one generation (split by citations or tool
    # calls), so they are joined as they were produced, without a separator.
    text = "".join(texts)
    # Tool calls and no text: an empty string. OpenAI's chat spec lets such a message omit
    # `content` or send null, but llama-cpp-python's server (0.3.x) takes neither: its
    # request schema refuses null (422), and with the key left out its
    # `chatml-function-calling` template (rendered with StrictUndefined) fails on
    # `message.content`, ending the stream before its first event. "" passes both (and
    # llama-server takes all three forms).
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        msg["tool_calls"] = calls
    if any(reasoning):
        msg["reasoning_content"] = "".join(reasoning)
    return msg


def _copy_sampling(body: dict[str, Any], chat: dict[str, Any]) -> None:
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stream"):
        chat["stream"] = True   # usage is asked for per backend (api/plans.py)
    elif body.get("stream") is False:
        chat["stream"] = False
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        chat["user"] = user_id


def _copy_tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if not tools:
        return   # a tool_choice without tools means nothing, and some runtimes refuse it
    chat["tools"] = [_function_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is None:
        return
    if choice["type"] == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = _TOOL_CHOICES[choice["type"]]
    if choice.get("disable_parallel_tool_use") and choice["type"] != "none":
        chat["parallel_tool_calls"] = False


def _function_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    ttype = tool.get("type")
    if ttype is not None and ttype != "custom":
        raise TranslationError(f"tool type {ttype!r} runs on Anthropic's servers and cannot "
                               "be translated to chat completions", f"{where}.type")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _untranslatable(btype: str, where: str) -> TranslationError:
    return TranslationError(f"content block type {btype!r} cannot be translated to chat "
                            "completions", where)
