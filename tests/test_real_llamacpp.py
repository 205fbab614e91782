"""End to end against real llama.cpp servers (issue 8; the engine gauges: issue 15).

Two `llama-server` processes (Gemma 3 270M Q4_K_M, 1 thread, 1 slot, small context) behind one
public model with weights 3:1, the gateway started with `gateway serve` as a subprocess, and the
official `openai` SDK as the client (the `anthropic` SDK for /v1/messages). Install with `.ci/install-llama.sh`; without the install the
whole module is skipped, unless GATEWAY_REQUIRE_LLAMACPP is set (CI), where it fails instead.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import wait_until
from tests.conftest import unavailable
from tests.llama_support import (
    ADMIN_KEY, HOST, PUBLIC_MODEL, Gateway, LlamaServer, Stack, find_install,
    gateway_command, gateway_yaml, http_get, metric_sum, request_log,
)

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "llamacpp.yaml"
WEIGHTS = {"llama-a": 3, "llama-b": 1}
MESSAGES = [{"role": "user", "content": "Say hello."}]


class LlamaStack(Stack):
    def __init__(self, servers: dict[str, LlamaServer], gateway: Gateway, config: Path):
        self.servers = servers
        self.gateway = gateway
        self.config = config


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    binary, model, why = find_install()
    if binary is None:
        unavailable(f"llama.cpp not installed: {why}", "GATEWAY_REQUIRE_LLAMACPP")
    tmp = tmp_path_factory.mktemp("llamacpp")
    servers = {name: LlamaServer(name, binary, model, tmp) for name in WEIGHTS}
    gateway = None
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_healthy(90)
        config = tmp / "gateway.yaml"
        gateway = Gateway(config, tmp)
        config.write_text(gateway_yaml(gateway.port, list(servers.values()), list(WEIGHTS.values())))
        gateway.start()
        gateway.wait_ready(gateway.ready_url, 30)
        result = LlamaStack(servers, gateway, config)
        # llama-b's models are discovered by the health loop: wait until it serves the model.
        wait_until(lambda: gateway.admin_backends()["llama-b"]["models"] == [PUBLIC_MODEL], 20,
                   "llama-b's model discovered", gateway)
        yield result
    finally:
        if gateway is not None:
            gateway.stop()
        for server in servers.values():
            server.stop()


def chat(client: openai.OpenAI, max_tokens: int = 4, **kw):
    """One short chat; returns (backend that answered, parsed completion)."""
    raw = client.chat.completions.with_raw_response.create(
        model=PUBLIC_MODEL, messages=MESSAGES, max_tokens=max_tokens, temperature=0, **kw)
    return raw.headers.get("x-gateway-backend"), raw.parse()


# ---------------------------------------------------------------- config shape

def key_shape(node, path=""):
    """Every key path of a YAML document (backend names included, values left out)."""
    if isinstance(node, dict):
        out = set()
        for key, value in node.items():
            out.add(f"{path}/{key}")
            out |= key_shape(value, f"{path}/{key}")
        return out
    return set()


def test_example_config_is_valid_and_matches_the_tested_one(stack):
    check = subprocess.run(gateway_command() + ["check", "--config", str(EXAMPLE)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    example = yaml.safe_load(EXAMPLE.read_text())
    tested = yaml.safe_load(stack.config.read_text())
    assert key_shape(example) == key_shape(tested)
    for name, weight in WEIGHTS.items():
        assert example["backends"][name]["kind"] == "llamacpp"
        assert example["backends"][name]["weight"] == weight


# ---------------------------------------------------------------- the API through the gateway

def test_chat(stack):
    backend, completion = chat(stack.client(), max_tokens=8)
    assert backend in WEIGHTS
    assert completion.object == "chat.completion"
    assert completion.model == PUBLIC_MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 8


def test_chat_stream_is_incremental_with_usage(stack):
    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(
        model=PUBLIC_MODEL, messages=[{"role": "user", "content": "Count from one to twenty."}],
        max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    assert raw.headers.get("x-gateway-backend") in WEIGHTS
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    arrivals, pieces, usage = [], [], None
    with raw.parse() as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert len(pieces) >= 4, pieces          # token by token, not one blob
    assert "".join(pieces).strip()
    # Chunks arrive as they are generated (~tens of ms a token on one thread), not all at once
    # at the end: a buffering proxy would deliver them within a millisecond of each other.
    assert arrivals[-1] - arrivals[0] > 0.05, arrivals
    assert usage is not None, "no usage chunk although include_usage was asked"
    assert usage.completion_tokens == 16
    assert usage.prompt_tokens > 0


def test_completions(stack):
    raw = stack.client().completions.with_raw_response.create(
        model=PUBLIC_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert raw.headers.get("x-gateway-backend") in WEIGHTS
    completion = raw.parse()
    assert completion.choices[0].text.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 8


def test_completions_stream(stack):
    stream = stack.client().completions.create(
        model=PUBLIC_MODEL, prompt="One, two, three,", max_tokens=8, temperature=0, stream=True)
    with stream:
        texts = [c.choices[0].text for c in stream if c.choices and c.choices[0].text]
    assert len(texts) >= 2 and "".join(texts).strip()


def test_model_listing(stack):
    ids = [m.id for m in stack.client().models.list()]
    assert ids == [PUBLIC_MODEL]
    rows = stack.gateway.admin_backends()
    assert rows["llama-a"]["models"] == [PUBLIC_MODEL]     # listed in the config
    assert rows["llama-b"]["models"] == [PUBLIC_MODEL]     # discovered from its /v1/models
    status, body = http_get(stack.servers["llama-b"].port, "/v1/models")
    assert status == 200 and PUBLIC_MODEL in [m["id"] for m in json.loads(body)["data"]]


def test_health_path_and_backend_up(stack):
    for server in stack.servers.values():
        status, body = http_get(server.port, "/health")     # the llamacpp kind's health path
        assert status == 200, body
    assert http_get(stack.gateway.port, "/ready")[0] == 200
    rows = stack.gateway.admin_backends()
    assert all(rows[name]["healthy"] for name in WEIGHTS), rows
    status, body = http_get(stack.gateway.port, "/metrics")
    text = body.decode()
    for name in WEIGHTS:
        assert f'gateway_backend_up{{backend="{name}"}} 1.0' in text


def test_tools_are_refused_for_llamacpp(stack):
    """The llamacpp kind has no tool calls by default (llama-server needs --jinja): 501."""
    with pytest.raises(openai.APIStatusError) as err:
        stack.client().chat.completions.create(
            model=PUBLIC_MODEL, messages=MESSAGES, max_tokens=4,
            tools=[{"type": "function", "function": {
                "name": "now", "parameters": {"type": "object", "properties": {}}}}])
    assert err.value.status_code == 501
    assert "error" in err.value.response.json()


def test_weights_are_honoured(stack):
    stack.wait_backends({"llama-a": True, "llama-b": True})
    client = stack.client()
    counts = collections.Counter(chat(client, max_tokens=2)[0] for _ in range(24))
    print("X-Gateway-Backend over 24 requests:", dict(counts))
    assert set(counts) <= set(WEIGHTS)
    # 3:1 means 18:6 on average; a weighted random pick stays within these bounds >99.7% of runs.
    assert counts["llama-b"] >= 1
    assert 12 <= counts["llama-a"] <= 23, counts


def test_anthropic_sdk_reaches_both_servers_natively(stack, request):
    """llama-server serves /v1/messages itself: the anthropic SDK's requests reach both
    servers as they are (streamed and not), and count_tokens is llama-server's own."""
    stack.wait_backends({"llama-a": True, "llama-b": True})
    client = anthropic.Anthropic(base_url=stack.gateway.base_url[:-3], api_key="unused",
                                 timeout=60, max_retries=0)
    request.addfinalizer(client.close)      # its socket, else a ResourceWarning at exit
    seen: collections.Counter = collections.Counter()
    before = metric_sum(stack.gateway.port, "gateway_requests_total", endpoint="messages")
    for i in range(16):                       # bounded: 3:1 weights reach llama-b early
        if i % 2:
            with client.messages.stream(model=PUBLIC_MODEL, max_tokens=4,
                                        messages=MESSAGES) as stream:
                pieces = list(stream.text_stream)
                done = stream.get_final_message()
            backend = stream.response.headers.get("x-gateway-backend")
            assert "".join(pieces) == done.content[0].text
        else:
            raw = client.messages.with_raw_response.create(model=PUBLIC_MODEL, max_tokens=4,
                                                           messages=MESSAGES)
            backend, done = raw.headers.get("x-gateway-backend"), raw.parse()
        seen[backend] += 1
        assert done.model == PUBLIC_MODEL and done.stop_reason in ("end_turn", "max_tokens")
        assert done.usage.input_tokens > 0 and 0 < done.usage.output_tokens <= 4
        if i >= 3 and len(seen) == 2:
            break
    assert set(seen) == set(WEIGHTS), seen
    assert client.messages.count_tokens(model=PUBLIC_MODEL, messages=MESSAGES).input_tokens > 0
    after = metric_sum(stack.gateway.port, "gateway_requests_total", endpoint="messages")
    assert after - before == sum(seen.values()) + 1


# ---------------------------------------------------------------- the servers' own load

ENGINE_GAUGES = {"running": "gateway_backend_running_requests",
                 "waiting": "gateway_backend_queue_depth"}
LOAD_STREAMS = 5           # one slot per server: the rest wait in llama-server's queue;
# each stream lasts longer (800 tokens at tens per second) than the test looks at them


async def _get(session: aiohttp.ClientSession, url: str, **kw) -> str:
    async with session.get(url, **kw) as resp:
        assert resp.status == 200, (url, resp.status)
        return await resp.text()


async def server_load(session: aiohttp.ClientSession, server: LlamaServer) -> dict:
    """What llama-server's own /metrics says now: busy slots and deferred requests."""
    text = await _get(session, server.url + "/metrics")
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return {"running": values["llamacpp:requests_processing"],
            "waiting": values["llamacpp:requests_deferred"]}


async def gateway_load(session: aiohttp.ClientSession, stack) -> tuple[dict, dict, set]:
    """The gateway's engine gauges and /admin/backends' engine rows, per backend; and the
    backends that have a KV-cache series (none should: llama.cpp exposes no KV gauge)."""
    base = f"http://{HOST}:{stack.gateway.port}"
    text = await _get(session, base + "/metrics")
    gauges: dict = {name: {} for name in WEIGHTS}
    kv = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            backend = sample.labels.get("backend")
            for key, name in ENGINE_GAUGES.items():
                if sample.name == name and backend in gauges:
                    gauges[backend][key] = sample.value
            if sample.name == "gateway_backend_kv_cache_usage":
                kv.add(backend)
    rows = json.loads(await _get(session, base + "/admin/backends",
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"}))["backends"]
    admin = {r["name"]: {"running": r["engine"]["running_requests"],
                         "waiting": r["engine"]["queue_depth"],
                         "fresh": r["engine"]["fresh"], "kv": r["engine"]["kv_cache_usage"]}
             for r in rows if r["name"] in WEIGHTS}
    return gauges, admin, kv


def test_responses_api_reaches_both_servers(stack, request):
    """The built llama-server serves the (stateless) Responses API itself: the openai SDK's
    `responses.create`, streamed and not, reaches both servers with the public model name."""
    stack.wait_backends({"llama-a": True, "llama-b": True})
    client = stack.client()
    request.addfinalizer(client.close)
    seen: collections.Counter = collections.Counter()
    for i in range(16):                       # bounded: 3:1 weights reach llama-b early
        if i % 2:
            with client.responses.with_streaming_response.create(
                    model=PUBLIC_MODEL, input="Say hello.", max_output_tokens=8,
                    stream=True) as raw:
                backend = raw.headers.get("x-gateway-backend")
                events = list(raw.parse())
            done = events[-1]
            assert done.type == "response.completed", [e.type for e in events]
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            answer = done.response
            assert deltas == answer.output_text
        else:
            raw = client.responses.with_raw_response.create(
                model=PUBLIC_MODEL, input="Say hello.", max_output_tokens=8)
            backend, answer = raw.headers.get("x-gateway-backend"), raw.parse()
        seen[backend] += 1
        assert answer.model == PUBLIC_MODEL and answer.output_text
        assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
        assert answer.id.startswith("resp_")
        if i >= 3 and len(seen) == 2:
            break
    assert set(seen) == set(WEIGHTS), seen


async def _hold_stream(session: aiohttp.ClientSession, stack, started: list) -> None:
    """A long stream through the gateway, read until cancelled (the client then leaves)."""
    body = {"model": PUBLIC_MODEL, "stream": True, "max_tokens": 2000, "ignore_eos": True,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell a long story about a river."}]}
    async with session.post(stack.gateway.base_url + "/chat/completions", json=body) as resp:
        started.append(resp.headers.get("X-Gateway-Backend"))
        async for _ in resp.content.iter_any():
            pass


async def test_engine_gauges_show_the_servers_own_load(stack):
    """Under concurrent streams, the gateway's running and queue gauges and /admin/backends
    show what each llama-server's /metrics says: read between two identical readings of the
    servers, so all three describe the same moment."""
    stack.wait_backends({"llama-a": True, "llama-b": True})
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started: list = []
        streams = [asyncio.create_task(_hold_stream(session, stack, started))
                   for _ in range(LOAD_STREAMS)]
        seen = None
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and seen is None:
                await asyncio.sleep(0.25)
                before = {n: await server_load(session, s) for n, s in stack.servers.items()}
                gauges, admin, kv = await gateway_load(session, stack)
                after = {n: await server_load(session, s) for n, s in stack.servers.items()}
                total = sum(v["running"] + v["waiting"] for v in before.values())
                wanted = {n: {k: before[n][k] for k in ENGINE_GAUGES} for n in WEIGHTS}
                # At least 3 of the streams at the servers: both slots busy and one queued
                # (on a busy machine the first may end before the gateway's scrape shows all 5).
                if (before == after and total >= 3 and gauges == wanted
                        and all(admin[n] == {**wanted[n], "fresh": True, "kv": None}
                                for n in WEIGHTS)):
                    seen = (before, gauges, admin, kv)
            assert seen is not None, (
                f"gauges never matched the servers: servers {before} / {after}, "
                f"gateway {gauges}, admin {admin}")
            servers, gauges, admin, kv = seen
            print("servers' own /metrics:", servers, "gateway gauges:", gauges)
            # Real load, not zeros: every slot busy, and requests waiting in a queue.
            assert all(v["running"] == 1 for v in servers.values()), servers
            assert sum(v["waiting"] for v in servers.values()) >= 1, servers
            assert kv == set(), "llama.cpp exposes no KV-cache gauge: no series expected"
        finally:
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)

    def idle() -> bool:
        return all(not s.busy() and s.metrics()["llamacpp:requests_deferred"] == 0
                   for s in stack.servers.values())
    wait_until(idle, 30, "both servers idle after the streams were closed")


# ---------------------------------------------------------------- failures

def test_client_disconnect_stops_generation(stack):
    """Close the client mid-stream: the runtime's slot goes idle and decoding stops."""
    stack.wait_backends({"llama-a": True, "llama-b": True})
    request_id = f"llamacpp-disconnect-{uuid.uuid4().hex[:8]}"
    body = json.dumps({
        "model": PUBLIC_MODEL, "stream": True, "max_tokens": 400, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
    })
    conn = http.client.HTTPConnection(HOST, stack.gateway.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "X-Request-ID": request_id})
    resp = conn.getresponse()
    assert resp.status == 200
    server = stack.servers[resp.getheader("X-Gateway-Backend")]
    aborts_before = metric_sum(stack.gateway.port, "gateway_stream_aborts_total",
                               backend=server.name, reason="client_left")
    before = server.metrics()
    chunks = 0
    while chunks < 3:
        line = resp.fp.readline()
        assert line, "stream ended early"
        if line.startswith(b"data: {") and b'"content"' in line:
            chunks += 1
    assert server.busy(), "the runtime should be generating"
    t_close = time.monotonic()
    conn.sock.close()        # the client goes away mid-stream
    conn.close()

    wait_until(lambda: not server.busy(), 10, f"{server.name}'s slot idle after the disconnect")
    idle_after = time.monotonic() - t_close
    settled = server.metrics()
    time.sleep(2)
    later = server.metrics()
    decoded = settled["llamacpp:n_decode_total"] - before["llamacpp:n_decode_total"]
    print(f"{server.name}: slot idle {idle_after:.2f}s after the client left; "
          f"{decoded:.0f} decode steps since the 1st chunk (max_tokens was 400)")
    assert later["llamacpp:n_decode_total"] == settled["llamacpp:n_decode_total"]
    assert decoded < 100, "the runtime kept generating for the departed client"
    assert not server.busy()
    assert "cancel task" in server.log_path.read_text(errors="replace")

    # The gateway logged and counted it as the client leaving.
    wait_until(lambda: request_log(stack.gateway, request_id) is not None, 5,
               "the request's log line")
    assert request_log(stack.gateway, request_id)["aborted"] == "client_left"
    assert metric_sum(stack.gateway.port, "gateway_stream_aborts_total",
                      backend=server.name, reason="client_left") == aborts_before + 1


def test_completed_streams_are_not_counted_as_aborted(stack):
    """The SDK closes its connection as soon as it reads [DONE]: that is a finished stream."""
    client = stack.client()
    ids = []
    for _ in range(6):
        request_id = f"llamacpp-done-{uuid.uuid4().hex[:8]}"
        ids.append(request_id)
        with client.chat.completions.create(
                model=PUBLIC_MODEL, messages=MESSAGES, max_tokens=4, stream=True,
                extra_headers={"X-Request-ID": request_id}) as stream:
            assert sum(1 for _ in stream) > 0
    wait_until(lambda: all(request_log(stack.gateway, i) for i in ids), 5, "the log lines")
    entries = [request_log(stack.gateway, i) for i in ids]
    assert [(e["status"], e["aborted"]) for e in entries] == [(200, None)] * len(ids)


def test_killed_server_is_replaced_without_client_errors(stack):
    """SIGKILL the weight-3 server mid-run: the next requests are all served by the other."""
    stack.wait_backends({"llama-a": True, "llama-b": True})
    client = stack.client()
    first = [chat(client)[0] for _ in range(4)]
    victim = stack.servers["llama-a"]
    retries_before = metric_sum(stack.gateway.port, "gateway_retries_total", backend="llama-a")
    victim.kill()
    try:
        served, errors = [], []
        for i in range(12):
            try:
                if i % 3 == 2:   # streams too: the retry must happen before the first byte
                    raw = client.chat.completions.with_raw_response.create(
                        model=PUBLIC_MODEL, messages=MESSAGES, max_tokens=4, stream=True)
                    with raw.parse() as stream:
                        assert "".join(c.choices[0].delta.content or "" for c in stream
                                       if c.choices).strip()
                    served.append(raw.headers.get("x-gateway-backend"))
                else:
                    served.append(chat(client)[0])
            except openai.OpenAIError as exc:   # pragma: no cover - reported below
                errors.append(repr(exc))
        retried = metric_sum(stack.gateway.port, "gateway_retries_total",
                             backend="llama-a") - retries_before
        print("before the kill:", first, "after:", served,
              f"(gateway retries away from llama-a: {retried:.0f})")
        assert errors == []
        assert served == ["llama-b"] * len(served)
        stack.wait_backends({"llama-a": False})
    finally:
        victim.restart(60)
    # Back: the health loop re-admits it and it takes traffic again.
    stack.wait_backends({"llama-a": True}, 20)
    assert "llama-a" in {chat(client)[0] for _ in range(12)}


# ---------------------------------------------------------------- the clients people run

TEMPLATE = Path(__file__).resolve().parent / "templates" / "gemma3.jinja"
# Claude Code's mid-conversation-system beta: a system message after the first turns.
MID_SYSTEM = [{"role": "user", "content": "Say hello."},
              {"role": "assistant", "content": "Hello."},
              {"role": "system", "content": "Answer in one word."},
              {"role": "user", "content": "Say goodbye."}]


@pytest.fixture(scope="module")
def strict_template(tmp_path_factory):
    """A llama-server rendering Gemma 3's own Jinja chat template (system message only
    first, user and assistant alternating), and a gateway that translates Messages for it
    (the `messages` capability off) and counts tokens with its tokenizer."""
    binary, model, why = find_install()
    if binary is None:
        unavailable(f"llama.cpp not installed: {why}", "GATEWAY_REQUIRE_LLAMACPP")
    tmp = tmp_path_factory.mktemp("strict")
    server = LlamaServer("llama-jinja", binary, model, tmp,
                         extra=("--jinja", "--chat-template-file", str(TEMPLATE)))
    gateway = None
    try:
        server.start()
        server.wait_healthy(90)
        config = tmp / "gateway.yaml"
        gateway = Gateway(config, tmp)
        config.write_text(f"""\
server: {{host: {HOST}, port: {gateway.port}}}
backends:
  jinja:
    kind: llamacpp
    url: {server.url}
    models: [{PUBLIC_MODEL}]
    capabilities: {{messages: false}}
""")
        gateway.start()
        gateway.wait_ready(gateway.ready_url, 30)
        yield server, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()


def test_mid_conversation_system_messages_fit_a_strict_chat_template(strict_template, request):
    server, gateway = strict_template
    # The template itself refuses the conversation as Claude Code sends it...
    conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({
        "model": PUBLIC_MODEL, "max_tokens": 4, "messages": MID_SYSTEM}),
        headers={"Content-Type": "application/json"})
    refused = conn.getresponse()
    text = refused.read().decode()
    conn.close()
    assert refused.status >= 400 and "alternate" in text, (refused.status, text)
    # ...and takes the gateway's translation of it, whole and streamed.
    client = anthropic.Anthropic(base_url=f"http://{HOST}:{gateway.port}", api_key="unused",
                                 timeout=60, max_retries=0)
    request.addfinalizer(client.close)
    done = client.messages.create(model=PUBLIC_MODEL, max_tokens=4, system="Be brief.",
                                  messages=MID_SYSTEM)
    assert done.content and done.content[0].text and done.usage.input_tokens > 0
    with client.messages.stream(model=PUBLIC_MODEL, max_tokens=4, messages=MID_SYSTEM) as stream:
        assert "".join(stream.text_stream) == stream.get_final_message().content[0].text
    plain = [m for m in MID_SYSTEM if m["role"] != "system"]
    counted = client.messages.count_tokens(model=PUBLIC_MODEL, messages=MID_SYSTEM)
    assert counted.input_tokens > client.messages.count_tokens(
        model=PUBLIC_MODEL, messages=plain).input_tokens


def test_mid_conversation_system_messages_reach_llama_server_natively(stack, request):
    """llama-server serves /v1/messages itself: the body goes as it is, its template judges."""
    client = anthropic.Anthropic(base_url=stack.gateway.base_url[:-3], api_key="unused",
                                 timeout=60, max_retries=0)
    request.addfinalizer(client.close)
    done = client.messages.create(
        model=PUBLIC_MODEL, max_tokens=4, messages=MID_SYSTEM,
        extra_headers={"anthropic-beta": "mid-conversation-system-2026-04-07"})
    assert done.content[0].text and done.model == PUBLIC_MODEL


def test_follow_ups_on_llama_servers_stateless_responses(stack, request):
    """llama-server keeps no Responses: the gateway keeps them, expands a follow-up and
    answers retrieve and delete (streamed and not)."""
    stack.wait_backends({"llama-a": True, "llama-b": True})
    client = stack.client()
    request.addfinalizer(client.close)
    first = client.responses.create(model=PUBLIC_MODEL, input="My name is Ada. Say hi.",
                                    max_output_tokens=8)
    # Streamed as raw events: the SDK's stream helper trips on llama-server's thin events.
    events = list(client.responses.create(model=PUBLIC_MODEL, input="What is my name?",
                                          previous_response_id=first.id, max_output_tokens=8,
                                          stream=True))
    assert events[-1].type == "response.completed", [e.type for e in events]
    second = events[-1].response
    said = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert said and second.id != first.id
    third = client.responses.create(model=PUBLIC_MODEL, input="Thanks.", max_output_tokens=4,
                                    previous_response_id=second.id)
    assert third.output_text
    kept = client.responses.retrieve(second.id)
    assert kept.id == second.id and kept.output_text == said
    assert kept.previous_response_id == first.id
    items = client.responses.input_items.list(third.id, order="asc")
    assert [getattr(i, "role", None) for i in items.data][:3] == ["user", "assistant", "user"]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
