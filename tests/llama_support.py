"""Helpers for the real-runtime tier (tests/test_real_llamacpp.py, tests/test_real_mixed.py):
find the installs, run llama-server, llama-cpp-python's server and the gateway as subprocesses
on 127.0.0.1 (bench.procs.Proc), write their config.

The installs are made by .ci/install-llama.sh, which writes `LLAMA_SERVER_BIN=` and
`LLAMA_MODEL=` to `${LLAMA_CACHE:-~/.cache/gateway-llama}/env`, and
.ci/install-llama-cpp-python.sh, which adds `LLAMA_CPP_PYTHON=` (its venv's python) there; the
same variables in the environment win.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
from pathlib import Path

import openai
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import HOST, Proc, free_port, wait_until

PUBLIC_MODEL = "gemma-3-270m"   # also the --alias the servers report in their /v1/models
ADMIN_KEY = "llamacpp-test-admin"
ENV_FILE = Path(os.environ.get("LLAMA_CACHE") or Path.home() / ".cache" / "gateway-llama") / "env"


def env_file(path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """What an install script wrote to its env file (KEY=VALUE lines), each of `keys`
    overridden by the environment."""
    found: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                found[key.strip()] = value.strip()
    for key in keys:
        if os.environ.get(key):
            found[key] = os.environ[key]
    return found


def installed() -> dict[str, str]:
    """What the llama install scripts wrote to their env file, overridden by the environment."""
    return env_file(ENV_FILE, ("LLAMA_SERVER_BIN", "LLAMA_MODEL", "LLAMA_CPP_PYTHON"))


def find_install() -> tuple[Path | None, Path | None, str]:
    """(llama-server binary, GGUF model, why not) from the environment, the env file, or PATH."""
    found = installed()
    binary = found.get("LLAMA_SERVER_BIN") or shutil.which("llama-server")
    model = found.get("LLAMA_MODEL")
    problems = []
    if not binary or not os.access(binary, os.X_OK):
        problems.append(f"no llama-server (LLAMA_SERVER_BIN={binary!r})")
    if not model or not Path(model).is_file():
        problems.append(f"no GGUF model (LLAMA_MODEL={model!r})")
    if problems:
        return None, None, "; ".join(problems) + f" — run .ci/install-llama.sh (reads {ENV_FILE})"
    return Path(binary), Path(model), ""


def find_llama_cpp_python() -> tuple[Path | None, str]:
    """(the python of llama-cpp-python's venv, why not)."""
    python = installed().get("LLAMA_CPP_PYTHON")
    if not python or not os.access(python, os.X_OK):
        return None, (f"no llama-cpp-python (LLAMA_CPP_PYTHON={python!r}) — run "
                      f".ci/install-llama-cpp-python.sh (reads {ENV_FILE})")
    return Path(python), ""


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    if script.is_file():
        return [str(script)]
    which = shutil.which("gateway")
    return [which] if which else [sys.executable, "-m", "gateway"]


def http_get(port: int, path: str, timeout: float = 5.0,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Runtime(Proc):
    """A runtime server process on a free loopback port, ready when its health path is 200."""
    health_path = "/health"
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_healthy(self, timeout: float = 60) -> None:
        self.wait_ready(self.url + self.health_path, timeout)

    def restart(self, timeout: float = 60) -> None:
        self.kill()
        self.start()
        self.wait_healthy(timeout)


class LlamaServer(Runtime):
    def __init__(self, name: str, binary: Path, model: Path, log_dir: Path,
                 ctx: int = 1024, threads: int = 1, parallel: int = 1,
                 extra: tuple[str, ...] = ()):
        self.port = free_port()
        argv = [str(binary), "-m", str(model), "--host", HOST, "--port", str(self.port),
                # The GGUF carries no chat template (llama-server would fall back to chatml):
                # use the built-in gemma one, which needs --no-jinja (with Jinja on, the
                # default, "gemma" would be taken as a literal template). No Jinja = no tools,
                # as the llamacpp kind assumes.
                "--alias", PUBLIC_MODEL, "--no-jinja", "--chat-template", "gemma",
                "-c", str(ctx), "-np", str(parallel),
                "-t", str(threads), "-tb", str(threads), "--metrics", "--slots",
                # The native build's AMX kernels (CPUs with AMX, e.g. Sapphire Rapids)
                # crash as the model loads (SIGSEGV in ggml_backend_amx_mul_mat); without
                # weight repacking they are not used. The other CPU kernels serve as well.
                "--no-repack",
                "--no-warmup", *extra]
        super().__init__(name, argv, log_dir / f"{name}.log")

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.port, "/metrics")
        assert status == 200, body
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def slots(self) -> list[dict]:
        status, body = http_get(self.port, "/slots")
        assert status == 200, body
        return json.loads(body)

    def busy(self) -> bool:
        return any(s.get("is_processing") for s in self.slots())


# `python -m llama_cpp.server`, with llama.cpp's weight repacking off: as in llama-server
# (--no-repack above), its AMX kernels crash as the model loads on CPUs with AMX, and the
# server has no setting for it, so the model parameters' default is changed before it starts.
NO_REPACK_SERVER = """
import llama_cpp.llama_cpp as lc
defaults = lc.llama_model_default_params
def no_repack():
    params = defaults()
    params.use_extra_bufts = False
    return params
lc.llama_model_default_params = no_repack
from llama_cpp.server.__main__ import main
main()
"""


class LlamaCppPythonServer(Runtime):
    """llama-cpp-python's OpenAI-compatible server (FastAPI + uvicorn), from its own venv.

    It has no /health: /v1/models is 200 once it listens, and it listens only once the model
    is loaded. Its uvicorn access log (one line per request) goes to the log file.
    """
    health_path = "/v1/models"

    def __init__(self, name: str, python: Path, model: Path, log_dir: Path,
                 ctx: int = 1024, threads: int = 1):
        self.port = free_port()
        argv = [str(python), "-c", NO_REPACK_SERVER, "--model", str(model),
                "--model_alias", PUBLIC_MODEL, "--chat_format", "gemma",
                "--host", HOST, "--port", str(self.port), "--n_ctx", str(ctx),
                "--n_threads", str(threads), "--n_threads_batch", str(threads),
                # By default any request that arrives during a stream (a health check or a
                # model listing included) ends that stream early: `data: [DONE]` with no
                # finish_reason. Off, requests wait for the one model lock instead.
                "--interrupt_requests", "false",
                "--verbose", "false"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        super().__init__(name, argv, log_dir / f"{name}.log", env)

    def access_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request uvicorn logged."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            # INFO:     127.0.0.1:51234 - "GET /v1/models HTTP/1.1" 200 OK
            head, sep, tail = line.partition('" ')
            if not sep or ' - "' not in head:
                continue
            request = head.rsplit(' - "', 1)[1].split(" ")
            status = tail.split(" ", 1)[0]
            if len(request) == 3 and status.isdigit():
                out.append((request[0], request[1], int(status)))
        return out


def gateway_yaml(port: int, servers: list[LlamaServer], weights: list[int]) -> str:
    """The same shape as examples/llamacpp.yaml, with these servers' ports."""
    first, second = servers
    return f"""\
server:
  host: {HOST}
  port: {port}
  drain_s: 5
  admin_key: {ADMIN_KEY}

backends:
  {first.name}:
    kind: llamacpp
    url: {first.url}/v1
    weight: {weights[0]}
    models: [{PUBLIC_MODEL}]      # the id given to llama-server with --alias
    timeouts: {{connect_s: 2, first_byte_s: 60, idle_s: 30}}
  {second.name}:
    kind: llamacpp
    url: {second.url}            # with or without /v1
    weight: {weights[1]}
    # no models: discovered from its /v1/models ({PUBLIC_MODEL}, from --alias)
    timeouts: {{connect_s: 2, first_byte_s: 60, idle_s: 30}}

health: {{interval_s: 3, timeout_s: 2, unhealthy_after: 1, healthy_after: 1}}
retries: {{attempts: 2, deadline_s: 60}}
"""


class Gateway(Proc):
    def __init__(self, config: Path, log_dir: Path, env: dict[str, str] | None = None):
        """`env`: variables added to the gateway's environment (what the config's ${...} read)."""
        self.port = free_port()
        env = dict(os.environ, **(env or {}))
        env.pop("GATEWAY_CONFIG", None)
        argv = gateway_command() + ["serve", "--config", str(config),
                                    "--host", HOST, "--port", str(self.port)]
        super().__init__("gateway", argv, log_dir / "gateway.log", env)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def ready_url(self) -> str:
        return f"http://{HOST}:{self.port}/ready"

    def admin_backends(self) -> dict[str, dict]:
        status, body = http_get(self.port, "/admin/backends",
                                headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert status == 200, body
        return {row["name"]: row for row in json.loads(body)["backends"]}


def metric_sum(port: int, name: str, **labels: str) -> float:
    """The sum of a gateway metric's samples that carry these labels."""
    text = http_get(port, "/metrics")[1].decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == want for k, want in labels.items()))


def gateway_log(gateway: Gateway, request_id: str) -> list[dict]:
    """Every JSON log line of the gateway for this client request id."""
    out = []
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and request_id in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("request_id") == request_id:
                out.append(entry)
    return out


def request_log(gateway: Gateway, request_id: str) -> dict | None:
    """The gateway's (first) JSON log line for one request id, if written yet."""
    lines = gateway_log(gateway, request_id)
    return lines[0] if lines else None


class Stack:
    """A running gateway in front of real runtimes, as a test sees it."""

    gateway: Gateway

    def client(self, timeout: float = 60) -> openai.OpenAI:
        # max_retries=0: every error the gateway lets through must be seen by the test.
        return openai.OpenAI(base_url=self.gateway.base_url, api_key="unused",
                             timeout=timeout, max_retries=0)

    def wait_backends(self, healthy: dict[str, bool], timeout: float = 20,
                      field: str = "healthy") -> None:
        """Until each backend's /admin/backends `field` is as wanted: `healthy` (its
        health checks), or `available` (also out of any passive ejection)."""
        def check():
            rows = self.gateway.admin_backends()
            return all(rows[name][field] is want for name, want in healthy.items())
        wait_until(check, timeout, f"gateway sees backends {healthy}", self.gateway)
