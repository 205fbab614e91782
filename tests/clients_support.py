"""Helpers for the real-clients tier (tests/test_real_clients.py): find the clients that
.ci/install-clients.sh installed, run them as subprocesses with nothing but loopback to talk
to, and watch for any traffic they try to send elsewhere.

The installs are listed in `${CLIENTS_CACHE:-~/.cache/gateway-clients}/env` (CLIENTS_CODEX,
CLIENTS_CLAUDE, CLIENTS_NODE_MODULES, CLIENTS_PYTHON, CLIENTS_TOOL_MODEL); the same variables
in the environment win.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import HOST
from tests.llama_support import env_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "clients"
CACHE = Path(os.environ.get("CLIENTS_CACHE") or Path.home() / ".cache" / "gateway-clients")
ENV_FILE = CACHE / "env"
KEYS = ("CLIENTS_CODEX", "CLIENTS_CLAUDE", "CLIENTS_NODE_MODULES", "CLIENTS_PYTHON",
        "CLIENTS_TOOL_MODEL")
RUN_TIMEOUT_S = 180


def installed() -> dict[str, str]:
    """What .ci/install-clients.sh wrote to its env file, overridden by the environment."""
    return env_file(ENV_FILE, KEYS)


def missing(found: dict[str, str], *keys: str) -> str:
    """Why these installs cannot be used ("" when they can)."""
    problems = [f"{key}={found.get(key)!r}" for key in keys
                if not found.get(key) or not os.path.exists(found[key])]
    if problems:
        return (f"clients not installed ({', '.join(problems)}) — run .ci/install-clients.sh "
                f"(reads {ENV_FILE})")
    return ""


class ProxySink:
    """A loopback 'proxy' that every client is pointed at (HTTP_PROXY, HTTPS_PROXY,
    ALL_PROXY): it answers nothing and records the first line each connection sends (e.g.
    `CONNECT statsig.anthropic.com:443`), so a test sees any traffic a client tries to send
    anywhere but the gateway (NO_PROXY keeps loopback direct)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    head = conn.recv(4096)
                except OSError:
                    head = b""
                line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
                self.seen.append(line or "(connected, sent nothing)")
                try:
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def offline_env(home: Path, proxy: ProxySink, **extra: str) -> dict[str, str]:
    """A client's environment: a home of its own, every proxy variable at the sink (loopback
    goes direct), no credentials or endpoints of the machine's, telemetry, error reports and
    update checks off."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "CLAUDE_", "CODEX_", "LITELLM_",
                                "AI_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    home.mkdir(parents=True, exist_ok=True)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = proxy.url
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(home),
        # Claude Code: https://docs.anthropic.com/en/docs/claude-code/settings (env vars)
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_BUG_COMMAND": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # LiteLLM fetches its model price map from the web at import unless told not to.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # The Agents SDK exports traces to OpenAI unless disabled.
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "NO_UPDATE_NOTIFIER": "1",
        "NODE_NO_WARNINGS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    proxied: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"$ {' '.join(self.argv)}\nexit {self.returncode}\n--- stdout\n"
                f"{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}\n"
                f"--- tried to reach past loopback: {self.proxied}")

    def json_lines(self) -> list[dict]:
        out = []
        for line in self.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


def run(argv: list[str], env: dict[str, str], cwd: Path, proxy: ProxySink,
        timeout: float = RUN_TIMEOUT_S) -> Run:
    """Run a client to completion (no stdin), bounded; the whole process group is killed on
    a timeout."""
    before = len(proxy.seen)
    proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        err += f"\n(killed after {timeout:g} s)"
    return Run([str(a) for a in argv], proc.returncode, out, err, proxy.seen[before:])


def node_dir(tmp: Path, node_modules: str) -> Path:
    """A folder where the Node scripts find the installed packages (ES modules resolve from
    the script's own folder up, not from NODE_PATH)."""
    where = tmp / "node"
    where.mkdir(parents=True, exist_ok=True)
    link = where / "node_modules"
    if not link.exists():
        link.symlink_to(node_modules, target_is_directory=True)
    for script in SCRIPTS.glob("*.mjs"):
        shutil.copy(script, where / script.name)
    return where


def codex_config(home: Path, base_url: str, model: str,
                 features: dict[str, bool] | None = None) -> None:
    """Codex's config for a custom provider at the gateway: Responses wire API, no update
    check, no analytics, no feedback upload, and no plugins (with them on, Codex syncs its
    curated plugin catalogue from github.com and chatgpt.com at start-up)."""
    home.mkdir(parents=True, exist_ok=True)
    more = "".join(f"{name} = {str(on).lower()}\n" for name, on in (features or {}).items())
    (home / "config.toml").write_text(f"""\
model = "{model}"
model_provider = "gateway"
check_for_update_on_startup = false

[features]
plugins = false
{more}
[analytics]
enabled = false

[feedback]
enabled = false

[model_providers.gateway]
name = "gateway"
base_url = "{base_url}"
env_key = "GATEWAY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
""")


