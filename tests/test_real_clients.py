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
  native and translated, Codex on Responses, the SDKs on chat and Responses; and a real tool
  call through the Messages translation on a small tool-capable model (Qwen2.5-Coder 0.5B
  Instruct, with its own Jinja chat template).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests import server_procs
from tests.clients_support import (
    SCRIPTS, ProxySink, installed, missing, node_dir, offline_env, run, codex_config,
)
from tests.conftest import unavailable

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
    assert SECRET in final["result"], result.describe()
    assert final["num_turns"] >= 2, result.describe()
    messages = [e for e in access_lines(echo_gateway) if e["endpoint"] == "messages"]
    assert len(messages) >= 2 and all(e["status"] == 200 for e in messages), messages
    assert all(e["model"] == ECHO_MODEL for e in messages), messages
    assert_loopback_only(result)


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
def test_node_sdk_agent_loop_on_echo(clients, proxy, echo_gateway, tmp_path, flow):
    need(clients, "CLIENTS_NODE_MODULES")
    where = node_dir(tmp_path, clients["CLIENTS_NODE_MODULES"])
    result = run(["node", where / "node_clients.mjs", flow, echo_gateway.base + "/v1",
                  ECHO_MODEL], offline_env(tmp_path / "home", proxy), where, proxy, timeout=120)
    check_weather_loop(result, flow)
