"""Each Python client's main flow against the gateway, run by tests/test_real_clients.py with
the clients' own venv (.ci/install-clients.sh):

    python py_clients.py FLOW BASE_URL MODEL

BASE_URL is the gateway's /v1 URL. Prints one JSON line {"flow": ..., "text": ..., ...} with
what the flow got; any failure is an exception (non-zero exit, traceback on stderr).

Flows with `tools` run an agent loop with one tool, get_weather(city): the prompt names the
tool, so the echo runtime calls it; the tool's result ("sunny in <city>") must come back as
the final answer.
"""

from __future__ import annotations

import asyncio
import json
import sys

PROMPT = "use get_weather Paris"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
KEY = "unused"   # the test gateways have no keys


def weather(city: str) -> str:
    return f"sunny in {city}"


def out(flow: str, **fields) -> None:
    print(json.dumps({"flow": flow, **fields}), flush=True)


# ------------------------------------------------------------------ openai (Python SDK)
CHAT_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_SCHEMA}}]


def chat_tool_loop(flow: str, complete) -> None:
    """An agent loop on chat completions: `complete(messages)` answers (any client whose
    reply has OpenAI's shape); each tool call is run and its result sent back."""
    messages: list = [{"role": "user", "content": PROMPT}]
    calls = []
    for _ in range(4):
        message = complete(messages).choices[0].message
        if not message.tool_calls:
            return out(flow, text=message.content, calls=calls)
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            args = json.loads(call.function.arguments)
            calls.append({"name": call.function.name, "arguments": args})
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": weather(**args)})
    raise AssertionError("no final answer after 4 turns")


def openai_chat_tools(base: str, model: str) -> None:
    from openai import OpenAI
    client = OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
    chat_tool_loop("openai-chat-tools", lambda messages: client.chat.completions.create(
        model=model, messages=messages, tools=CHAT_TOOLS))


def openai_responses_tools(base: str, model: str) -> None:
    """Streamed, with the SDK's stream helper; the follow-up sends the whole input again."""
    from openai import OpenAI
    client = OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
    tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": WEATHER_SCHEMA}]
    items: list = [{"role": "user", "content": PROMPT}]
    calls = []
    for _ in range(4):
        with client.responses.stream(model=model, input=items, tools=tools) as stream:
            for _event in stream:
                pass
            final = stream.get_final_response()
        called = [o for o in final.output if o.type == "function_call"]
        if not called:
            return out("openai-responses-tools", text=final.output_text, calls=calls)
        for call in called:
            args = json.loads(call.arguments)
            calls.append({"name": call.name, "arguments": args})
            items.append({"type": "function_call", "call_id": call.call_id, "name": call.name,
                          "arguments": call.arguments})
            items.append({"type": "function_call_output", "call_id": call.call_id,
                          "output": weather(**args)})
    raise AssertionError("no final answer after 4 turns")


def openai_chat(base: str, model: str) -> None:
    from openai import OpenAI
    client = OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=model, max_tokens=8, messages=[{"role": "user", "content": "Say hello."}])
    out("openai-chat", text=reply.choices[0].message.content,
        finish=reply.choices[0].finish_reason, usage=reply.usage.model_dump())


def openai_responses(base: str, model: str) -> None:
    from openai import OpenAI
    client = OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    reply = client.responses.create(model=model, max_output_tokens=8, input="Say hello.")
    out("openai-responses", text=reply.output_text, status=reply.status,
        usage=reply.usage.model_dump() if reply.usage else None)


def openai_responses_followup(base: str, model: str) -> None:
    """A follow-up by previous_response_id, and the stored response read back: on a runtime
    whose Responses keep no state the gateway keeps the conversation."""
    from openai import OpenAI
    client = OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    first = client.responses.create(model=model, max_output_tokens=8, input="Say hello.")
    second = client.responses.create(model=model, max_output_tokens=8,
                                     previous_response_id=first.id, input="Again.")
    again = client.responses.retrieve(second.id)
    items = client.responses.input_items.list(second.id)
    out("openai-responses-followup", text=second.output_text, first=first.id,
        previous=second.previous_response_id, retrieved=again.id == second.id,
        input_items=len(items.data))


# ------------------------------------------------------------------ anthropic (Python SDK)
def anthropic_tools(base: str, model: str) -> None:
    """Streamed with the SDK's stream helper (Messages; on echo through the translation)."""
    import anthropic
    root = base.removesuffix("/v1")
    client = anthropic.Anthropic(base_url=root, api_key=KEY, max_retries=0, timeout=120)
    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": WEATHER_SCHEMA}]
    messages: list = [{"role": "user", "content": PROMPT}]
    calls = []
    for _ in range(4):
        with client.messages.stream(model=model, max_tokens=256, messages=messages,
                                    tools=tools) as stream:
            final = stream.get_final_message()
        used = [b for b in final.content if b.type == "tool_use"]
        if not used:
            return out("anthropic-tools", text="".join(b.text for b in final.content
                                                       if b.type == "text"),
                       calls=calls, stop=final.stop_reason)
        messages.append({"role": "assistant", "content": [b.model_dump() for b in final.content]})
        results = []
        for block in used:
            calls.append({"name": block.name, "arguments": block.input})
            results.append({"type": "tool_result", "tool_use_id": block.id,
                            "content": weather(**block.input)})
        messages.append({"role": "user", "content": results})
    raise AssertionError("no final answer after 4 turns")


def anthropic_tool_round_trip(base: str, model: str) -> None:
    """A real model's tool call through the Messages translation: get_weather is forced on
    the first turn (tool_choice `tool`), the result goes back with tool_choice `none`, and the
    model answers in text. Temperature 0 (in the body: this SDK has no such argument). The
    assistant turn sent back is its tool_use alone: llama-cpp-python's server refuses an
    assistant message whose content is null or missing, and the translation sends ""."""
    import anthropic
    client = anthropic.Anthropic(base_url=base.removesuffix("/v1"), api_key=KEY, max_retries=0,
                                 timeout=120)
    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": WEATHER_SCHEMA}]
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(model=model, max_tokens=64, messages=[question], tools=tools,
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   extra_body={"temperature": 0})
    used = [b for b in first.content if b.type == "tool_use"]
    assert used, first
    call = used[0]
    answer = [question,
              {"role": "assistant", "content": [call.model_dump()]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": weather(call.input.get("city", "?"))}]}]
    with client.messages.stream(model=model, max_tokens=64, messages=answer, tools=tools,
                                tool_choice={"type": "none"},
                                extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    out("anthropic-tool-round-trip",
        text="".join(b.text for b in final.content if b.type == "text"),
        calls=[{"name": b.name, "arguments": b.input} for b in used],
        first_stop=first.stop_reason, stop=final.stop_reason)


def anthropic_system_midway(base: str, model: str) -> None:
    """What Claude Code sends: a system message after the first user turn."""
    import anthropic
    client = anthropic.Anthropic(base_url=base.removesuffix("/v1"), api_key=KEY, max_retries=0,
                                 timeout=120)
    reply = client.messages.create(model=model, max_tokens=8, system="Be brief.", messages=[
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Say hello."}])
    out("anthropic-system-midway", text="".join(b.text for b in reply.content if b.type == "text"),
        stop=reply.stop_reason, usage=reply.usage.model_dump())


# ------------------------------------------------------------------ OpenAI Agents SDK
def agents_tools(base: str, model: str, api: str) -> None:
    from agents import (Agent, OpenAIChatCompletionsModel, OpenAIResponsesModel, Runner,
                        function_tool, set_tracing_disabled)
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    called = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return weather(city)

    client = AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
    llm = (OpenAIResponsesModel(model, client) if api == "responses"
           else OpenAIChatCompletionsModel(model, client))
    agent = Agent(name="weather", instructions="Answer with the tool's result.",
                  tools=[get_weather], model=llm)
    result = asyncio.run(Runner.run(agent, PROMPT, max_turns=4))
    out(f"agents-{api}-tools", text=str(result.final_output), calls=called)


def agents_chat(base: str, model: str) -> None:
    from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, Runner,
                        set_tracing_disabled)
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    agent = Agent(name="greeter", instructions="Be brief.",
                  model=OpenAIChatCompletionsModel(model, client),
                  model_settings=ModelSettings(max_tokens=8))
    result = asyncio.run(Runner.run(agent, "Say hello.", max_turns=1))
    out("agents-chat", text=str(result.final_output))


def agents_responses_followup(base: str, model: str) -> None:
    """Two runs of an agent on the Responses API, the second chained to the first by
    previous_response_id (the SDK then sends only the new input)."""
    from agents import (Agent, ModelSettings, OpenAIResponsesModel, Runner,
                        set_tracing_disabled)
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    agent = Agent(name="greeter", instructions="Be brief.",
                  model=OpenAIResponsesModel(model, client),
                  model_settings=ModelSettings(max_tokens=8, store=True))

    async def both():
        first = await Runner.run(agent, "Say hello.", max_turns=1)
        second = await Runner.run(agent, "Again.", max_turns=1,
                                  previous_response_id=first.last_response_id)
        return first, second
    first, second = asyncio.run(both())
    out("agents-responses-followup", text=str(second.final_output),
        first=first.last_response_id, second=second.last_response_id)


# ------------------------------------------------------------------ LangChain
def langchain_tools(base: str, model: str) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return weather(city)

    llm = ChatOpenAI(model=model, base_url=base, api_key=KEY, max_retries=0, timeout=60)
    bound = llm.bind_tools([get_weather])
    messages: list = [HumanMessage(PROMPT)]
    calls = []
    for _ in range(4):
        # Streamed: the chunks are summed into one message, tool-call chunks included.
        reply = None
        for chunk in bound.stream(messages):
            reply = chunk if reply is None else reply + chunk
        assert reply is not None
        if not reply.tool_calls:
            return out("langchain-tools", text=reply.content, calls=calls)
        messages.append(reply)
        for call in reply.tool_calls:
            calls.append({"name": call["name"], "arguments": call["args"]})
            messages.append(ToolMessage(get_weather.invoke(call["args"]),
                                        tool_call_id=call["id"]))
    raise AssertionError("no final answer after 4 turns")


def langchain_chat(base: str, model: str) -> None:
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(model=model, base_url=base, api_key=KEY, max_retries=0, timeout=120,
                     max_tokens=8)
    reply = llm.invoke("Say hello.")
    out("langchain-chat", text=reply.content, usage=reply.usage_metadata)


# ------------------------------------------------------------------ LiteLLM (as a client)
def litellm_tools(base: str, model: str) -> None:
    import litellm
    chat_tool_loop("litellm-tools", lambda messages: litellm.completion(
        model=f"openai/{model}", api_base=base, api_key=KEY, messages=messages,
        tools=CHAT_TOOLS, num_retries=0, timeout=60))


FLOWS = {
    "openai-chat-tools": openai_chat_tools,
    "openai-responses-tools": openai_responses_tools,
    "openai-chat": openai_chat,
    "openai-responses": openai_responses,
    "openai-responses-followup": openai_responses_followup,
    "anthropic-tools": anthropic_tools,
    "anthropic-tool-round-trip": anthropic_tool_round_trip,
    "anthropic-system-midway": anthropic_system_midway,
    "agents-responses-tools": lambda b, m: agents_tools(b, m, "responses"),
    "agents-chat-tools": lambda b, m: agents_tools(b, m, "chat"),
    "agents-chat": agents_chat,
    "agents-responses-followup": agents_responses_followup,
    "langchain-tools": langchain_tools,
    "langchain-chat": langchain_chat,
    "litellm-tools": litellm_tools,
}

if __name__ == "__main__":
    flow, base_url, model_name = sys.argv[1:4]
    FLOWS[flow](base_url, model_name)
