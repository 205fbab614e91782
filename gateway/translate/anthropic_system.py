"""System messages inside a Messages conversation, folded for chat templates.

Anthropic's `mid-conversation-system-2026-04-07` beta (Claude Code sends it on every
request) lets `{"role": "system"}` messages stand anywhere in `messages[]`. A runtime
serving /v1/messages gets them as they are; for the others the request becomes chat
completions, whose runtimes render it with the model's chat template, and many templates
refuse a system message that is not first (Gemma's, Mistral's and Llama 2's raise; others
require user and assistant to alternate). So the translation keeps exactly one system
message, first, and strict alternation intact:

- System messages before the first user or assistant message join the request's `system`
  prompt (after it, a newline apart): they are the leading system prompt, word for word.
- A later one becomes text in a user turn, wrapped in `<system-reminder>` tags: at the start
  of the user message that follows it; else (an assistant message or nothing follows) at the
  end of the user message before it; else (assistant turns on both sides) a user message of
  its own between them. That is where Claude Code put the same text before the beta (a
  `<system-reminder>` block in the user turn), so the model reads it at the point of the
  conversation where it was said, as the client meant it. Folding it into the leading system
  prompt instead would move it back in time and change the conversation's first tokens on
  every such message, which throws away the runtime's prefix cache.
"""

from __future__ import annotations

from typing import Any

# A message, its index in the client's `messages`, and how many reminder blocks were put
# before its own content (so an error still names the client's block index).
Turn = tuple[int, dict[str, Any], int]


def fold_system_messages(system: Any, messages: list[dict[str, Any]]
                         ) -> tuple[Any, list[Turn]]:
    """The `system` prompt and the user/assistant turns once system messages are folded
    in; each turn keeps the index of the client's message it came from (for errors)."""
    if not any(m["role"] == "system" for m in messages):
        return system, [(i, m, 0) for i, m in enumerate(messages)]
    leading: list[str] = []
    turns: list[Turn] = []
    pending: list[str] = []   # reminders waiting for the next user turn
    for i, msg in enumerate(messages):
        if msg["role"] == "system":
            text = _text(msg["content"])
            if not text:
                continue
            (leading if not turns else pending).append(text)
            continue
        if pending:
            _place(pending, turns, i, msg)
            pending = []
            if msg["role"] == "user":
                continue
        turns.append((i, msg, 0))
    if pending:
        _place(pending, turns, len(messages), None)
    if leading:
        system = "\n".join([t for t in (_text(system),) if t] + leading)
    return system, turns


def _place(texts: list[str], turns: list[Turn], index: int, following: dict | None) -> None:
    """Put reminders into the following user message, the previous one, or their own."""
    blocks = [{"type": "text", "text": f"<system-reminder>\n{t}\n</system-reminder>"}
              for t in texts]
    if following is not None and following["role"] == "user":
        turns.append((index, {**following, "content": blocks + _blocks(following["content"])},
                      len(blocks)))
    elif turns and turns[-1][1]["role"] == "user":
        at, previous, skip = turns[-1]
        turns[-1] = (at, {**previous, "content": _blocks(previous["content"]) + blocks}, skip)
    else:
        turns.append((index, {"role": "user", "content": blocks}, len(blocks)))


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _text(content: Any) -> str:
    """A system prompt's text: the string, or its text blocks a newline apart (validated)."""
    if isinstance(content, list):
        return "\n".join(block["text"] for block in content)
    return content or ""
