"""A chat completion as an Anthropic message, and the usage and stop-reason maps both share.

Choices where the two APIs differ:
- Reasoning (`reasoning_content`, or `reasoning` as newer vLLM and Ollama name it) becomes a
  thinking block first, then the text, then one tool_use block per tool call.
- A thinking block carries SIGNATURE, a fixed placeholder: Anthropic clients (Claude Code
  among them) discard thinking blocks without a signature, and no one but Anthropic can make
  a real one. It is never checked on the way back in.
- Tool call arguments that are not a JSON object are kept, not lost: the input becomes
  `{"_raw": "<the arguments as the runtime sent them>"}`, so the client (and the model, when
  the client reports the bad call back) sees what was produced. Empty arguments are `{}`.
- Tool call ids are kept as the runtime made them, so the tool_result the client sends back
  names the same id the runtime knows; a call without one gets a fresh `toolu_` id.
- finish_reason stop → end_turn, or stop_sequence (with the string) when the runtime says
  which stop string matched (vLLM's `stop_reason`, SGLang's `matched_stop`), or tool_use when
  the answer has tool calls (some runtimes say "stop" then); length → max_tokens;
  tool_calls/function_call → tool_use; content_filter → refusal; anything else → end_turn.
- Usage: Anthropic's input_tokens excludes cached tokens and OpenAI's prompt_tokens includes
  them, so input_tokens = prompt_tokens − cached_tokens and cache_read_input_tokens =
  cached_tokens (only when the runtime reports it). `anthropic_usage` adds them back, so the
  gateway charges the same prompt tokens on either path.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

SIGNATURE = "unsigned-translated-reasoning"
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "function_call": "tool_use", "content_filter": "refusal"}
_INPUT_PARTS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def chat_to_message(chat: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic message for a non-streamed chat completion, named `model`."""
    chat = _dict(chat)
    choices = chat.get("choices")
    choice = _dict(choices[0]) if isinstance(choices, list) and choices else {}
    message = _dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": SIGNATURE})
    text = _text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    calls = [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []
    for call in calls:
        content.append(_tool_use_block(call))
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and not calls:
        content.append(_tool_use_block({"function": legacy}))
    has_tools = any(block["type"] == "tool_use" for block in content)
    stop, sequence = stop_reason(choice.get("finish_reason"), matched_stop(choice), has_tools)
    return {"id": message_id(chat.get("id")), "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop,
            "stop_sequence": sequence, "usage": message_usage(chat.get("usage"))}


def reasoning_of(message: dict[str, Any]) -> str | None:
    """A message's or delta's reasoning text, under either name runtimes use for it."""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return reasoning if isinstance(reasoning, str) else None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):   # a few runtimes answer with text parts
        return "".join(part.get("text") or "" for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    function = _dict(call.get("function"))
    cid, name = call.get("id"), function.get("name")
    return {"type": "tool_use", "id": cid if isinstance(cid, str) and cid else tool_use_id(),
            "name": name if isinstance(name, str) else "",
            "input": tool_input(function.get("arguments"))}


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool call arguments as a tool_use input object; see the module docstring for `_raw`."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or isinstance(arguments, str) and not arguments.strip():
        return {}
    raw = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_raw": raw}


def matched_stop(choice: dict[str, Any]) -> str | None:
    """The stop string a runtime says ended the answer (a token id does not count)."""
    for key in ("stop_reason", "matched_stop"):
        value = choice.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def stop_reason(finish_reason: Any, matched: str | None, has_tool_use: bool
                ) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a chat finish_reason."""
    if not isinstance(finish_reason, str) or finish_reason == "stop":
        if matched is not None:
            return "stop_sequence", matched
        return ("tool_use" if has_tool_use else "end_turn"), None
    return _STOP_REASONS.get(finish_reason, "end_turn"), None


def message_usage(usage: Any) -> dict[str, int]:
    """Anthropic usage for a chat usage object (zeros when the runtime sent none)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens")) or 0
    out = {"input_tokens": prompt, "output_tokens": _count(usage.get("completion_tokens")) or 0}
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is not None:
        out["input_tokens"] = max(0, prompt - cached)
        out["cache_read_input_tokens"] = cached
    return out


def anthropic_usage(obj: Any, previous: dict[str, int] | None = None) -> dict[str, int] | None:
    """The gateway's usage ({prompt_tokens, completion_tokens}) from Anthropic usage.

    `obj` is a message, a message_start or message_delta event, or a usage object. Counts on
    message_delta are cumulative and may leave input out, so values found here overwrite
    those in `previous` and missing ones keep theirs: fold a stream's events through it.
    Returns None while no count is known."""
    usage = _usage_of(obj)
    out = dict(previous) if previous else {}
    if usage is not None:
        if _count(usage.get("input_tokens")) is not None:
            out["prompt_tokens"] = sum(_count(usage.get(k)) or 0 for k in _INPUT_PARTS)
        output = _count(usage.get("output_tokens"))
        if output is not None:
            out["completion_tokens"] = output
    return out or None


def _usage_of(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "message_start" and isinstance(obj.get("message"), dict):
        obj = obj["message"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    return obj if "input_tokens" in obj or "output_tokens" in obj else None


def message_id(chat_id: Any) -> str:
    """`msg_` + the chat completion id's own part, so logs of both sides line up."""
    if isinstance(chat_id, str) and chat_id:
        for prefix in ("chatcmpl-", "chatcmpl_", "msg_"):
            if chat_id.startswith(prefix) and len(chat_id) > len(prefix):
                chat_id = chat_id[len(prefix):]
                break
        return "msg_" + chat_id
    return "msg_" + uuid.uuid4().hex


def tool_use_id() -> str:
    return "toolu_" + uuid.uuid4().hex


def _dict(value: Any) -> dict[str, Any]:
    """Runtime answers are trusted for shape only this far: anything odd counts as empty."""
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None
