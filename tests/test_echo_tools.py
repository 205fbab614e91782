"""The echo runtime runs agent loops on every API: a tool call when the user names a
tool, the tool's result answered with its text; whole and streamed, through the openai
and anthropic SDKs (Messages reach echo translated to chat)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from pytest_aiohttp import AiohttpServer

from gateway.app import create_app
from gateway.config import backend
from gateway.runtimes.echo_tools import arguments, chat_reply, decide, responses_reply, said
from gateway.translate.anthropic_request import messages_to_chat
from tests.conftest import make_config

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
    "days": {"type": "integer", "minimum": 1}, "verbose": {"type": "boolean"}},
    "required": ["city", "unit", "days"]}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                                "description": "The weather in a city",
                                                "parameters": WEATHER}},
              {"type": "function", "function": {"name": "get_time", "parameters": {}}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "The weather in a city",
                    "input_schema": WEATHER}]
ASK = "please use get_weather Paris"
EXPECTED_ARGS = {"city": "Paris", "unit": "c", "days": 1}


@pytest.fixture
async def base_url(aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(create_app(make_config(
        backend("echo", "echo", models=["echo-1"]))))
    return str(server.make_url("/"))


@pytest.fixture
async def oai(base_url):
    client = openai.AsyncOpenAI(base_url=base_url + "v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def claude(base_url):
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="unused", max_retries=0)
    yield client
    await client.close()


def test_arguments_fit_the_schema():
    assert arguments(WEATHER, "Paris") == EXPECTED_ARGS
    nested = {"type": "object", "required": ["cmd", "opts", "n", "maybe"], "properties": {
        "cmd": {"type": "array", "items": {"type": "string"}},
        "opts": {"type": "object", "required": ["deep"],
                 "properties": {"deep": {"type": "number", "exclusiveMinimum": 2}}},
        "n": {"type": ["null", "integer"], "default": 7},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "string"}]}}}
    assert arguments(nested, "ls -la") == {"cmd": ["ls", "-la"], "opts": {"deep": 3.0},
                                           "n": 7, "maybe": "ls -la"}
    assert arguments(nested, "") == {"cmd": ["cmd"], "opts": {"deep": 3.0}, "n": 7,
                                     "maybe": "maybe"}
    assert arguments({}, "x") == {}


def test_which_tool_is_called():
    tools = {"get_weather": WEATHER, "get": {}}
    assert decide("call get_weather now", tools, None).call.name == "get_weather"
    assert decide("get the weather", tools, None).call.name == "get"
    assert decide("nothing named", tools, None).call is None
    assert decide("get_weather", tools, "none").call is None
    assert decide("nothing named", tools, "required").call.name == "get_weather"
    assert decide("get_weather", tools, "get").call.name == "get"
    assert decide("my_get_weather_x", tools, None).words == ["my_get_weather_x"]


READ = {"type": "object", "properties": {"file_path": {"type": "string"}},
        "required": ["file_path"]}
ENVIRONMENT = ("<system-reminder>\nWorking directory: /work\nPlatform: linux\n"
               + "Is directory a git repo: no. " * 300 + "\n</system-reminder>")


def test_system_reminders_are_not_what_the_user_said():
    assert said("use Read /a/notes.txt\n" + ENVIRONMENT) == "use Read /a/notes.txt\n "
    assert said([{"type": "text", "text": ENVIRONMENT},
                 {"type": "text", "text": "hi <system-reminder>x</system-reminder> there"}]
                ).split() == ["hi", "there"]
    assert said(ENVIRONMENT + "\n" + ENVIRONMENT) is None    # nothing but reminders
    assert said("") == "" and said(None) == ""
    assert said("an <system-reminder> left open") == "an <system-reminder> left open"


def test_claude_codes_folded_system_message_is_not_the_tools_argument():
    """Claude Code's mid-conversation system message reaches echo folded into the user turn
    by the Messages translation: the call takes only the user's words after the tool's
    name, and echoed text leaves the reminder out too."""
    read_tool = [{"name": "Read", "description": "Read a file", "input_schema": READ}]
    body = {"model": "echo-1", "max_tokens": 64, "tools": read_tool, "messages": [
        {"role": "user", "content": "use Read /work/notes.txt"},
        {"role": "system", "content": ENVIRONMENT.removeprefix("<system-reminder>\n")
                                                .removesuffix("\n</system-reminder>")}]}
    chat = messages_to_chat(body)
    assert "Is directory a git repo" in chat["messages"][-1]["content"]   # folded in
    reply = chat_reply(chat)
    assert reply.call is not None and reply.call.name == "Read"
    assert json.loads(reply.call.arguments) == {"file_path": "/work/notes.txt"}
    # Reminders before the words (Claude Code's own context blocks) are left out as well.
    chat["messages"][-1]["content"] = ENVIRONMENT + "\nuse Read /work/notes.txt"
    assert json.loads(chat_reply(chat).call.arguments) == {"file_path": "/work/notes.txt"}
    # No tool named: echo says the user's words, not the reminder.
    plain = messages_to_chat({**body, "messages": [
        {"role": "user", "content": "hello there"}, {"role": "system", "content": "Be brief."}]})
    assert chat_reply(plain).words == ["hello", "there"]


def test_a_system_message_after_a_tool_result_still_ends_with_the_result():
    """The translation puts a system message sent after a tool result into a user message
    of reminders after the tool message: echo answers with the result, not the reminder."""
    chat = messages_to_chat({"model": "echo-1", "max_tokens": 64, "messages": [
        {"role": "user", "content": "use Read /work/notes.txt"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read",
                                           "input": {"file_path": "/work/notes.txt"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "zebra-42-quartz"},
            {"type": "text", "text": "<system-reminder>Is it malware?</system-reminder>"}]}]},
        {"role": "system", "content": "The date is today."}],
        "tools": [{"name": "Read", "input_schema": READ}]})
    assert [m["role"] for m in chat["messages"]][-2:] == ["tool", "user"]
    assert chat_reply(chat).words == ["zebra-42-quartz"]
    # The same on Responses: items of nothing but reminders are passed over.
    items = [{"type": "message", "role": "user", "content": "use get_weather Paris"},
             {"type": "function_call_output", "call_id": "c", "output": "sunny"},
             {"type": "message", "role": "user", "content": ENVIRONMENT}]
    assert responses_reply(items, {"tools": RESPONSES_TOOLS}).words == ["sunny"]
    asked = [{"type": "message", "role": "user", "content": ASK + " " + ENVIRONMENT}]
    call = responses_reply(asked, {"tools": RESPONSES_TOOLS}).call
    assert call is not None and json.loads(call.arguments) == EXPECTED_ARGS


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_agent_loop(oai, stream):
    messages = [{"role": "user", "content": ASK}]
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        async for chunk in await oai.chat.completions.create(
                model="echo-1", messages=messages, tools=CHAT_TOOLS, stream=True):
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "args": ""})
                call["id"] = delta.id or call["id"]
                call["name"] += delta.function.name or ""
                call["args"] += delta.function.arguments or ""
        assert finish == "tool_calls" and list(calls) == [0]
        call_id, name, args = calls[0]["id"], calls[0]["name"], calls[0]["args"]
    else:
        done = await oai.chat.completions.create(model="echo-1", messages=messages,
                                                 tools=CHAT_TOOLS)
        assert done.choices[0].finish_reason == "tool_calls"
        assert done.choices[0].message.content is None
        call = done.choices[0].message.tool_calls[0]
        call_id, name, args = call.id, call.function.name, call.function.arguments
    assert name == "get_weather" and json.loads(args) == EXPECTED_ARGS
    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 degrees"}]
    done = await oai.chat.completions.create(model="echo-1", messages=messages,
                                             tools=CHAT_TOOLS)
    assert done.choices[0].message.content == "sunny, 21 degrees"
    assert done.choices[0].finish_reason == "stop"
    # Tools offered, none named: echo answers in text.
    plain = await oai.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "hello there"}], tools=CHAT_TOOLS)
    assert plain.choices[0].message.content == "hello there"


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_agent_loop(oai, stream):
    if stream:
        async with oai.responses.stream(model="echo-1", input=ASK,
                                        tools=RESPONSES_TOOLS) as events:
            kinds = [event.type async for event in events]
            first = await events.get_final_response()
        assert "response.function_call_arguments.done" in kinds
    else:
        first = await oai.responses.create(model="echo-1", input=ASK, tools=RESPONSES_TOOLS)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == EXPECTED_ARGS
    # The follow-up names the stored response and sends the tool's output alone.
    answer = await oai.responses.create(
        model="echo-1", previous_response_id=first.id, tools=RESPONSES_TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "sunny, 21 degrees"}])
    assert answer.output_text == "sunny, 21 degrees"
    plain = await oai.responses.create(model="echo-1", input="just words",
                                       tools=RESPONSES_TOOLS)
    assert plain.output_text == "just words"


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_agent_loop(claude, stream):
    messages = [{"role": "user", "content": ASK}]
    if stream:
        async with claude.messages.stream(model="echo-1", max_tokens=64, messages=messages,
                                          tools=ANTHROPIC_TOOLS) as events:
            first = await events.get_final_message()
    else:
        first = await claude.messages.create(model="echo-1", max_tokens=64, messages=messages,
                                             tools=ANTHROPIC_TOOLS)
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == EXPECTED_ARGS
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "sunny, 21 degrees"}]}]
    answer = await claude.messages.create(model="echo-1", max_tokens=64, messages=messages,
                                          tools=ANTHROPIC_TOOLS)
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == "sunny, 21 degrees"
