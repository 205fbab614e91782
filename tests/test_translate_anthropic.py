"""Anthropic Messages ⇄ chat completions: requests, answers, streams, usage, errors.

Pure translation tests first; the last ones put the official anthropic SDK on the client
side of a small aiohttp app that answers through the translation, so the events and
messages are judged by the SDK's own parser, not by this file's idea of them.
"""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web

from gateway.translate.anthropic import (
    SIGNATURE, ChatStreamToMessages, TranslationError, anthropic_usage, chat_to_message,
    error_body, error_event, error_type_for_status, message_usage, messages_to_chat,
    validate_messages)

PNG = "iVBORw0KGgo="
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def request(**fields: Any) -> dict[str, Any]:
    body = {"model": "qwen", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """SSE bytes as (event name, data); every event must be complete and self-consistent."""
    assert raw == b"" or raw.endswith(b"\n\n")
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        name, data = name_line[7:].decode(), orjson.loads(data_line[6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def assert_grammar(evts: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's order: start, ping, blocks opened and closed in index order, end."""
    names = [name for name, _ in evts]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    open_index, next_index, kind = None, 0, None
    for name, data in evts[2:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, kind = data["index"], data["content_block"]["type"]
            next_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
            allowed = {"thinking": {"thinking_delta", "signature_delta"},
                       "text": {"text_delta"}, "tool_use": {"input_json_delta"}}[kind]
            assert data["delta"]["type"] in allowed
        else:
            assert name == "content_block_stop" and data["index"] == open_index
            open_index = None
    assert open_index is None


def run_stream(chunks: list[dict[str, Any]], **kw: Any) -> list[tuple[str, dict[str, Any]]]:
    translator = ChatStreamToMessages("qwen-public", **kw)
    raw = b"".join(translator.feed(chunk) for chunk in chunks) + translator.finish()
    evts = events(raw)
    assert_grammar(evts)
    return evts


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
          ) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    choice.update(extra)
    return {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1,
            "model": "Qwen/Qwen3-8B", "choices": [choice]}


def tool_chunk(index: int, arguments: str, id: str | None = None, name: str | None = None
               ) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id:
        call.update(id=id, type="function")
    if name:
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1,
            "model": "Qwen/Qwen3-8B", "choices": [], "usage": usage}


# --- requests: Anthropic → chat completions -------------------------------------------


def reminder(text):
    return f"<system-reminder>\n{text}\n</system-reminder>"


def test_leading_system_messages_join_the_system_prompt():
    chat = messages_to_chat(request(system="Be brief.", messages=[
        {"role": "system", "content": "Use metric units."},
        {"role": "system", "content": [{"type": "text", "text": "No emoji."}]},
        {"role": "user", "content": "hi"}]))
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\nUse metric units.\nNo emoji."},
        {"role": "user", "content": "hi"}]
    only = messages_to_chat(request(messages=[{"role": "system", "content": "S"},
                                              {"role": "user", "content": "hi"}]))
    assert only["messages"][0] == {"role": "system", "content": "S"}


def test_later_system_messages_go_into_a_user_turn_where_they_were_said():
    """Into the next user message; else the previous one; else a user turn of their own.
    The chat keeps one system message, first, and user/assistant alternating."""
    chat = messages_to_chat(request(system="S", messages=[
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "system", "content": "The date is now Tuesday."},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
        {"role": "system", "content": "Answer in French."}]))
    assert chat["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": reminder("The date is now Tuesday.") + "\nq2\n"
                                    + reminder("Answer in French.")}]
    between = messages_to_chat(request(messages=[
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
        {"role": "system", "content": "Be careful."},
        {"role": "assistant", "content": "b"}, {"role": "system", "content": ""}]))
    assert [m["role"] for m in between["messages"]] == ["user", "assistant", "user",
                                                         "assistant"]
    assert between["messages"][2]["content"] == reminder("Be careful.")


def test_a_system_message_after_a_tool_result_follows_the_tool_message():
    chat = messages_to_chat(request(tools=[WEATHER], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1",
                                           "name": "get_weather", "input": {"city": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "sunny"}]},
        {"role": "system", "content": "Summarise."}]))
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": reminder("Summarise.")}]


def test_errors_still_name_the_clients_own_index():
    with pytest.raises(TranslationError) as err:
        messages_to_chat(request(messages=[
            {"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "system", "content": "t"},
            {"role": "user", "content": [{"type": "document", "source": {}}]}]))
    assert err.value.param == "messages.3.content.0.type"


def test_system_as_string_or_text_blocks():
    assert messages_to_chat(request(system="Be brief."))["messages"][0] == {
        "role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Two."}]
    chat = messages_to_chat(request(system=blocks))
    assert chat["messages"] == [{"role": "system", "content": "One.\nTwo."},
                                {"role": "user", "content": "hi"}]
    assert messages_to_chat(request(system=""))["messages"] == [
        {"role": "user", "content": "hi"}]


def test_user_text_and_images():
    content = [{"type": "text", "text": "What is in"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": PNG}},
               {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
               {"type": "text", "text": "these?"}]
    chat = messages_to_chat(request(messages=[{"role": "user", "content": content}]))
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
        {"type": "text", "text": "these?"}]}]
    only_text = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    chat = messages_to_chat(request(messages=[{"role": "user", "content": only_text}]))
    assert chat["messages"] == [{"role": "user", "content": "a\nb"}]


def test_tool_use_and_tool_results_in_history():
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather",
             "input": {"city": "Rome", "units": ["c"]}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "is_error": True,
             "content": [{"type": "text", "text": "timeout"},
                         {"type": "image", "source": {"type": "url",
                                                      "url": "https://x.test/r.png"}}]},
            {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_3", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3"}]},
    ]
    chat = messages_to_chat(request(messages=history, tools=[WEATHER]))
    assistant, tool1, tool2, user, bare_call, tool3 = chat["messages"][1:]
    assert assistant["content"] == "Checking."
    assert assistant["reasoning_content"] == "Two cities, two calls."
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1", "call_2"]
    assert assistant["tool_calls"][1]["type"] == "function"
    assert assistant["tool_calls"][1]["function"]["name"] == "get_weather"
    assert orjson.loads(assistant["tool_calls"][1]["function"]["arguments"]) == {
        "city": "Rome", "units": ["c"]}
    assert tool1 == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    assert tool2 == {"role": "tool", "tool_call_id": "call_2", "content": "Error: timeout"}
    assert user == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x.test/r.png"}},
        {"type": "text", "text": "And tomorrow?"}]}
    assert bare_call["content"] == "" and "reasoning_content" not in bare_call
    assert bare_call["tool_calls"][0]["function"]["arguments"] == "{}"
    assert tool3 == {"role": "tool", "tool_call_id": "call_3", "content": ""}


def test_a_tool_use_only_turn_sends_empty_content_not_null():
    """An assistant message with tool_calls and no text: llama-cpp-python's server refuses
    a null content (422) and its function-calling template fails without the key, so the
    content is "", also when the turn's only text is empty or it has thinking besides."""
    use = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}
    turns = [[use], [{"type": "text", "text": ""}, use],
             [{"type": "thinking", "thinking": "Look it up.", "signature": "s"}, use]]
    for content in turns:
        chat = messages_to_chat(request(tools=[WEATHER], messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": "sunny"}]}]))
        assistant = chat["messages"][1]
        assert assistant["role"] == "assistant" and assistant["content"] == "", assistant
        assert [c["id"] for c in assistant["tool_calls"]] == ["t1"]
        assert None not in (m.get("content", "") for m in chat["messages"])
    with_text = messages_to_chat(request(tools=[WEATHER], messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, use]}]))
    assert with_text["messages"][1]["content"] == "Looking."


def test_prefill_and_string_assistant():
    chat = messages_to_chat(request(messages=[
        {"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"},
        {"role": "user", "content": "More"}, {"role": "assistant", "content": []}]))
    assert chat["messages"][1] == {"role": "assistant", "content": "1, 2,"}
    assert chat["messages"][3] == {"role": "assistant", "content": ""}


def test_sampling_stream_and_user():
    chat = messages_to_chat(request(
        max_tokens=300, stop_sequences=["\n\nHuman:", "END"], temperature=0.2, top_p=0.9,
        top_k=40, stream=True, metadata={"user_id": "u-7"}, thinking={"type": "disabled"}))
    assert chat == {
        "model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
        "stop": ["\n\nHuman:", "END"], "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "stream": True, "user": "u-7"}   # usage: asked per backend (api/plans.py)
    plain = messages_to_chat(request(stream=False, temperature=0))
    assert plain["stream"] is False and plain["temperature"] == 0
    assert "stream_options" not in plain and "stop" not in plain


@pytest.mark.parametrize("choice, expected, parallel", [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "none"}, "none", None),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}, None),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
])
def test_tools_and_tool_choice(choice, expected, parallel):
    chat = messages_to_chat(request(tools=[WEATHER, {"name": "now", "input_schema": {
        "type": "object"}, "type": "custom", "strict": True}], tool_choice=choice))
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description":
                                          "Weather for a city",
                                          "parameters": WEATHER["input_schema"]}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"},
                                          "strict": True}}]
    assert chat["tool_choice"] == expected
    assert chat.get("parallel_tool_calls") is parallel


def test_tool_choice_without_tools_is_not_sent():
    chat = messages_to_chat(request(tool_choice={"type": "any"}))
    assert "tool_choice" not in chat and "tools" not in chat


def test_translation_leaves_the_request_as_it_was():
    body = request(system=[{"type": "text", "text": "s"}], tools=[WEATHER], stream=True)
    before = copy.deepcopy(body)
    messages_to_chat(body)
    assert body == before


@pytest.mark.parametrize("body, param", [
    (request(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "x"}}]}]), "messages.0.content.0.type"),
    (request(messages=[{"role": "user", "content": [{"type": "txt", "text": "x"}]}]),
     "messages.0.content.0.type"),
    (request(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f1"}}]}]),
     "messages.0.content.0.source.type"),
    (request(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    (request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "search_result", "source": "s", "title": "t", "content": []}]}]}]),
     "messages.0.content.0.content.0.type"),
])
def test_what_chat_cannot_express_is_an_error_naming_the_field(body, param):
    validate_messages(body)   # valid Anthropic (or unknown to it): a runtime may serve it
    with pytest.raises(TranslationError) as err:
        messages_to_chat(body)
    assert err.value.param == param and err.value.message.startswith(param + ": ")


def test_count_tokens_bodies_have_no_max_tokens():
    body = {"model": "qwen", "system": "s", "messages": [{"role": "user", "content": "hi"}],
            "tools": [WEATHER], "tool_choice": {"type": "any"}}
    validate_messages(body, count_tokens=True)
    with pytest.raises(TranslationError) as err:
        validate_messages(body)
    assert err.value.param == "max_tokens"
    chat = messages_to_chat(dict(body, stream=True, temperature=1), count_tokens=True)
    assert chat == {"model": "qwen", "messages": [{"role": "system", "content": "s"},
                                                  {"role": "user", "content": "hi"}],
                    "tools": [{"type": "function", "function": {
                        "name": "get_weather", "description": "Weather for a city",
                        "parameters": WEATHER["input_schema"]}}],
                    "tool_choice": "required"}


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    (request(max_tokens=None), "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (request(max_tokens=0), "max_tokens"),
    (request(max_tokens=True), "max_tokens"),
    (request(max_tokens="9"), "max_tokens"),
    (request(messages=None), "messages"),
    (request(messages={"role": "user"}), "messages"),
    (request(messages=[]), "messages"),
    (request(messages=["hi"]), "messages.0"),
    (request(messages=[{"role": "system", "content": [{"type": "image", "source": {}}]}]),
     "messages.0.content.0.type"),
    (request(messages=[{"role": "system", "content": 5}]), "messages.0.content"),
    (request(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (request(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    (request(messages=[{"role": "user", "content": []}]), "messages.0.content"),
    (request(messages=[{"role": "user", "content": ["hi"]}]), "messages.0.content.0"),
    (request(messages=[{"role": "user", "content": [{"text": "x"}]}]),
     "messages.0.content.0.type"),
    (request(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     "messages.0.content.0.text"),
    (request(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "a",
                                                      "name": "b", "input": {}}]}]),
     "messages.0.content.0.type"),
    (request(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "a"}]}]), "messages.1.content.0.type"),
    (request(messages=[{"role": "assistant", "content": [
        {"type": "image", "source": {"type": "url", "url": "u"}}]}]),
     "messages.0.content.0.type"),
    (request(messages=[{"role": "assistant", "content": [
        {"type": "tool_use", "id": "a", "name": "b", "input": "{}"}]}]),
     "messages.0.content.0.input"),
    (request(messages=[{"role": "assistant", "content": [
        {"type": "tool_use", "name": "b", "input": {}}]}]), "messages.0.content.0.id"),
    (request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "content": "x"}]}]), "messages.0.content.0.tool_use_id"),
    (request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "a", "is_error": "yes"}]}]),
     "messages.0.content.0.is_error"),
    (request(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "a", "content": {"text": "x"}}]}]),
     "messages.0.content.0.content"),
    (request(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp",
                                     "data": PNG}}]}]),
     "messages.0.content.0.source.media_type"),
    (request(messages=[{"role": "user", "content": [{"type": "image"}]}]),
     "messages.0.content.0.source"),
    (request(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url"}}]}]), "messages.0.content.0.source.url"),
    (request(system=7), "system"),
    (request(system=[{"type": "image", "source": {}}]), "system.0.type"),
    (request(stop_sequences="END"), "stop_sequences"),
    (request(stop_sequences=["ok", ""]), "stop_sequences.1"),
    (request(temperature="hot"), "temperature"),
    (request(top_k=1.5), "top_k"),
    (request(stream="yes"), "stream"),
    (request(tools={"name": "x"}), "tools"),
    (request(tools=[{"name": "x"}]), "tools.0.input_schema"),
    (request(tools=[{"input_schema": {}}]), "tools.0.name"),
    (request(tools=[WEATHER, {"name": "y", "input_schema": {}, "description": 3}]),
     "tools.1.description"),
    (request(tool_choice="auto"), "tool_choice"),
    (request(tool_choice={"type": "required"}), "tool_choice.type"),
    (request(tool_choice={"type": "tool"}), "tool_choice.name"),
    (request(tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
     "tool_choice.disable_parallel_tool_use"),
    (request(metadata={"user_id": 5}), "metadata.user_id"),
])
def test_malformed_requests_name_the_field(body, param):
    with pytest.raises(TranslationError) as err:
        validate_messages(body)
    assert err.value.param == param
    assert err.value.to_dict()["type"] == "error"
    assert err.value.to_dict()["error"]["type"] == "invalid_request_error"
    if param:
        assert err.value.to_dict()["error"]["message"].startswith(param + ": ")


def test_optional_nulls_count_as_absent():
    nulls = request(system=None, tools=None, tool_choice=None, temperature=None,
                    metadata={"user_id": None}, stop_sequences=None)
    validate_messages(nulls)   # no field is refused...
    # ...and the translation is that of the request without them.
    assert messages_to_chat(nulls) == messages_to_chat(request())


# --- answers: chat completion → Anthropic message ---------------------------------------


def chat_answer(message: dict[str, Any], finish: str | None = "stop", usage: Any = None,
                **choice_extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message},
              "finish_reason": finish, **choice_extra}
    return {"id": "chatcmpl-xyz", "object": "chat.completion", "model": "Qwen/Qwen3-8B",
            "choices": [choice], "usage": usage or {"prompt_tokens": 12,
                                                    "completion_tokens": 3}}


def test_text_answer():
    msg = chat_to_message(chat_answer({"content": "Hello!"}), "qwen-public")
    assert msg == {"id": "msg_xyz", "type": "message", "role": "assistant",
                   "model": "qwen-public", "content": [{"type": "text", "text": "Hello!"}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 12, "output_tokens": 3}}


def test_reasoning_text_and_tool_calls_in_order():
    message = {"reasoning_content": "Need the weather.", "content": "Let me check.",
               "tool_calls": [
                   {"id": "chatcmpl-tool-1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                   {"id": "chatcmpl-tool-2", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    msg = chat_to_message(chat_answer(message, "tool_calls"), "qwen")
    assert msg["content"] == [
        {"type": "thinking", "thinking": "Need the weather.", "signature": SIGNATURE},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "chatcmpl-tool-1", "name": "get_weather",
         "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "chatcmpl-tool-2", "name": "get_weather",
         "input": {"city": "Rome"}}]
    assert msg["stop_reason"] == "tool_use"


def test_reasoning_under_its_newer_name_and_no_text():
    msg = chat_to_message(chat_answer({"reasoning": "hm", "content": None}), "qwen")
    assert msg["content"] == [{"type": "thinking", "thinking": "hm", "signature": SIGNATURE}]


@pytest.mark.parametrize("arguments, expected", [
    ('{"city": "Paris"}', {"city": "Paris"}),
    ("", {}),
    ("  ", {}),
    (None, {}),
    ({"city": "Oslo"}, {"city": "Oslo"}),
    ('{"city": "Par', {"_raw": '{"city": "Par'}),
    ('"Paris"', {"_raw": '"Paris"'}),
    ("[1, 2]", {"_raw": "[1, 2]"}),
])
def test_tool_arguments_are_never_lost(arguments, expected):
    message = {"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}
    block = chat_to_message(chat_answer(message, "tool_calls"), "m")["content"][0]
    assert block == {"type": "tool_use", "id": "c1", "name": "f", "input": expected}


def test_tool_calls_with_finish_reason_stop_and_no_ids():
    message = {"content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    msg = chat_to_message(chat_answer(message, "stop"), "m")
    assert msg["stop_reason"] == "tool_use"
    assert msg["content"][0]["id"].startswith("toolu_") and len(msg["content"][0]["id"]) > 10


def test_legacy_function_call():
    message = {"content": None, "function_call": {"name": "f", "arguments": '{"a": 1}'}}
    msg = chat_to_message(chat_answer(message, "function_call"), "m")
    assert msg["content"][0]["input"] == {"a": 1} and msg["stop_reason"] == "tool_use"


@pytest.mark.parametrize("finish, extra, reason, sequence", [
    ("stop", {}, "end_turn", None),
    ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),        # vLLM
    ("stop", {"stop_reason": 151645}, "end_turn", None),              # a stop token id
    ("stop", {"matched_stop": "###"}, "stop_sequence", "###"),        # SGLang
    ("stop", {"matched_stop": 2}, "end_turn", None),
    ("length", {}, "max_tokens", None),
    ("tool_calls", {}, "tool_use", None),
    ("content_filter", {}, "refusal", None),
    (None, {}, "end_turn", None),
    ("abort", {}, "end_turn", None),
    (["stop"], {}, "end_turn", None),
])
def test_stop_reasons(finish, extra, reason, sequence):
    msg = chat_to_message(chat_answer({"content": "x"}, finish, **extra), "m")
    assert (msg["stop_reason"], msg["stop_sequence"]) == (reason, sequence)


def test_usage_with_cached_prompt_tokens():
    usage = {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
             "prompt_tokens_details": {"cached_tokens": 800}}
    msg = chat_to_message(chat_answer({"content": "x"}, usage=usage), "m")
    assert msg["usage"] == {"input_tokens": 200, "output_tokens": 20,
                            "cache_read_input_tokens": 800}
    assert anthropic_usage(msg) == {"prompt_tokens": 1000, "completion_tokens": 20}
    assert message_usage({"prompt_tokens_details": None}) == {"input_tokens": 0,
                                                              "output_tokens": 0}


@pytest.mark.parametrize("chat", [
    [], {"choices": "x"}, {"choices": [None]}, {"choices": [{"message": "hi"}]},
    {"choices": [{"message": {"tool_calls": "f"}}]},
    {"choices": [{"message": {"tool_calls": [None, {"function": "f", "id": 3}]}}]},
])
def test_odd_runtime_answers_translate_without_crashing(chat):
    msg = chat_to_message(chat, "m")
    assert msg["type"] == "message" and msg["stop_reason"] in ("end_turn", "tool_use")
    assert all(block["type"] == "tool_use" and block["input"] == {} and block["name"] == ""
               for block in msg["content"])


def test_ids_and_empty_answers():
    empty = {"id": "cmpl-9", "choices": [], "usage": None}
    msg = chat_to_message(empty, "m")
    assert msg["id"] == "msg_cmpl-9" and msg["content"] == []
    assert msg["usage"] == {"input_tokens": 0, "output_tokens": 0}
    first, second = (chat_to_message({"choices": []}, "m")["id"] for _ in range(2))
    assert first.startswith("msg_") and first != second


# --- usage the gateway charges ----------------------------------------------------------


def test_anthropic_usage_folds_a_stream():
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 30, "cache_read_input_tokens": 70, "cache_creation_input_tokens": 5,
        "output_tokens": 1}}}
    usage = anthropic_usage(start)
    assert usage == {"prompt_tokens": 105, "completion_tokens": 1}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 42}}
    assert anthropic_usage(delta, usage) == {"prompt_tokens": 105, "completion_tokens": 42}
    assert usage == {"prompt_tokens": 105, "completion_tokens": 1}   # not changed in place
    later = {"type": "message_delta", "usage": {"input_tokens": 31, "output_tokens": 50}}
    assert anthropic_usage(later, usage) == {"prompt_tokens": 31, "completion_tokens": 50}


def test_anthropic_usage_without_counts():
    assert anthropic_usage({"type": "ping"}) is None
    assert anthropic_usage("nonsense") is None
    assert anthropic_usage({"input_tokens": 3, "output_tokens": 4}) == {
        "prompt_tokens": 3, "completion_tokens": 4}
    assert anthropic_usage({"usage": {"input_tokens": True}}) is None


# --- streams: chat chunks → Anthropic events --------------------------------------------


def test_text_stream_sequence():
    evts = run_stream([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                       chunk({"content": "lo"}), chunk({"content": ""}, "stop"),
                       usage_chunk(9, 2)])
    assert [name for name, _ in evts] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = evts[0][1]["message"]
    assert start == {"id": "msg_abc", "type": "message", "role": "assistant",
                     "model": "qwen-public", "content": [], "stop_reason": None,
                     "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert evts[2][1]["content_block"] == {"type": "text", "text": ""}
    assert [d["delta"] for n, d in evts if n == "content_block_delta"] == [
        {"type": "text_delta", "text": "Hel"}, {"type": "text_delta", "text": "lo"}]
    assert evts[-2][1] == {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"input_tokens": 9, "output_tokens": 2}}


def test_reasoning_then_text_then_tool_stream():
    evts = run_stream([
        chunk({"reasoning_content": "Think"}), chunk({"reasoning_content": "ing."}),
        chunk({"content": "Calling."}),
        tool_chunk(0, "", id="call_1", name="get_weather"),
        tool_chunk(0, '{"city": '), tool_chunk(0, '"Paris"}'),
        chunk({}, "tool_calls"), usage_chunk(50, 20, cached=40)])
    starts = [d["content_block"] for n, d in evts if n == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""},
                      {"type": "text", "text": ""},
                      {"type": "tool_use", "id": "call_1", "name": "get_weather",
                       "input": {}}]
    deltas = [(d["index"], d["delta"]) for n, d in evts if n == "content_block_delta"]
    assert deltas == [
        (0, {"type": "thinking_delta", "thinking": "Think"}),
        (0, {"type": "thinking_delta", "thinking": "ing."}),
        (0, {"type": "signature_delta", "signature": SIGNATURE}),
        (1, {"type": "text_delta", "text": "Calling."}),
        (2, {"type": "input_json_delta", "partial_json": '{"city": '}),
        (2, {"type": "input_json_delta", "partial_json": '"Paris"}'})]
    assert evts[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert evts[-2][1]["usage"] == {"input_tokens": 10, "output_tokens": 20,
                                    "cache_read_input_tokens": 40}


def test_text_after_reasoning_under_the_newer_name():
    evts = run_stream([chunk({"reasoning": "a"}), chunk({"reasoning": "b", "content": "c"}),
                       chunk({}, "stop")])
    kinds = [d["content_block"]["type"] for n, d in evts if n == "content_block_start"]
    assert kinds == ["thinking", "text"]


def test_parallel_tool_calls_one_block_each():
    evts = run_stream([
        tool_chunk(0, '{"city":', id="call_a", name="get_weather"), tool_chunk(0, ' "Oslo"}'),
        tool_chunk(1, "", id="call_b", name="get_weather"), tool_chunk(1, '{"city": "Rome"}'),
        chunk({}, "tool_calls")])
    starts = [(d["index"], d["content_block"]["id"]) for n, d in evts
              if n == "content_block_start"]
    assert starts == [(0, "call_a"), (1, "call_b")]
    args = {}
    for name, data in evts:
        if name == "content_block_delta":
            args[data["index"]] = args.get(data["index"], "") + data["delta"]["partial_json"]
    assert {i: orjson.loads(a) for i, a in args.items()} == {
        0: {"city": "Oslo"}, 1: {"city": "Rome"}}


def test_every_call_at_index_zero_with_its_own_id():
    """Some runtimes send each whole call as index 0: a new id is a new block."""
    evts = run_stream([tool_chunk(0, '{"n": 1}', id="c1", name="f"),
                       tool_chunk(0, '{"n": 2}', id="c2", name="g"), chunk({}, "tool_calls")])
    blocks = [d["content_block"] for n, d in evts if n == "content_block_start"]
    assert [(b["id"], b["name"]) for b in blocks] == [("c1", "f"), ("c2", "g")]
    deltas = [(d["index"], d["delta"]["partial_json"]) for n, d in evts
              if n == "content_block_delta"]
    assert deltas == [(0, '{"n": 1}'), (1, '{"n": 2}')]


def test_a_late_fragment_goes_to_its_own_block():
    """A runtime that interleaves calls: the fragment keeps its call's block index."""
    translator = ChatStreamToMessages("m")
    raw = b"".join(translator.feed(c) for c in (
        tool_chunk(0, '{"a": ', id="c1", name="f"), tool_chunk(1, '{"b": 2}', id="c2", name="g"),
        tool_chunk(0, "1}"), chunk({}, "tool_calls"))) + translator.finish()
    json_deltas = [(d["index"], d["delta"]["partial_json"]) for n, d in events(raw)
                   if n == "content_block_delta"]
    assert json_deltas == [(0, '{"a": '), (1, '{"b": 2}'), (0, "1}")]


def test_leading_whitespace_before_the_object_is_streamed():
    evts = run_stream([tool_chunk(0, " ", id="c1", name="f"), tool_chunk(0, ' {"a"'),
                       tool_chunk(0, ": 1}"), chunk({}, "tool_calls")])
    assert [d["delta"]["partial_json"] for n, d in evts if n == "content_block_delta"] == [
        '  {"a"', ": 1}"]


def test_arguments_before_the_name_and_a_call_without_id():
    evts = run_stream([tool_chunk(0, '{"a"'), tool_chunk(0, ": 1}", name="f"),
                       chunk({}, "tool_calls")])
    start = [d for n, d in evts if n == "content_block_start"][0]["content_block"]
    assert start["name"] == "f" and start["id"].startswith("toolu_")
    deltas = [d["delta"]["partial_json"] for n, d in evts if n == "content_block_delta"]
    assert "".join(deltas) == '{"a": 1}'


def test_a_call_never_named_still_reaches_the_client():
    evts = run_stream([tool_chunk(0, '{"a": 1}', id="c9"), chunk({}, "tool_calls")])
    start = [d for n, d in evts if n == "content_block_start"][0]["content_block"]
    assert (start["id"], start["name"]) == ("c9", "")
    assert [d["delta"]["partial_json"] for n, d in evts if n == "content_block_delta"] == [
        '{"a": 1}']


def test_arguments_that_are_not_an_object_are_sent_whole_as_raw():
    evts = run_stream([tool_chunk(0, " Pa", id="c1", name="f"), tool_chunk(0, "ris"),
                       chunk({"content": "done"}), chunk({}, "stop")])
    deltas = [(d["index"], d["delta"]) for n, d in evts if n == "content_block_delta"]
    assert deltas[0] == (0, {"type": "input_json_delta",
                             "partial_json": '{"_raw":" Paris"}'})
    assert deltas[1] == (1, {"type": "text_delta", "text": "done"})
    assert evts[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stop_sequence_and_length_in_streams():
    evts = run_stream([chunk({"content": "a"}), chunk({}, "stop", stop_reason="END")])
    assert evts[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    evts = run_stream([chunk({"content": "a"}), chunk({}, "length")])
    assert evts[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert evts[-2][1]["usage"] == {"output_tokens": 0}   # the runtime sent no usage


def test_known_ids_and_input_tokens():
    usage_first = chunk({"content": "x"})
    usage_first["usage"] = {"prompt_tokens": 7, "completion_tokens": 0}
    evts = run_stream([usage_first, chunk({}, "stop")], message_id="msg_fixed")
    assert evts[0][1]["message"]["id"] == "msg_fixed"
    assert evts[0][1]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    evts = run_stream([chunk({"content": "x"})], input_tokens=33)
    assert evts[0][1]["message"]["usage"]["input_tokens"] == 33


def test_an_empty_stream_is_still_a_whole_message():
    translator = ChatStreamToMessages("m", message_id="msg_0")
    evts = events(translator.finish())
    assert_grammar(evts)
    assert len(evts) == 4 and translator.done
    assert translator.finish() == b"" and translator.feed(chunk({"content": "late"})) == b""


def test_each_feed_returns_whole_events_and_usage_is_kept():
    translator = ChatStreamToMessages("m")
    pieces = [translator.feed(c) for c in (chunk({"content": "a"}), chunk({}, "stop"),
                                           usage_chunk(4, 1))]
    assert pieces[2] == b"" and all(p == b"" or p.endswith(b"\n\n") for p in pieces)
    assert translator.usage == {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
    assert not translator.done
    translator.finish()
    assert translator.done


def test_odd_chunks_are_skipped():
    evts = run_stream([None, {"choices": "x"}, {"choices": [None]}, {"choices": [{"delta": 5}]},
                       chunk({"tool_calls": "f"}),
                       chunk({"tool_calls": [None, {"index": "a", "function": {"name": 5}}]}),
                       chunk({"content": 7}), chunk({"content": "ok"}), chunk({}, "stop")])
    assert [d["delta"] for n, d in evts if n == "content_block_delta"] == [
        {"type": "text_delta", "text": "ok"}]


def test_a_runtime_error_chunk_ends_the_stream_with_an_error_event():
    translator = ChatStreamToMessages("m")
    raw = translator.feed(chunk({"content": "par"}))
    raw += translator.feed({"error": {"message": "engine died", "type": "InternalError",
                                      "code": 500}})
    evts = events(raw)
    assert [n for n, _ in evts][-2:] == ["content_block_stop", "error"]
    assert evts[-1][1] == {"type": "error", "error": {"type": "api_error",
                                                      "message": "engine died"}}
    assert translator.done and translator.finish() == b""


def test_error_helpers():
    assert error_body("not_found_error", "no such model") == {
        "type": "error", "error": {"type": "not_found_error", "message": "no such model"}}
    assert error_event("overloaded_error", "busy") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"busy"}}\n\n')
    table = {400: "invalid_request_error", 401: "authentication_error",
             403: "permission_error", 404: "not_found_error", 413: "request_too_large",
             422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error",
             501: "api_error", 502: "api_error", 503: "overloaded_error",
             504: "timeout_error", 529: "overloaded_error"}
    assert {status: error_type_for_status(status) for status in table} == table


# --- the official anthropic SDK as the client -------------------------------------------


class ScriptedRuntime:
    """An aiohttp app on /v1/messages that answers through the translation: it translates
    the SDK's request (kept in `seen`) and replays a scripted chat answer or chunk list."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer: dict[str, Any] | list[dict[str, Any]] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        return app

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            chat = messages_to_chat(body)
        except TranslationError as exc:
            return web.json_response(exc.to_dict(), status=exc.status)
        self.seen.append(chat)
        if not chat.get("stream"):
            return web.json_response(chat_to_message(self.answer, body["model"]))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        translator = ChatStreamToMessages(body["model"])
        for item in self.answer:
            await response.write(translator.feed(item))
        await response.write(translator.finish())
        await response.write_eof()
        return response


@pytest.fixture
async def sdk(aiohttp_server):
    runtime = ScriptedRuntime()
    server = await aiohttp_server(runtime.app())
    client = anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="k",
                                      max_retries=0, timeout=10)
    yield client, runtime
    await client.close()


TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_0", "name": "get_weather",
         "input": {"city": "Paris"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_0", "content": "18C and sunny"},
        {"type": "text", "text": "And in Rome and Oslo?"}]},
]


def realistic_tool_stream() -> list[dict[str, Any]]:
    """Text in several chunks, two tool calls with arguments split over chunks, the finish
    chunk, then the usage chunk, as vLLM streams them."""
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "I'll"}), chunk({"content": " check"}),
        chunk({"content": " both."}),
        tool_chunk(0, "", id="chatcmpl-tool-r", name="get_weather"),
        tool_chunk(0, '{"ci'), tool_chunk(0, 'ty": "Ro'), tool_chunk(0, 'me"}'),
        tool_chunk(1, "", id="chatcmpl-tool-o", name="get_weather"),
        tool_chunk(1, '{"city": "Oslo", '), tool_chunk(1, '"units": ["c", "f"]}'),
        chunk({"content": ""}, "tool_calls", stop_reason=None),
        usage_chunk(120, 37, cached=64),
    ]


async def test_sdk_streams_text_and_tool_calls(sdk):
    client, runtime = sdk
    runtime.answer = realistic_tool_stream()
    seen_events = []
    async with client.messages.stream(model="qwen-public", max_tokens=256,
                                      system="You are terse.", messages=TOOL_HISTORY,
                                      tools=[WEATHER],
                                      tool_choice={"type": "auto",
                                                   "disable_parallel_tool_use": False}
                                      ) as stream:
        async for event in stream:
            seen_events.append(event.type)
        final = await stream.get_final_message()
    assert final.id == "msg_abc" and final.model == "qwen-public"
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "I'll check both."
    assert (final.content[1].id, final.content[1].name, final.content[1].input) == (
        "chatcmpl-tool-r", "get_weather", {"city": "Rome"})
    assert final.content[2].input == {"city": "Oslo", "units": ["c", "f"]}
    assert final.stop_reason == "tool_use" and final.stop_sequence is None
    assert (final.usage.input_tokens, final.usage.output_tokens,
            final.usage.cache_read_input_tokens) == (56, 37, 64)
    assert "text" in seen_events and "input_json" in seen_events
    chat = runtime.seen[0]
    assert chat["stream"] is True and "stream_options" not in chat   # asked per backend
    assert [m["role"] for m in chat["messages"]] == [
        "system", "user", "assistant", "tool", "user"]
    assert chat["messages"][2]["tool_calls"][0]["id"] == "call_0"
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "call_0",
                                   "content": "18C and sunny"}
    assert chat["tool_choice"] == "auto" and "parallel_tool_calls" not in chat


async def test_sdk_streams_reasoning_with_a_signature(sdk):
    client, runtime = sdk
    runtime.answer = [chunk({"reasoning_content": "Short "}),
                      chunk({"reasoning_content": "question."}),
                      chunk({"content": "Hi"}), chunk({"content": "!"}),
                      chunk({}, "stop", stop_reason="</s>"), usage_chunk(5, 6)]
    async with client.messages.stream(model="m", max_tokens=50, stop_sequences=["</s>"],
                                      messages=[{"role": "user", "content": "hey"}]
                                      ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hi!"
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Short question."
    assert final.content[0].signature == SIGNATURE
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "</s>")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 6)
    assert runtime.seen[0]["stop"] == ["</s>"]


async def test_sdk_non_streamed_with_reasoning_and_tools(sdk):
    client, runtime = sdk
    runtime.answer = chat_answer(
        {"reasoning_content": "Use the tool.", "content": None,
         "tool_calls": [{"id": "call_9", "type": "function", "function": {
             "name": "get_weather", "arguments": '{"city": "Lima"}'}}]},
        "tool_calls", usage={"prompt_tokens": 40, "completion_tokens": 9})
    message = await client.messages.create(
        model="qwen-public", max_tokens=100, messages=TOOL_HISTORY, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"})
    assert isinstance(message, anthropic.types.Message)
    assert isinstance(message.content[0], anthropic.types.ThinkingBlock)
    assert isinstance(message.content[1], anthropic.types.ToolUseBlock)
    assert message.content[1].input == {"city": "Lima"}
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 9
    assert runtime.seen[0]["tool_choice"] == {"type": "function",
                                             "function": {"name": "get_weather"}}
    assert "stream" not in runtime.seen[0]
    # The answer goes back as history: thinking, tool_use and its result translate again.
    followup = TOOL_HISTORY + [
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9",
                                      "content": [{"type": "text", "text": "25C"}]}]}]
    runtime.answer = chat_answer({"content": "Lima: 25C."})
    done = await client.messages.create(model="qwen-public", max_tokens=100,
                                        messages=followup, tools=[WEATHER])
    assert done.content[0].text == "Lima: 25C." and done.stop_reason == "end_turn"
    back = runtime.seen[1]["messages"]
    assert back[-2]["reasoning_content"] == "Use the tool."
    assert back[-2]["tool_calls"][0]["id"] == "call_9"
    assert back[-1] == {"role": "tool", "tool_call_id": "call_9", "content": "25C"}


async def test_sdk_sees_a_stream_error_event(aiohttp_server):
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        translator = ChatStreamToMessages("m")
        await response.write(translator.feed(chunk({"content": "partial"})))
        await response.write(error_event("overloaded_error", "the backend went away"))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", broken)
    server = await aiohttp_server(app)
    async with anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="k",
                                        max_retries=0, timeout=10) as client:
        with pytest.raises(anthropic.APIStatusError) as err:
            async with client.messages.stream(model="m", max_tokens=5, messages=[
                    {"role": "user", "content": "x"}]) as stream:
                await stream.get_final_message()
    assert err.value.body["error"]["type"] == "overloaded_error"
    assert "the backend went away" in str(err.value)


async def test_sdk_gets_a_bad_request_naming_the_field(sdk):
    client, _ = sdk
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(model="m", max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "document", "source": {
                "type": "text", "media_type": "text/plain", "data": "x"}}]}])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert err.value.body["error"]["message"].startswith("messages.0.content.0.type: ")
