// Each Node client's main flow against the gateway, run by tests/test_real_clients.py from a
// folder whose node_modules are the ones .ci/install-clients.sh installed:
//
//     node node_clients.mjs FLOW BASE_URL MODEL
//
// Prints one JSON line {"flow": ..., "text": ..., ...}; any failure exits non-zero.
// Flows with `tools` run an agent loop with get_weather(city): the prompt names the tool, so
// the echo runtime calls it, and the tool's result ("sunny in <city>") must be the answer.
import OpenAI from "openai";
import { generateText, streamText, tool, stepCountIs, jsonSchema } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const [flow, base, model] = process.argv.slice(2);
const PROMPT = "use get_weather Paris";
const SCHEMA = { type: "object", properties: { city: { type: "string" } }, required: ["city"] };
const weather = (city) => `sunny in ${city}`;
const out = (fields) => console.log(JSON.stringify({ flow, ...fields }));

async function openaiChatTools() {
  const client = new OpenAI({ baseURL: base, apiKey: "unused", maxRetries: 0, timeout: 60000 });
  const tools = [{ type: "function", function: { name: "get_weather",
    description: "The weather in a city", parameters: SCHEMA } }];
  const messages = [{ role: "user", content: PROMPT }];
  const calls = [];
  for (let turn = 0; turn < 4; turn++) {
    // Streamed, with the SDK's chat stream helper (it assembles tool-call deltas).
    const stream = client.chat.completions.stream({ model, messages, tools });
    const completion = await stream.finalChatCompletion();
    const message = completion.choices[0].message;
    if (!message.tool_calls?.length) return out({ text: message.content, calls });
    messages.push(message);
    for (const call of message.tool_calls) {
      const args = JSON.parse(call.function.arguments);
      calls.push({ name: call.function.name, arguments: args });
      messages.push({ role: "tool", tool_call_id: call.id, content: weather(args.city) });
    }
  }
  throw new Error("no final answer after 4 turns");
}

async function openaiResponsesTools() {
  const client = new OpenAI({ baseURL: base, apiKey: "unused", maxRetries: 0, timeout: 60000 });
  const tools = [{ type: "function", name: "get_weather", description: "The weather in a city",
    parameters: SCHEMA, strict: false }];
  const input = [{ role: "user", content: PROMPT }];
  const calls = [];
  for (let turn = 0; turn < 4; turn++) {
    // The Responses stream helper: needs the full `response` objects in the stream's events.
    const stream = client.responses.stream({ model, input, tools });
    const response = await stream.finalResponse();
    const called = response.output.filter((o) => o.type === "function_call");
    if (!called.length) return out({ text: response.output_text, calls });
    for (const call of called) {
      const args = JSON.parse(call.arguments);
      calls.push({ name: call.name, arguments: args });
      input.push({ type: "function_call", call_id: call.call_id, name: call.name,
                   arguments: call.arguments });
      input.push({ type: "function_call_output", call_id: call.call_id,
                   output: weather(args.city) });
    }
  }
  throw new Error("no final answer after 4 turns");
}

async function openaiChat() {
  const client = new OpenAI({ baseURL: base, apiKey: "unused", maxRetries: 0, timeout: 120000 });
  const completion = await client.chat.completions.create({ model, max_tokens: 8,
    messages: [{ role: "user", content: "Say hello." }] });
  out({ text: completion.choices[0].message.content, finish: completion.choices[0].finish_reason });
}

async function openaiResponsesStream() {
  const client = new OpenAI({ baseURL: base, apiKey: "unused", maxRetries: 0, timeout: 120000 });
  const stream = client.responses.stream({ model, input: "Say hello.", max_output_tokens: 8 });
  const response = await stream.finalResponse();
  out({ text: response.output_text, status: response.status });
}

function aiProvider() {
  return createOpenAI({ baseURL: base, apiKey: "unused" });
}

function aiTools(calls) {
  return {
    get_weather: tool({
      description: "The weather in a city",
      inputSchema: jsonSchema(SCHEMA),
      execute: async ({ city }) => { calls.push({ name: "get_weather", arguments: { city } });
                                     return weather(city); },
    }),
  };
}

// The Vercel AI SDK's agent loop: `openai(model)` is the Responses API, `openai.chat(model)`
// chat completions; stopWhen lets it run the tool and ask again.
async function aiSdkTools(api) {
  const openai = aiProvider();
  const calls = [];
  const result = await generateText({
    model: api === "responses" ? openai(model) : openai.chat(model),
    tools: aiTools(calls), stopWhen: stepCountIs(4), prompt: PROMPT, maxRetries: 0,
  });
  out({ text: result.text, calls, steps: result.steps.length });
}

async function aiSdkStream(api) {
  const openai = aiProvider();
  const calls = [];
  const result = streamText({
    model: api === "responses" ? openai(model) : openai.chat(model),
    tools: aiTools(calls), stopWhen: stepCountIs(4), prompt: PROMPT, maxRetries: 0,
    onError: ({ error }) => { throw error; },
  });
  let text = "";
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") text += part.text;
    if (part.type === "error") throw part.error;
  }
  out({ text: (await result.text) || text, calls, steps: (await result.steps).length });
}

async function aiSdkText(api) {
  const openai = aiProvider();
  const result = streamText({
    model: api === "responses" ? openai(model) : openai.chat(model),
    prompt: "Say hello.", maxOutputTokens: 8, maxRetries: 0,
  });
  let text = "";
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") text += part.text;
    if (part.type === "error") throw part.error;
  }
  out({ text, finish: await result.finishReason });
}

const FLOWS = {
  "openai-chat-tools": openaiChatTools,
  "openai-responses-tools": openaiResponsesTools,
  "openai-chat": openaiChat,
  "openai-responses-stream": openaiResponsesStream,
  "ai-sdk-responses-tools": () => aiSdkTools("responses"),
  "ai-sdk-chat-tools": () => aiSdkTools("chat"),
  "ai-sdk-responses-stream-tools": () => aiSdkStream("responses"),
  "ai-sdk-chat-stream": () => aiSdkText("chat"),
  "ai-sdk-responses-stream": () => aiSdkText("responses"),
};

FLOWS[flow]().catch((error) => {
  console.error(error?.stack || String(error));
  if (error?.responseBody) console.error("response body:", error.responseBody);
  process.exit(1);
});
