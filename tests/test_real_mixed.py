"""End to end against two independent implementations of the OpenAI API (issue 18).

llama.cpp's own llama-server (C++) and llama-cpp-python's server (FastAPI) run the same Gemma 3
270M GGUF behind one public model at 1:1, the gateway runs examples/mixed-llamacpp.yaml as
shipped (its ${...} variables point it at this module's ports), and the official `openai` SDK
is the client. Each runtime sits behind an HttpTap, a byte-for-byte relay that notes every
request the gateway sends it, since llama-server logs none of its health checks.

Install with .ci/install-llama.sh and .ci/install-llama-cpp-python.sh; without them the module
is skipped, unless GATEWAY_REQUIRE_LLAMACPP=1 (CI), where it fails instead.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Callable

import openai
import pytest
import yaml

from bench.procs import wait_until
from tests.conftest import unavailable
from tests.http_tap import HttpTap
from tests.llama_support import (
    ADMIN_KEY, PUBLIC_MODEL, Gateway, LlamaCppPythonServer, LlamaServer, Runtime, Stack,
    find_install, find_llama_cpp_python, gateway_command, gateway_log, http_get, metric_sum,
)

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mixed-llamacpp.yaml"
CPP, PY = "llama-server", "llama-cpp-python"     # the backend names in the example
BACKENDS = (CPP, PY)
EMBEDDING_WIDTH = 640                             # Gemma 3 270M's hidden size
MESSAGES = [{"role": "user", "content": "Say hello."}]
TRIES = 16   # a bound: at 1:1 the weighted round-robin alternates, so two requests usually do


class Mixed(Stack):
    def __init__(self, servers: dict[str, Runtime], taps: dict[str, HttpTap], gateway: Gateway):
        self.servers = servers
        self.taps = taps
        self.gateway = gateway

    def on_both(self, call: Callable[[], tuple[str | None, object]]) -> dict[str, object]:
        """Repeat `call` (returning (backend, result)) until each backend answered once."""
        got: dict[str, object] = {}
        for _ in range(TRIES):
            backend, result = call()
            assert backend in BACKENDS, backend
            got.setdefault(backend, result)
            if len(got) == len(BACKENDS):
                return got
        raise AssertionError(f"only {sorted(got)} answered {TRIES} requests at 1:1")

    def py_errors(self) -> list[tuple[str, str, int]]:
        """What llama-cpp-python refused (its uvicorn access log), e.g. a 400 for a request id;
        not the test's own look at its missing /health."""
        return [entry for entry in self.servers[PY].access_log()
                if entry[2] >= 400 and entry != ("GET", "/health", 404)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    binary, model, why = find_install()
    if binary is None:
        unavailable(f"llama.cpp not installed: {why}", "GATEWAY_REQUIRE_LLAMACPP")
    python, why = find_llama_cpp_python()
    if python is None:
        unavailable(why, "GATEWAY_REQUIRE_LLAMACPP")
    tmp = tmp_path_factory.mktemp("mixed")
    servers: dict[str, Runtime] = {
        # One llama-server answers chat, completions and embeddings alike.
        CPP: LlamaServer(CPP, binary, model, tmp, extra=("--embeddings", "--pooling", "mean")),
        PY: LlamaCppPythonServer(PY, python, model, tmp),
    }
    taps = {name: HttpTap(server.port) for name, server in servers.items()}
    gateway = None
    try:
        for name in BACKENDS:
            servers[name].start()
            taps[name].start()
        gateway = Gateway(EXAMPLE, tmp, env={
            "LLAMA_SERVER_URL": taps[CPP].url, "LLAMA_CPP_PYTHON_URL": taps[PY].url,
            "GATEWAY_ADMIN_KEY": ADMIN_KEY, "HEALTH_INTERVAL_S": "1", "HEALTH_TIMEOUT_S": "5"})
        for server in servers.values():
            server.wait_healthy(90)
        gateway.start()
        gateway.wait_ready(gateway.ready_url, 30)
        stack = Mixed(servers, taps, gateway)
        # No `models:` lists: both are discovered by the health loop.
        try:
            wait_until(lambda: all(row["healthy"] and row["models"] == [PUBLIC_MODEL]
                                   for row in gateway.admin_backends().values()), 20,
                       "both backends healthy, serving the model they were asked for")
        except TimeoutError:
            refused = stack.py_errors()
            ids = sorted({s.headers.get("x-request-id") for s in taps[PY].seen()}, key=str)
            raise AssertionError(
                f"backends not healthy with the model discovered: {gateway.admin_backends()}; "
                f"llama-cpp-python refused {len(refused)} requests {refused[:3]}; "
                f"request ids it was sent: {ids[:3]}\n{servers[PY].tail(5)}") from None
        yield stack
    finally:
        if gateway is not None:
            gateway.stop()
        for name in BACKENDS:
            servers[name].stop()
            taps[name].stop()


def chat(client: openai.OpenAI, max_tokens: int = 6, **kw):
    raw = client.chat.completions.with_raw_response.create(
        model=PUBLIC_MODEL, messages=MESSAGES, max_tokens=max_tokens, temperature=0, **kw)
    return raw.headers.get("x-gateway-backend"), raw.parse()


def is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(value or "")
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the config and discovery

def test_example_is_the_config_under_test(mixed):
    """The shipped file, with its defaults, is valid; the running gateway loaded it."""
    check = subprocess.run(gateway_command() + ["check", "--config", str(EXAMPLE)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    backends = yaml.safe_load(EXAMPLE.read_text())["backends"]
    assert sorted(backends) == sorted(BACKENDS)
    assert {name: b["kind"] for name, b in backends.items()} == {CPP: "llamacpp", PY: "openai"}
    assert [b["weight"] for b in backends.values()] == [1, 1]
    assert all("models" not in b for b in backends.values())
    rows = mixed.gateway.admin_backends()
    assert {name: rows[name]["url"] for name in BACKENDS} == {
        name: tap.url for name, tap in mixed.taps.items()}


def test_model_discovered_from_both(mixed):
    rows = mixed.gateway.admin_backends()
    assert {name: rows[name]["models"] for name in BACKENDS} == {
        CPP: [PUBLIC_MODEL], PY: [PUBLIC_MODEL]}
    assert [m.id for m in mixed.client().models.list()] == [PUBLIC_MODEL]
    for name, tap in mixed.taps.items():
        assert any(s.method == "GET" and s.path == "/v1/models" for s in tap.seen()), name


def test_each_runtime_is_checked_on_its_own_health_path(mixed):
    """llama-server on /health; llama-cpp-python, which has none (404), on /v1/models."""
    assert http_get(mixed.servers[PY].port, "/health")[0] == 404
    wait_until(lambda: sum(s.path == "/health" for s in mixed.taps[CPP].seen()) >= 3, 10,
               "three health checks of llama-server")
    assert all(s.method == "GET" for s in mixed.taps[CPP].seen() if s.path == "/health")
    py_paths = [s.path for s in mixed.taps[PY].seen() if s.method == "GET"]
    assert "/health" not in py_paths
    # Each round (every second here): the health check, then the model discovery.
    assert py_paths.count("/v1/models") >= 4, py_paths
    # And llama-cpp-python answered every one of them (it says 400 to an id it refuses).
    served = [e for e in mixed.servers[PY].access_log() if e[:2] == ("GET", "/v1/models")]
    assert served and all(status == 200 for _, _, status in served), served


def test_upstream_request_ids_are_uuids(mixed):
    """Every request the gateway sent either runtime (health checks and discovery included)
    carried an X-Request-ID that llama-cpp-python's UUID check accepts."""
    for name, tap in mixed.taps.items():
        seen = tap.seen()
        assert seen, name
        bad = sorted({(s.method, s.path, s.headers.get("x-request-id")) for s in seen
                      if not is_uuid(s.headers.get("x-request-id"))}, key=str)
        assert bad == [], f"{name} was sent non-UUID request ids: {bad[:5]}"
    assert mixed.py_errors() == []


# ---------------------------------------------------------------- the API through the gateway

def test_chat_on_both(mixed):
    for backend, completion in mixed.on_both(lambda: chat(mixed.client())).items():
        assert completion.object == "chat.completion", backend
        assert completion.model == PUBLIC_MODEL, backend
        choice = completion.choices[0]
        assert choice.message.role == "assistant"
        assert choice.message.content and choice.message.content.strip(), backend
        assert choice.finish_reason in ("stop", "length"), backend
        assert completion.usage.prompt_tokens > 0, backend
        assert 0 < completion.usage.completion_tokens <= 6, backend


def streamed_chat(client: openai.OpenAI, max_tokens: int = 12):
    raw = client.chat.completions.with_raw_response.create(
        model=PUBLIC_MODEL, messages=[{"role": "user", "content": "Count from one to twenty."}],
        max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    pieces, finish, usage = [], None, None
    with raw.parse() as stream:
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
    return raw.headers.get("x-gateway-backend"), (pieces, finish, usage)


def test_streamed_chat_with_usage(mixed):
    missing_before = metric_sum(mixed.gateway.port, "gateway_usage_missing_total", backend=PY)
    answers = mixed.on_both(lambda: streamed_chat(mixed.client()))
    for backend, (pieces, finish, _) in answers.items():
        assert sum(1 for p in pieces if p) >= 3, (backend, pieces)    # token by token
        assert "".join(pieces).strip(), backend
        assert finish in ("stop", "length"), (backend, finish)        # not cut short
    usage = answers[CPP][2]
    assert usage is not None and usage.completion_tokens == 12 and usage.prompt_tokens > 0
    # llama-cpp-python ignores stream_options: none of its streams carries usage, and the
    # gateway counts that as missing (docs/real-runtimes.md).
    assert answers[PY][2] is None
    assert metric_sum(mixed.gateway.port, "gateway_usage_missing_total",
                      backend=PY) > missing_before


def test_a_request_during_a_stream_does_not_cut_it(mixed):
    """llama-cpp-python ends a running stream early (`[DONE]`, no finish_reason) when any
    other request arrives, a health check included, unless started with
    --interrupt_requests false, as the example says."""
    client = mixed.client()
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model=PUBLIC_MODEL, max_tokens=40, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse."}])
        with raw.parse() as stream:
            if raw.headers.get("x-gateway-backend") != PY:
                continue
            chunks, finish, other = 0, None, None
            for chunk in stream:
                chunks += 1
                finish = chunk.choices[0].finish_reason or finish if chunk.choices else finish
                if chunks == 3:   # mid-stream, straight to the runtime: it waits for the lock
                    other = threading.Thread(target=http_get, args=(
                        mixed.servers[PY].port, "/v1/models", 30))
                    other.start()
            if other is not None:
                other.join(30)
            # A cut stream (by that request, or by one of the gateway's health checks) ends
            # with [DONE] and no finish_reason.
            assert finish in ("stop", "length"), f"cut after {chunks} chunks"
            assert other is not None and chunks > 3, chunks
            return
    raise AssertionError("llama-cpp-python was not picked in 4 requests at 1:1")


def test_completions_on_both(mixed):
    def complete():
        raw = mixed.client().completions.with_raw_response.create(
            model=PUBLIC_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
        return raw.headers.get("x-gateway-backend"), raw.parse()
    for backend, completion in mixed.on_both(complete).items():
        assert completion.object == "text_completion", backend
        assert completion.choices[0].text.strip(), backend
        assert completion.choices[0].finish_reason in ("stop", "length"), backend
        assert 0 < completion.usage.completion_tokens <= 6, backend


def test_client_request_id_that_is_no_uuid(mixed):
    """`X-Request-ID: req-42` from the client: answered 200 by both runtimes (llama-cpp-python
    answers such an id with an empty 400 when it reaches it) and echoed back unchanged."""
    client_id = "req-42"
    before = len(gateway_log(mixed.gateway, client_id))
    sent = 0

    def send():
        nonlocal sent
        sent += 1
        raw = mixed.client().chat.completions.with_raw_response.create(
            model=PUBLIC_MODEL, messages=MESSAGES, max_tokens=2,
            extra_headers={"X-Request-ID": client_id})
        assert raw.status_code == 200
        assert raw.headers.get_list("x-request-id") == [client_id]
        return raw.headers.get("x-gateway-backend"), raw.parse()

    mixed.on_both(send)
    wait_until(lambda: len(gateway_log(mixed.gateway, client_id)) == before + sent, 5,
               "the requests' log lines")
    entries = gateway_log(mixed.gateway, client_id)[before:]
    assert {e["backend"] for e in entries} == set(BACKENDS)
    assert all(e["status"] == 200 for e in entries), entries
    # The id sent upstream is a UUID, logged beside the client's so the two can be matched.
    upstream_ids = [e.get("upstream_request_id") for e in entries]
    assert all(is_uuid(i) and i != client_id for i in upstream_ids), entries
    on_the_wire = {s.headers.get("x-request-id") for tap in mixed.taps.values()
                   for s in tap.seen() if s.method == "POST"}
    assert set(upstream_ids) <= on_the_wire
    assert mixed.py_errors() == []


def test_embeddings_from_llama_server(mixed):
    """Real vectors of the model's width, always from llama-server: llama-cpp-python's backend
    says it has no embeddings, so it is never picked for them."""
    status, body = http_get(mixed.servers[CPP].port, "/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["meta"]["n_embd"] == EMBEDDING_WIDTH
    client = mixed.client()
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.",
             "The cat sat on the mat."]
    # Unless told otherwise the SDK asks for base64 and decodes it: both forms go through.
    for encoding in ("float", openai.NOT_GIVEN):
        raw = client.embeddings.with_raw_response.create(
            model=PUBLIC_MODEL, input=texts, encoding_format=encoding)
        assert raw.headers.get("x-gateway-backend") == CPP
        result = raw.parse()
        vectors = [item.embedding for item in sorted(result.data, key=lambda d: d.index)]
        assert [len(v) for v in vectors] == [EMBEDDING_WIDTH] * 3
        assert result.usage.prompt_tokens > 0
        for v in vectors:
            assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-3)
            assert len({round(x, 6) for x in v}) > EMBEDDING_WIDTH // 2   # not a constant
        same = sum(a * b for a, b in zip(vectors[0], vectors[2]))
        other = sum(a * b for a, b in zip(vectors[0], vectors[1]))
        assert same > 0.9999 and other < 0.99, (same, other)
    # Not tried there and retried here: never sent there at all.
    assert not [s for s in mixed.taps[PY].seen() if s.path == "/v1/embeddings"]


# ---------------------------------------------------------------- failures

@pytest.mark.parametrize("victim", BACKENDS)
def test_killed_runtime_leaves_the_other_answering(mixed, victim):
    """SIGKILL one runtime: every following request (chat, stream, completions) is answered,
    by the other one."""
    survivor = CPP if victim == PY else PY
    # Available, not only healthy: the previous victim's ejection outlasts its restart.
    mixed.wait_backends({CPP: True, PY: True}, field="available")
    client = mixed.client()
    mixed.servers[victim].kill()
    mixed.taps[victim].refuse()
    try:
        served = []
        for i in range(6):
            if i % 3 == 0:
                served.append(chat(client, max_tokens=2)[0])
            elif i % 3 == 1:
                backend, (pieces, finish, _) = streamed_chat(client, max_tokens=4)
                assert "".join(pieces).strip() and finish in ("stop", "length")
                served.append(backend)
            else:
                raw = client.completions.with_raw_response.create(
                    model=PUBLIC_MODEL, prompt="One, two,", max_tokens=2)
                assert raw.parse().choices[0].text is not None
                served.append(raw.headers.get("x-gateway-backend"))
        assert served == [survivor] * len(served)
        mixed.wait_backends({victim: False})
    finally:
        mixed.servers[victim].restart(90)
        mixed.taps[victim].listen()
    mixed.wait_backends({victim: True})
