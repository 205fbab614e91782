"""The clients people run, end to end through the gateway (issue 24): Claude Code, Codex CLI,
the OpenAI Agents SDK, LangChain, LiteLLM as a client, openai-python, anthropic-python,
openai-node and the Vercel AI SDK, each run as its own process, non-interactively.

Installed by .ci/install-clients.sh (npm and PyPI only, cached outside the clone). Without the
install the tests skip, unless GATEWAY_REQUIRE_CLIENTS=1 (CI), where they fail instead.

Every client runs with a home of its own, telemetry, error reports and update checks off, and
every proxy variable pointed at a loopback sink (tests/clients_support.ProxySink): a client
that tries to reach anything but the gateway fails the test, naming where it went.

Two tiers:
* `echo` with tools (the shipped runtime): each client's agent loop: the model (echo) calls a
  tool the prompt names, the client runs it, and the tool's result comes back as the answer.
* real llama-server (GATEWAY_REQUIRE_LLAMACPP, .ci/install-llama.sh): Claude Code on Messages
  native and translated and Codex on Responses, both on Qwen2.5-Coder 0.5B Instruct (from
  PyPI, with its own Jinja chat template, which takes tools: Codex always sends them); the
  SDKs on chat, Responses and Messages (a system message mid-conversation, native and
  translated) on Gemma 3 270M as the llamacpp tier runs it.

A real tool call runs through the Messages translation on llama-cpp-python's server with
the same Qwen model and its `chatml-function-calling` format, which forces a requested call
with a grammar. On llama-server the model's calls stay text: it writes the bare JSON call
without the <tool_call> tags its own template asks for, so llama-server's parser does not
see a call (also with tool_choice "required", which this llama.cpp does not enforce).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.procs import HOST, free_port
from tests import server_procs
from tests.clients_support import (
    SCRIPTS, ProxySink, installed, missing, node_dir, offline_env, run, codex_config,
)
from tests.conftest import unavailable
from tests.llama_support import (NO_REPACK_SERVER, LlamaServer, Runtime, find_install,
                                 find_llama_cpp_python)

pytestmark = pytest.mark.clients

REQUIRE = "GATEWAY_REQUIRE_CLIENTS"
ECHO_MODEL = "echo-1"
SECRET = "zebra-42-quartz"   # a file's content that only a tool run by the client can read
ECHO_YAML = f"""\
server: {{host: 127.0.0.1, drain_s: 1}}
backends:
  echo: {{kind: echo, models: [{ECHO_MODEL}]}}
"""


@pytest.fixture(scope="module")
def clients() -> dict[str, str]:
    return installed()


def need(clients: dict[str, str], *keys: str) -> None:
    why = missing(clients, *keys)
    if why:
        unavailable(why, REQUIRE)


@pytest.fixture(scope="module")
def proxy():
    sink = ProxySink()
    yield sink
    sink.close()


@pytest.fixture
def echo_gateway(tmp_path):
    served = server_procs.start(tmp_path, ECHO_YAML, name="gw")
    yield served
    served.stop()


@pytest.fixture
def node_where(clients, tmp_path) -> Path:
    """A folder with the Node scripts and the installed node_modules (a fixture: a missing
    install is an error or a skip, never taken for an expected failure)."""
    need(clients, "CLIENTS_NODE_MODULES")
    return node_dir(tmp_path, clients["CLIENTS_NODE_MODULES"])


def access_lines(served: server_procs.Served) -> list[dict]:
    """The gateway's JSON access-log lines (read after it stopped: the log is buffered)."""
    out = []
    for line in served.stderr().splitlines():
        if line.startswith("{") and '"endpoint"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def assert_loopback_only(result) -> None:
    assert not result.proxied, f"tried to reach past loopback: {result.proxied}\n" \
                               f"{result.describe()}"


def claude_env(home: Path, proxy: ProxySink, base: str, model: str) -> dict[str, str]:
    """Claude Code pointed at the gateway: every model it picks (main, small/fast, subagents)
    is the gateway's model."""
    return offline_env(home, proxy,
                       ANTHROPIC_BASE_URL=base, ANTHROPIC_API_KEY="unused",
                       ANTHROPIC_MODEL=model, ANTHROPIC_SMALL_FAST_MODEL=model,
                       ANTHROPIC_DEFAULT_HAIKU_MODEL=model, ANTHROPIC_DEFAULT_SONNET_MODEL=model,
                       ANTHROPIC_DEFAULT_OPUS_MODEL=model, CLAUDE_CODE_SUBAGENT_MODEL=model)


def claude_result(result) -> dict:
    """The JSON object `claude -p --output-format json` prints last."""
    objects = [o for o in result.json_lines() if o.get("type") == "result"]
    assert objects, result.describe()
    return objects[-1]


# ============================================================ echo with tools: agent loops

def test_claude_code_agent_loop_on_echo(clients, proxy, echo_gateway, tmp_path):
    """Claude Code's main flow (`claude -p`) on echo: the prompt names its Read tool, echo
    calls Read with the file's path, Claude Code reads the file and sends the result back
    (with its mid-conversation system messages), and echo answers with the file's text."""
    need(clients, "CLIENTS_CLAUDE")
    work = tmp_path / "work"
    work.mkdir()
    notes = work / "notes.txt"
    notes.write_text(SECRET + "\n")
    result = run([clients["CLIENTS_CLAUDE"], "-p", f"use Read {notes}", "--output-format", "json",
                  "--model", ECHO_MODEL, "--allowedTools", "Read", "--max-turns", "4"],
                 claude_env(tmp_path / "home", proxy, echo_gateway.base, ECHO_MODEL),
                 work, proxy)
    echo_gateway.stop()
    assert result.returncode == 0, result.describe()
    final = claude_result(result)
    assert final.get("is_error") is False, result.describe()
    assert final["num_turns"] >= 2, result.describe()
    messages = [e for e in access_lines(echo_gateway) if e["endpoint"] == "messages"]
    assert len(messages) >= 2 and all(e["status"] == 200 for e in messages), messages
    assert all(e["model"] == ECHO_MODEL for e in messages), messages
    assert_loopback_only(result)
    # Claude Code's mid-conversation system message (its environment, ~9k characters) is
    # folded into the user turn as a <system-reminder> block, which echo does not read as
    # the user's words: Read gets the path alone, and echo answers with the file's text.
    assert SECRET in final["result"], result.describe()


def test_codex_agent_loop_on_echo(clients, proxy, echo_gateway, tmp_path):
    """Codex's main flow (`codex exec`) on echo over Responses: the prompt names its
    exec_command tool, echo calls it with the words after the name as `cmd`, Codex runs the
    command and sends its output back, and echo answers with it."""
    need(clients, "CLIENTS_CODEX")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(SECRET + "\n")
    home = tmp_path / "home"
    codex_config(home / ".codex", echo_gateway.base + "/v1", ECHO_MODEL)
    last = tmp_path / "last.txt"
    result = run([clients["CLIENTS_CODEX"], "exec", "--skip-git-repo-check",
                  "--sandbox", "danger-full-access", "--output-last-message", str(last),
                  "use exec_command cat notes.txt"],
                 offline_env(home, proxy, CODEX_HOME=str(home / ".codex"),
                             GATEWAY_API_KEY="unused"),
                 work, proxy)
    echo_gateway.stop()
    assert result.returncode == 0, result.describe()
    assert last.is_file(), result.describe()
    assert SECRET in last.read_text(), result.describe()
    responses = [e for e in access_lines(echo_gateway) if e["endpoint"] == "responses"]
    assert len(responses) >= 2 and all(e["status"] == 200 for e in responses), responses
    assert all(e["stream"] for e in responses), responses
    assert_loopback_only(result)


PY_TOOL_FLOWS = ["openai-chat-tools", "openai-responses-tools", "anthropic-tools",
                 "agents-responses-tools", "agents-chat-tools", "langchain-tools",
                 "litellm-tools"]
NODE_TOOL_FLOWS = ["openai-chat-tools", "openai-responses-tools", "ai-sdk-responses-tools",
                   "ai-sdk-chat-tools", "ai-sdk-responses-stream-tools"]


def check_weather_loop(result, flow: str) -> None:
    assert result.returncode == 0, result.describe()
    [answer] = [o for o in result.json_lines() if o.get("flow") == flow] or [None]
    assert answer is not None, result.describe()
    assert "sunny in Paris" in (answer["text"] or ""), result.describe()
    calls = answer["calls"]
    assert calls and all(c in ("Paris", {"name": "get_weather", "arguments": {"city": "Paris"}})
                         for c in calls), result.describe()
    assert_loopback_only(result)


@pytest.mark.parametrize("flow", PY_TOOL_FLOWS)
def test_python_sdk_agent_loop_on_echo(clients, proxy, echo_gateway, tmp_path, flow):
    need(clients, "CLIENTS_PYTHON")
    result = run([clients["CLIENTS_PYTHON"], SCRIPTS / "py_clients.py", flow,
                  echo_gateway.base + "/v1", ECHO_MODEL],
                 offline_env(tmp_path / "home", proxy), tmp_path, proxy, timeout=120)
    check_weather_loop(result, flow)


@pytest.mark.parametrize("flow", NODE_TOOL_FLOWS)
def test_node_sdk_agent_loop_on_echo(node_where, proxy, echo_gateway, tmp_path, flow):
    where = node_where
    result = run(["node", where / "node_clients.mjs", flow, echo_gateway.base + "/v1",
                  ECHO_MODEL], offline_env(tmp_path / "home", proxy), where, proxy, timeout=120)
    check_weather_loop(result, flow)


# ============================================================ the real llama-server tier

GEMMA_NATIVE = "gemma-native"          # Messages passed to llama-server's own /v1/messages
GEMMA_TRANSLATED = "gemma-translated"  # Messages translated to chat by the gateway
QWEN = "qwen-tools"                    # Qwen2.5-Coder 0.5B, --jinja: tools; Messages translated
QWEN_NATIVE = "qwen-native"            # the same server, Messages passed to its /v1/messages


@pytest.fixture(scope="module")
def llama_servers(clients, tmp_path_factory):
    """Two llama-servers for the module: Gemma 3 270M as the llamacpp tier runs it (built-in
    gemma template, no Jinja, no tools), and Qwen2.5-Coder 0.5B Instruct with its own Jinja
    template (tools)."""
    binary, gemma_model, why = find_install()
    if binary is None:
        unavailable(f"llama.cpp not installed: {why}", "GATEWAY_REQUIRE_LLAMACPP")
    need(clients, "CLIENTS_TOOL_MODEL")
    tmp = tmp_path_factory.mktemp("llama-clients")
    gemma = LlamaServer("gemma", binary, gemma_model, tmp, ctx=4096, threads=2)
    qwen = QwenServer("qwen", binary, Path(clients["CLIENTS_TOOL_MODEL"]), tmp)
    try:
        gemma.start()
        qwen.start()
        gemma.wait_healthy(90)
        qwen.wait_healthy(90)
        yield {"gemma": gemma, "qwen": qwen}
    finally:
        gemma.stop()
        qwen.stop()


class QwenServer(Runtime):
    """llama-server with Qwen2.5-Coder 0.5B Instruct and the GGUF's own Jinja chat template,
    which takes `tools` (llama-server parses the model's <tool_call> blocks)."""

    def __init__(self, name: str, binary: Path, model: Path, log_dir: Path):
        self.port = free_port()
        argv = [str(binary), "-m", str(model), "--host", HOST, "--port", str(self.port),
                "--alias", "qwen", "--jinja", "-c", "16384", "-np", "1", "-t", "2", "-tb", "2",
                "--no-warmup", "--no-repack"]   # as LlamaServer: AMX kernels crash (llama_support)
        super().__init__(name, argv, log_dir / f"{name}.log")


def llama_yaml(servers) -> str:
    gemma, qwen = servers["gemma"].url, servers["qwen"].url
    # Codex's first request is ~4k tokens of tools and instructions: a minute or more of
    # prompt processing on 2 shared cores.
    timeouts = "{connect_s: 2, first_byte_s: 280, idle_s: 120}"
    return f"""\
server: {{host: 127.0.0.1, drain_s: 1}}
backends:
  native:
    kind: llamacpp
    url: {gemma}
    models: {{{GEMMA_NATIVE}: gemma-3-270m}}
    timeouts: {timeouts}
  translated:
    kind: llamacpp
    url: {gemma}
    models: {{{GEMMA_TRANSLATED}: gemma-3-270m}}
    capabilities: {{messages: false}}
    timeouts: {timeouts}
  qwen-native:
    kind: llamacpp
    url: {qwen}
    models: {{{QWEN_NATIVE}: qwen}}
    capabilities: {{tools: true}}
    timeouts: {timeouts}
  qwen:
    kind: llamacpp
    url: {qwen}
    models: {{{QWEN}: qwen}}
    capabilities: {{tools: true, messages: false}}
    timeouts: {timeouts}
routes:   # Claude Code asks for 32,000 tokens, Codex for none: the gateway caps them
  {GEMMA_NATIVE}: {{max_output_tokens: 48}}
  {GEMMA_TRANSLATED}: {{max_output_tokens: 48}}
  {QWEN_NATIVE}: {{max_output_tokens: 160}}
  {QWEN}: {{max_output_tokens: 160}}
health: {{interval_s: 5, timeout_s: 2}}
retries: {{attempts: 1, deadline_s: 290}}
"""


@pytest.fixture
def llama_gateway(llama_servers, tmp_path):
    served = server_procs.start(tmp_path, llama_yaml(llama_servers), name="gw")
    yield served
    served.stop()


@pytest.mark.llamacpp
@pytest.mark.parametrize("model,backend", [(QWEN_NATIVE, "qwen-native"), (QWEN, "qwen")])
def test_claude_code_on_llama_server(clients, proxy, llama_gateway, tmp_path, model, backend):
    """`claude -p` on a real llama-server (Qwen2.5-Coder 0.5B: an instruct model that ends its
    turn, which Claude Code needs: a max_tokens stop is an error to it), Messages native
    (llama-server's /v1/messages) and translated (to chat, through the model's template):
    Claude Code sends a system message after the first user turn; its answer must come back
    as Claude Code's result. Its own system prompt and tools are left out (--system-prompt,
    --tools ""): the full ones are ~20k tokens, minutes of prompt processing here."""
    need(clients, "CLIENTS_CLAUDE")
    work = tmp_path / "work"
    work.mkdir()
    result = run([clients["CLIENTS_CLAUDE"], "-p", "Reply with one word: hello.",
                  "--output-format", "json", "--model", model, "--system-prompt", "Be brief.",
                  "--tools", "", "--max-turns", "1"],
                 claude_env(tmp_path / "home", proxy, llama_gateway.base, model),
                 work, proxy, timeout=240)
    llama_gateway.stop()
    assert result.returncode == 0, result.describe()
    final = claude_result(result)
    assert final.get("is_error") is False, result.describe()
    assert final["result"].strip(), result.describe()
    messages = [e for e in access_lines(llama_gateway) if e["endpoint"] == "messages"]
    assert messages and all(e["status"] == 200 and e["backend"] == backend
                            for e in messages), messages
    assert_loopback_only(result)


@pytest.mark.llamacpp
def test_codex_on_llama_server(clients, proxy, llama_gateway, tmp_path):
    """`codex exec` on a real llama-server over Responses (streamed, with Codex's tools: the
    Qwen server, whose template takes them)."""
    need(clients, "CLIENTS_CODEX")
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "home"
    # Without the sub-agent and goal tools (~14 kB of the ~23 kB first request).
    codex_config(home / ".codex", llama_gateway.base + "/v1", QWEN,
                 features={"multi_agent": False, "goals": False})
    last = tmp_path / "last.txt"
    result = run([clients["CLIENTS_CODEX"], "exec", "--skip-git-repo-check",
                  "--sandbox", "read-only", "--output-last-message", str(last),
                  "Reply with one word: hello."],
                 offline_env(home, proxy, CODEX_HOME=str(home / ".codex"),
                             GATEWAY_API_KEY="unused"),
                 work, proxy, timeout=300)
    llama_gateway.stop()
    assert result.returncode == 0, result.describe()
    assert last.is_file() and last.read_text().strip(), result.describe()
    responses = [e for e in access_lines(llama_gateway) if e["endpoint"] == "responses"]
    assert responses and all(e["status"] == 200 and e["backend"] == "qwen"
                             for e in responses), responses
    assert_loopback_only(result)


PY_LLAMA_FLOWS = [("openai-chat", GEMMA_NATIVE), ("openai-responses", GEMMA_NATIVE),
                  ("openai-responses-followup", GEMMA_NATIVE),
                  ("agents-responses-followup", GEMMA_NATIVE),
                  ("langchain-chat", GEMMA_NATIVE), ("agents-chat", GEMMA_NATIVE),
                  ("anthropic-system-midway", GEMMA_NATIVE),
                  ("anthropic-system-midway", GEMMA_TRANSLATED)]
NODE_LLAMA_FLOWS = [("openai-chat", GEMMA_NATIVE), ("ai-sdk-chat-stream", GEMMA_NATIVE)]


def check_answered(result, flow: str) -> dict:
    assert result.returncode == 0, result.describe()
    answers = [o for o in result.json_lines() if o.get("flow") == flow]
    assert answers and (answers[-1]["text"] or "").strip(), result.describe()
    assert_loopback_only(result)
    return answers[-1]


@pytest.mark.llamacpp
@pytest.mark.parametrize("flow,model", PY_LLAMA_FLOWS)
def test_python_sdk_on_llama_server(clients, proxy, llama_gateway, tmp_path, flow, model):
    need(clients, "CLIENTS_PYTHON")
    result = run([clients["CLIENTS_PYTHON"], SCRIPTS / "py_clients.py", flow,
                  llama_gateway.base + "/v1", model],
                 offline_env(tmp_path / "home", proxy), tmp_path, proxy, timeout=180)
    answer = check_answered(result, flow)
    if flow == "openai-responses-followup":
        # The follow-up can be read back from the gateway, its input the whole conversation
        # (the first input and answer, then the new input).
        assert answer["retrieved"] and answer["input_items"] >= 3, result.describe()
    if flow == "agents-responses-followup":
        assert answer["first"] and answer["second"] and answer["first"] != answer["second"], \
            result.describe()


@pytest.mark.llamacpp
@pytest.mark.parametrize("flow,model", NODE_LLAMA_FLOWS)
def test_node_sdk_on_llama_server(node_where, proxy, llama_gateway, tmp_path, flow, model):
    where = node_where
    result = run(["node", where / "node_clients.mjs", flow, llama_gateway.base + "/v1", model],
                 offline_env(tmp_path / "home", proxy), where, proxy, timeout=180)
    check_answered(result, flow)


@pytest.mark.llamacpp
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="llama-server's streamed Responses events lack created_at, model "
                   "and output, which these clients require (README: Clients, Known runtime "
                   "limits); strict: a runtime that sends them passes")
@pytest.mark.parametrize("flow", ["openai-responses-stream", "ai-sdk-responses-stream"])
def test_node_responses_stream_on_llama_server(node_where, proxy, llama_gateway, tmp_path,
                                              flow):
    where = node_where
    result = run(["node", where / "node_clients.mjs", flow, llama_gateway.base + "/v1",
                  GEMMA_NATIVE], offline_env(tmp_path / "home", proxy), where, proxy,
                 timeout=180)
    check_answered(result, flow)


QWEN_FC = "qwen-function-calling"


class FunctionCallingServer(Runtime):
    """llama-cpp-python's server with Qwen2.5-Coder 0.5B in its `chatml-function-calling`
    format: a named tool_choice is generated under a grammar, so even a 0.5B model calls it."""
    health_path = "/v1/models"

    def __init__(self, python: Path, model: Path, log_dir: Path):
        self.port = free_port()
        argv = [str(python), "-c", NO_REPACK_SERVER, "--model", str(model),
                "--model_alias", "qwen", "--chat_format", "chatml-function-calling",
                "--host", HOST, "--port", str(self.port), "--n_ctx", "2048",
                "--n_threads", "2", "--n_threads_batch", "2",
                # Else any request during a stream (the gateway's health check included)
                # ends that stream early.
                "--interrupt_requests", "false", "--verbose", "false"]
        super().__init__("qwen-fc", argv, log_dir / "qwen-fc.log",
                         {**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.llamacpp
def test_tool_call_round_trip_through_messages_translation(clients, proxy, tmp_path):
    """The anthropic SDK against a backend without Messages (translated to chat): the real
    model's forced get_weather call comes back as a tool_use block with the city, and after
    the tool_result it answers in text from the result."""
    need(clients, "CLIENTS_PYTHON", "CLIENTS_TOOL_MODEL")
    python, why = find_llama_cpp_python()
    if python is None:
        unavailable(why, "GATEWAY_REQUIRE_LLAMACPP")
    with FunctionCallingServer(python, Path(clients["CLIENTS_TOOL_MODEL"]), tmp_path) as server:
        server.start()
        server.wait_healthy(90)
        served = server_procs.start(tmp_path, f"""\
server: {{host: 127.0.0.1, drain_s: 1}}
backends:
  qwen-fc:
    kind: openai                 # llama-cpp-python's server: chat, no /v1/messages
    url: {server.url}/v1
    models: {{{QWEN_FC}: qwen}}
    timeouts: {{connect_s: 2, first_byte_s: 120, idle_s: 60}}
""", name="gw")
        try:
            result = run([clients["CLIENTS_PYTHON"], SCRIPTS / "py_clients.py",
                          "anthropic-tool-round-trip", served.base + "/v1", QWEN_FC],
                         offline_env(tmp_path / "home", proxy), tmp_path, proxy, timeout=180)
        finally:
            served.stop()
    answer = check_answered(result, "anthropic-tool-round-trip")
    assert answer["first_stop"] == "tool_use", result.describe()
    assert answer["calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}], \
        result.describe()
    assert answer["stop"] == "end_turn", result.describe()
    assert "sunny" in answer["text"].lower(), result.describe()
    messages = [e for e in access_lines(served) if e["endpoint"] == "messages"]
    assert len(messages) == 2 and all(e["status"] == 200 and e["backend"] == "qwen-fc"
                                      for e in messages), messages
