"""gateway.yaml: every bad input gives `key.path: message` lines, every good one a frozen Config."""

from __future__ import annotations

import dataclasses
import io
import json
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from gateway import config as config_module
from gateway.config import schema as config_schema
from gateway.config import (
    ApiKey, Config, ConfigError, EngineConfig, Fallback, HealthConfig, QueueConfig, RetryConfig,
    RouteConfig, ServerConfig, Timeouts, check, load_config, load_config_text, redacted,
)
from gateway.runtimes.kinds import KINDS

ECHO = "backends:\n  e: {kind: echo, models: [m1, m2]}\n"


def load(text: str, **env: str) -> Config:
    return load_config_text(textwrap.dedent(text), env)


def problems(text: str, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, **env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- bad configs: each gives exactly these lines -------------------------------------------

def bad_configs() -> list:
    """The cases of config_problems.yaml: (config text, environment, problems)."""
    path = Path(__file__).with_name("config_problems.yaml")
    with path.open(encoding="utf-8") as f:
        cases = yaml.safe_load(f)
    return [pytest.param(c["config"], c.get("env", {}), c["problems"], id=c["id"])
            for c in cases]


BAD = bad_configs()


@pytest.mark.parametrize(("text", "env", "expected"), BAD)
def test_bad_config_gives_exactly_these_problems(text, env, expected):
    assert problems(text, **env) == expected


def test_every_problem_is_collected_and_sorted():
    found = problems("""
        server: {port: 0, colour: red}
        backends:
          b: {kind: vllm}
          a: {kind: echo, weight: -1}
        retries: {attempts: -1}
        """)
    assert found == [
        "backends.a.weight: must be greater than 0",
        "backends.b.url: is required for kind 'vllm'",
        "retries.attempts: must be at least 0",
        "server.colour: unknown key (expected one of: host, port, cors_origins, max_body_mb, "
        "drain_s, admin_key, client_idle_s)",
        "server.port: must be at least 1",
    ]


def test_list_indices_sort_as_numbers():
    keys = "".join(f"    - {{name: k{i}, key: v{i}, rpm: 0}}\n" for i in range(12))
    found = problems(ECHO + "auth:\n  keys:\n" + keys)
    assert [line.split(":")[0] for line in found] == [f"auth.keys.{i}.rpm" for i in range(12)]


def test_an_unset_variable_under_an_unknown_key_reports_both():
    assert problems("extra: ${X}\n" + ECHO) == [
        "extra: environment variable X is not set",
        "extra: unknown key (expected one of: server, backends, routes, health, retries, queue, "
        "auth, engine, tracing, state, responses)",
    ]


def test_duplicate_key_value_is_never_echoed():
    keys = "    - {name: a, key: hunter2}\n    - {name: b, key: hunter2}\n"
    found = problems(ECHO + "auth:\n  keys:\n" + keys)
    assert not any("hunter2" in line for line in found)


def test_design_example_as_written_names_its_missing_references():
    """DESIGN.md's snippet falls back to a `cloud` backend and a model it never defines."""
    found = problems(DESIGN_YAML, VLLM_KEY="v", GATEWAY_ADMIN_KEY="a", TEAM_A_KEY="t")
    assert found == [
        "routes.llama-3.1-8b.fallbacks.0.backend: unknown backend 'cloud'",
        "routes.llama-3.1-8b.fallbacks.1.model: unknown model 'llama-3.2-3b'",
    ]


def test_a_recursive_alias_is_a_problem_not_a_crash():
    assert problems("backends: &b {e: *b}\n") == [
        "config: nested too deeply, or a YAML alias refers to itself"]


def test_an_internal_error_becomes_a_problem(monkeypatch):
    def boom(doc):
        raise KeyError("surprise")
    monkeypatch.setattr(config_module, "build", boom)
    assert problems(ECHO) == ["config: unexpected error: KeyError: 'surprise'"]


# --- good configs ---------------------------------------------------------------------------

DESIGN_YAML = """\
server:
  host: 127.0.0.1
  port: 8080
  cors_origins: []            # exact origins or "*"; empty = CORS off
  max_body_mb: 16
  drain_s: 30
  admin_key: ${GATEWAY_ADMIN_KEY}   # guards /admin/*; absent = /admin/* disabled

backends:
  gpu-a:
    kind: vllm
    url: http://10.0.0.11:8000/v1   # with or without /v1
    api_key: ${VLLM_KEY}
    weight: 3
    models:
      llama-3.1-8b: meta-llama/Llama-3.1-8B-Instruct
    max_concurrency: 64
    capabilities: {tools: false}
    headers: {X-Org: infra}
    health_path: /health
    timeouts: {connect_s: 3, first_byte_s: 60, idle_s: 60}
  laptop:
    kind: ollama
    url: http://127.0.0.1:11434
    models: {llama-3.1-8b: "llama3.1:8b"}

routes:
  llama-3.1-8b:
    strategy: least_busy
    fallbacks:
      - backend: cloud
      - model: llama-3.2-3b

health:   {interval_s: 10, timeout_s: 2, unhealthy_after: 3, healthy_after: 2}
retries:  {attempts: 2, deadline_s: 120}
auth:
  keys:
    - {name: team-a, key: ${TEAM_A_KEY}, models: ["*"], rpm: 600, tpm: 200000}
"""

CLOUD = """\
  cloud:
    kind: openai
    url: https://api.example.com/v1/
    api_key: ${CLOUD_KEY:-}
    models: [llama-3.1-8b, llama-3.2-3b]
"""

DESIGN_ENV = {"VLLM_KEY": "vk", "GATEWAY_ADMIN_KEY": "ak", "TEAM_A_KEY": "tk"}


@pytest.fixture
def design() -> Config:
    text = DESIGN_YAML.replace("\nroutes:", CLOUD + "\nroutes:")
    return load_config_text(text, DESIGN_ENV)


def test_design_shape_loads(design):
    assert list(design.backends) == ["gpu-a", "laptop", "cloud"]
    assert design.server == ServerConfig(admin_key="ak")
    gpu = design.backends["gpu-a"]
    assert (gpu.kind, gpu.url) == ("vllm", "http://10.0.0.11:8000")
    assert gpu.api_base == "http://10.0.0.11:8000/v1"
    assert (gpu.api_key, gpu.weight, gpu.max_concurrency) == ("vk", 3, 64)
    assert dict(gpu.models) == {"llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct"}
    assert dict(gpu.headers) == {"X-Org": "infra"}
    assert gpu.timeouts == Timeouts(3, 60, 60)
    assert design.backends["laptop"].models["llama-3.1-8b"] == "llama3.1:8b"
    assert design.backends["cloud"].api_key is None
    assert design.route("llama-3.1-8b") == RouteConfig(
        "least_busy", (Fallback(backend="cloud"), Fallback(model="llama-3.2-3b")))
    assert design.health == HealthConfig(10, 2, 3, 2)
    assert design.retries == RetryConfig(2, 120)
    assert design.queue == QueueConfig()
    assert design.auth_keys == (ApiKey("team-a", "tk", ("*",), 600, 200000),)


def test_loaded_objects_are_frozen(design):
    assert isinstance(design.backends, MappingProxyType)
    assert isinstance(design.routes, MappingProxyType)
    for b in design.backends.values():
        assert all(isinstance(m, MappingProxyType) for m in (b.capabilities, b.headers))
    with pytest.raises(TypeError):
        design.backends["x"] = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        design.server.port = 1


def test_minimal_config_takes_every_default():
    cfg = load("backends: {e: {kind: echo}}")
    assert cfg == Config(backends=cfg.backends)
    e = cfg.backends["e"]
    assert (e.url, e.models, e.api_key, e.health_path, e.weight) == ("", None, None, "", 1.0)
    assert cfg.route("anything") == RouteConfig()


def test_empty_sections_mean_defaults():
    cfg = load("""
        server:
        backends: {e: {kind: echo, models:, headers:, capabilities:, timeouts:}}
        routes:
        health:
        retries:
        queue:
        auth:
          keys:
        engine:
        """)
    assert cfg == Config(backends=cfg.backends)
    assert cfg.backends["e"].models is None


def test_engine_section_defaults_and_values():
    assert load(ECHO).engine == EngineConfig(interval_s=1, stale_after_s=3, max_queue=8,
                                             max_kv_usage=0.9)
    cfg = load("engine: {interval_s: 0.5, stale_after_s: '${STALE}', max_queue: 0}\n" + ECHO,
               STALE="2")
    assert cfg.engine == EngineConfig(0.5, 2.0, 0, 0.9)


def test_models_as_list_or_mapping():
    cfg = load("""
        backends:
          a: {kind: echo, models: [m1, m2]}
          b: {kind: echo, models: {m1: "runtime/m1", m3: m3}}
        """)
    assert dict(cfg.backends["a"].models) == {"m1": "m1", "m2": "m2"}
    assert dict(cfg.backends["b"].models) == {"m1": "runtime/m1", "m3": "m3"}


@pytest.mark.parametrize("url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1",
                                 "http://h:8000/v1/", " http://h:8000/v1// "])
def test_url_with_or_without_v1(url):
    b = load(f"backends: {{a: {{kind: vllm, url: '{url}'}}}}").backends["a"]
    assert (b.url, b.api_base) == ("http://h:8000", "http://h:8000/v1")


def test_url_keeps_a_path_prefix():
    b = load("backends: {a: {kind: openai, url: 'https://proxy.example.com/llm/v1'}}").backends["a"]
    assert b.api_base == "https://proxy.example.com/llm/v1"


def test_env_values_and_defaults():
    cfg = load("""
        server:
          port: ${PORT:-9000}
          max_body_mb: ${BODY_MB}
          admin_key: ${ADMIN:-}
        backends:
          gpu-a:
            kind: vllm
            url: http://${HOST:-localhost}:${VPORT}/v1
            api_key: ${KEY}
            weight: ${WEIGHT:-2.5}
            max_concurrency: ${CAP}
            capabilities: {tools: "${TOOLS:-false}"}
        """, BODY_MB="1.5", VPORT="8001", KEY="k", CAP="8", HOST="")
    assert (cfg.server.port, cfg.server.max_body_mb, cfg.server.admin_key) == (9000, 1.5, None)
    b = cfg.backends["gpu-a"]
    assert (b.url, b.api_key, b.weight, b.max_concurrency) == ("http://localhost:8001", "k", 2.5, 8)
    assert b.capabilities["tools"] is False
    assert type(b.api_key) is str and type(cfg.server.port) is int


def test_a_quoted_number_in_the_file_is_not_coerced():
    """Only values that came from the environment are read as numbers."""
    assert problems("server: {port: '8080'}\n" + ECHO) == [
        "server.port: must be an integer, got a string"]


def test_secret_holding_yaml_syntax_stays_literal():
    secret = "a: b\n- [x, {y}] # ${NOT_A_VAR} &anchor *alias"
    cfg = load("backends: {e: {kind: echo, api_key: '${KEY}'}}", KEY=secret)
    assert cfg.backends["e"].api_key == secret


def test_escaped_reference_is_literal():
    cfg = load("backends: {e: {kind: echo, api_key: 'pa$${word} $$x'}}")
    assert cfg.backends["e"].api_key == "pa${word} $$x"


def test_references_inside_flow_mappings():
    """DESIGN.md writes `{name: team-a, key: ${TEAM_A_KEY}}`; braces are YAML flow syntax."""
    cfg = load("""
        backends: {e: {kind: echo, api_key: ${KEY:-a, b: [c]}, models: [${M}]}}
        auth: {keys: [{name: team-a, key: ${TEAM_A_KEY}}]}
        """, TEAM_A_KEY="t", M="m1")
    assert cfg.backends["e"].api_key == "a, b: [c]"
    assert list(cfg.backends["e"].models) == ["m1"]
    assert cfg.auth_keys[0].key == "t"


def test_yaml_error_columns_count_references_as_written():
    text = "backends: {e: {kind: echo, api_key: ${API_KEY}, x: y: z}}\n"
    assert problems(text, API_KEY="k") == [
        "yaml: line 1, column 53: expected ',' or '}', but got ':' "
        "(while parsing a flow mapping at line 1)"]


def test_private_use_characters_in_the_file_are_left_alone():
    text = "backends:\n  e: {kind: echo, headers: {X-Tag: \"\ue000\ue101\"}, api_key: '${K}'}\n"
    cfg = load(text, K="k")
    assert (cfg.backends["e"].headers["X-Tag"], cfg.backends["e"].api_key) == ("\ue000\ue101", "k")


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("GW_TEST_KEY", "from-os")
    cfg = load_config_text("backends: {e: {kind: echo, api_key: '${GW_TEST_KEY}'}}")
    assert cfg.backends["e"].api_key == "from-os"


@pytest.mark.parametrize("line", ["", "  admin_key:\n", "  admin_key: ''\n", "  admin_key: null\n"])
def test_admin_key_absent_or_empty_is_none(line):
    assert load("server:\n" + line + ECHO).server.admin_key is None


def test_capability_overrides_merge_on_kind_defaults():
    cfg = load("""
        backends:
          l: {kind: llamacpp, url: 'http://h', capabilities: {tools: true, embeddings: false}}
          v: {kind: vllm, url: 'http://h', capabilities: {tools: false}}
        """)
    assert dict(cfg.backends["l"].capabilities) == {
        "chat": True, "completions": True, "embeddings": False, "tools": True, "stream_usage": True,
        "responses": True, "messages": True, "rerank": False, "score": False, "tokenize": True,
        "audio": False, "images": False, "stateful_responses": False}
    assert dict(cfg.backends["v"].capabilities) == {**KINDS["vllm"].capabilities, "tools": False}


def test_kind_defaults():
    cfg = load("""
        backends:
          o: {kind: ollama, url: 'http://h:11434'}
          t: {kind: tgi, url: 'http://h'}
          l: {kind: llamacpp, url: 'http://h'}
          c: {kind: openai, url: 'https://api.example.com/v1'}
          x: {kind: ollama, url: 'http://h', health_path: /healthz}
        """)
    b = cfg.backends
    assert b["o"].health_path == "/api/tags"
    assert b["t"].capabilities["embeddings"] is False
    assert b["l"].capabilities["tools"] is False
    assert b["c"].health_path == "/v1/models"
    assert b["x"].health_path == "/healthz"


def test_discovering_backend_allows_unlisted_models():
    cfg = load("""
        backends:
          d: {kind: ollama, url: 'http://h'}
          e: {kind: echo, models: [m1]}
        routes:
          later: {fallbacks: [{backend: d}, {model: also-later}]}
          m1: {fallbacks: [{model: later}]}
        auth: {keys: [{name: a, key: k, models: [later]}]}
        """)
    assert cfg.route("later").fallbacks == (Fallback(backend="d"), Fallback(model="also-later"))


def test_fallback_chain_without_cycle():
    cfg = load(ECHO.replace("[m1, m2]", "[m1, m2, m3]") + """\
routes:
  m1: {fallbacks: [{model: m2}, {model: m3}]}
  m2: {fallbacks: [{model: m3}]}
  m3: {fallbacks: [{backend: e}]}
""")
    assert len(cfg.routes) == 3


def test_keys_are_kept_as_written():
    """YAML would read these keys as an int, a bool and a date; here they are names."""
    cfg = load("backends:\n  1: {kind: echo, models: {yes: y}}\n  2024-01-01: {kind: echo}\n")
    assert list(cfg.backends) == ["1", "2024-01-01"]
    assert dict(cfg.backends["1"].models) == {"yes": "y"}


def test_merge_keys_share_settings():
    cfg = load("""
        backends:
          a: &gpu {kind: vllm, url: 'http://a', weight: 2, models: [m]}
          b: {<<: *gpu, url: 'http://b'}
        """)
    assert (cfg.backends["b"].url, cfg.backends["b"].weight) == ("http://b", 2)


def test_auth_keys_with_models_and_limits():
    cfg = load(ECHO + "auth:\n  keys:\n    - {name: a, key: k1, models: [m1, 'm*'], rpm: 5}\n"
                      "    - {name: b, key: k2}\n")
    assert cfg.auth_keys == (ApiKey("a", "k1", ("m1", "m*"), 5, None), ApiKey("b", "k2"))


def test_schema_covers_every_dataclass_field():
    """The schema and the dataclasses must not drift apart."""
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    schema = config_schema.SCHEMA
    for name, cls in {"server": ServerConfig, "health": HealthConfig, "retries": RetryConfig,
                      "queue": QueueConfig, "engine": EngineConfig}.items():
        assert set(schema[name]["schema"]) == fields(cls)
    backend_schema = schema["backends"]["valuesrules"]["schema"]
    assert set(backend_schema) == fields(config_module.BackendConfig) - {"name"}
    assert set(backend_schema["timeouts"]["schema"]) == fields(Timeouts)
    assert set(schema["routes"]["valuesrules"]["schema"]) == fields(RouteConfig)
    assert set(schema["auth"]["schema"]["keys"]["schema"]["schema"]) == fields(ApiKey)


# --- load_config and check --------------------------------------------------------------

def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(ECHO)
    assert list(load_config(str(path)).backends) == ["e"]


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [f"config: cannot read {path}: No such file or directory"]


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"backends: {e: {kind: echo, api_key: '\xff'}}")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [f"config: cannot read {path}: not UTF-8 text (byte 37)"]


def test_check_ok(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("backends:\n  a: {kind: echo, models: [m1, m2]}\n"
                    "  b: {kind: echo, models: [m2, m3]}\n")
    out = io.StringIO()
    assert check(str(path), out) == 0
    assert out.getvalue() == "ok: 2 backends, 3 models\n"


def test_check_prints_every_problem(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("server: {port: 0}\nbackends: {e: {kind: echo, weight: 0}}\n")
    out = io.StringIO()
    assert check(str(path), out) == 1
    assert out.getvalue() == ("backends.e.weight: must be greater than 0\n"
                              "server.port: must be at least 1\n")


def test_check_names_the_bad_engine_key(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("engine: {max_kv_usage: 2, stale_after_s: 0.5, rounds: 3}\n" + ECHO)
    out = io.StringIO()
    assert check(str(path), out) == 1
    assert out.getvalue() == ("engine.max_kv_usage: must be at most 1\n"
                              "engine.rounds: unknown key (expected one of: interval_s, "
                              "stale_after_s, max_queue, max_kv_usage)\n")
    path.write_text("engine: {stale_after_s: 0.5}\n" + ECHO)   # the schema holds: the check
    out = io.StringIO()
    assert check(str(path), out) == 1
    assert out.getvalue() == "engine.stale_after_s: must be greater than interval_s (1)\n"


def test_check_missing_file_writes_to_stdout_by_default(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    assert check(str(path)) == 1
    captured = capsys.readouterr()
    assert captured.out == f"config: cannot read {path}: No such file or directory\n"
    assert captured.err == ""


# --- redacted ---------------------------------------------------------------------------

def test_redacted_hides_every_secret(design):
    data = redacted(design)
    text = json.dumps(data)
    for secret in DESIGN_ENV.values():
        assert f'"{secret}"' not in text
    assert data["server"]["admin_key"] == "***"
    assert data["backends"]["gpu-a"]["api_key"] == "***"
    assert data["backends"]["cloud"]["api_key"] is None
    assert data["auth_keys"][0]["key"] == "***"
    assert data["auth_keys"][0]["name"] == "team-a"
    assert data["backends"]["gpu-a"]["headers"] == {"X-Org": "infra"}
    assert data["routes"]["llama-3.1-8b"]["fallbacks"][0] == {"backend": "cloud", "model": None}
    assert design.backends["gpu-a"].api_key == "vk"     # the config itself is untouched


def test_redacted_hides_secret_headers_and_url_passwords():
    cfg = load("""
        backends:
          az:
            kind: openai
            url: https://user:pw@h/v1
            headers: {api-key: s1, X-Api-Token: s2, X-Org: o}
        """)
    b = redacted(cfg)["backends"]["az"]
    assert b["url"] == "https://user:***@h"
    assert b["headers"] == {"api-key": "***", "X-Api-Token": "***", "X-Org": "o"}


@pytest.mark.parametrize("text", [
    "backends:\n  a: {kind: vllm, url: 'http://user:s3cret@h:99999/v1'}\n",
    "backends:\n  a: {kind: vllm, url: 'ftp://user:s3cret@h/v1'}\n",
    "backends:\n  a: {kind: echo, models: [m], weight: '${W}'}\n",
    "server: {port: '${W}'}\nbackends:\n  a: {kind: echo, models: [m]}\n",
])
def test_problems_never_echo_secrets(text):
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env={"W": "s3cret"})
    assert info.value.problems
    assert "s3cret" not in "\n".join(info.value.problems)
