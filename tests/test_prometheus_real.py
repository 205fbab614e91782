"""The gateway's /metrics against a real Prometheus (Debian's `prometheus` package).

1. `promtool check metrics` accepts the exposition after some traffic.
2. A gateway (two echo backends, a backend on a closed port, a fake runtime that answers 503,
   drops usage and breaks streams, a pool of DNS-found members and a cold one whose wake
   hook fails; dnsmasq answers) is scraped every second by a Prometheus on 127.0.0.1; after mixed
   traffic and a SIGHUP reload, every PromQL expression of grafana/dashboards/gateway.json
   must return data through Prometheus' HTTP API.

Skipped when the binaries are missing, unless GATEWAY_REQUIRE_PROMETHEUS=1 (CI sets it).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import Proc, free_port
from tests.conftest import dashboard_panels, unavailable
from tests.dns_server import DnsServer
from tests.engine_samples import vllm_metrics
from tests.llama_support import gateway_command

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "gateway.json"
# What Grafana puts in for its own variables and the dashboard's (model and backend at "All").
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m",
                     "$model": ".*", "$backend": ".*"}
KEY, TINY_KEY, NIGHTLY_KEY = "sk-test-team-a", "sk-test-tiny", "sk-test-nightly"


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        unavailable(f"{name} not installed (apt-get install -y prometheus)",
                    "GATEWAY_REQUIRE_PROMETHEUS")
    return path


# --- a fake OpenAI-compatible runtime -------------------------------------------------------

# Healthy, but: model "nousage" answers without token usage; model "broken" drops its
# streams midway and "failing" answers 500; "echo-model" always gets 503, so the gateway
# retries it on another backend of its pool. Its /metrics is a vLLM's, so the backend of
# kind vllm on it has engine gauges.
# "queued" answers after 0.3 s on a backend of max_concurrency 1: requests sent together
# wait in the gateway's queue (its depth and wait panels).
FAKE_SWITCHES = {"words": 3, "models": ["nousage", "broken", "failing", "queued"], "by_model": {
    "nousage": {"send_usage": False}, "broken": {"close_after": 1}, "queued": {"hang_s": 0.3},
    "failing": {"status": 500}, "echo-model": {"status": 503}},
    "pages": {"/metrics": vllm_metrics(running=2, waiting=3, kv=0.4, model="echo-model")}}


@pytest.fixture
def fake_runtime(tmp_path):
    port = free_port()
    with Proc("fake runtime", [sys.executable, "-m", "bench.fake_runtime", "--port", str(port),
                               "--switches", json.dumps(FAKE_SWITCHES)],
              tmp_path / "fake-runtime.log", cwd=ROOT) as proc:
        proc.start().wait_ready(f"http://127.0.0.1:{port}/health", 20)
        yield port


# --- the gateway under test -----------------------------------------------------------------

def _gateway_config(port: int, fake_port: int, dead_port: int, nameserver: str) -> dict:
    discover = {"dns": True, "interval_s": 1, "nameservers": [nameserver]}
    return {
        "server": {"host": "127.0.0.1", "port": port, "drain_s": 2},
        "backends": {
            "echo-a": {"kind": "echo", "models": ["echo-model"]},
            "echo-b": {"kind": "echo", "models": ["echo-model"]},
            # Healthy but answers 503: picked first most of the time (weight), so the
            # request is retried on an echo backend. Its /metrics feeds the engine gauges;
            # "dead" below (kind vllm too) feeds the scrape failures.
            "sick": {"kind": "vllm", "url": f"http://127.0.0.1:{fake_port}", "weight": 20,
                     "models": ["echo-model"],
                     "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5}},
            # Nothing listens there: down from the first health check on.
            "dead": {"kind": "vllm", "url": f"http://127.0.0.1:{dead_port}",
                     "models": ["flaky"],
                     "timeouts": {"connect_s": 1, "first_byte_s": 5, "idle_s": 5}},
            "fake": {"kind": "openai", "url": f"http://127.0.0.1:{fake_port}/v1",
                     "models": ["nousage", "broken", "failing"],
                     "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5}},
            # Members found by DNS: pool.test is the fake runtime's address.
            "pool": {"kind": "openai", "url": f"http://pool.test:{fake_port}/v1",
                     "models": ["nousage"], "discover": discover},
            # A name with no address: a cold pool, whose wake hook nothing answers.
            "cold": {"kind": "openai", "url": f"http://cold.test:{fake_port}/v1",
                     "models": ["sleepy"], "discover": discover,
                     "wake": {"url": f"http://127.0.0.1:{dead_port}/up", "method": "POST"}},
            "narrow": {"kind": "openai", "url": f"http://127.0.0.1:{fake_port}/v1",
                       "models": ["queued"], "max_concurrency": 1,
                       "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5}},
        },
        # "flaky" lives on the dead backend only: its requests go to the echo-model pool.
        # least_busy over two backends whose kind exposes no load: routed on the gateway's
        # own count, which gateway_routing_signal_fallbacks_total says.
        "routes": {"flaky": {"fallbacks": [{"model": "echo-model"}]},
                   "nousage": {"strategy": "least_busy"}},
        "health": {"interval_s": 1, "timeout_s": 1, "unhealthy_after": 3, "healthy_after": 1},
        "retries": {"attempts": 2, "deadline_s": 20},
        "queue": {"max_wait_s": 1},   # the cold pool's requests wait this long, then 503
        "auth": {"keys": [
            {"name": "team-a", "key": KEY, "models": ["*"]},
            # Two requests a minute: the rest of its traffic is rate limited.
            {"name": "tiny", "key": TINY_KEY, "models": ["*"], "rpm": 2},
            {"name": "nightly", "key": NIGHTLY_KEY, "models": ["*"], "priority": "batch",
             "budget": {"tokens_per_day": 10 ** 9}},
        ]},
    }


class Gateway(Proc):
    def __init__(self, tmp: Path, fake_port: int, nameserver: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = _gateway_config(self.port, fake_port, free_port(), nameserver)
        self.config["state"] = {"sqlite": str(tmp / "state.sqlite")}   # the budget's counts
        self.config_path = tmp / "gateway.yaml"
        self.write_config()
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        super().__init__("gateway", [*gateway_command(), "serve", "--config", self.config_path,
                                     "--host", "127.0.0.1", "--port", str(self.port)],
                         tmp / "gateway.log", env=env, cwd=tmp)

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False),
                                    encoding="utf-8")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            return r.read().decode()

    def sample_names(self) -> set[str]:
        return {s.name for fam in text_string_to_metric_families(self.metrics_text())
                for s in fam.samples}


@pytest.fixture
def gateway(tmp_path, fake_runtime):
    dns = DnsServer(tmp_path).start()
    dns.set("pool.test", "127.0.0.1")
    try:
        with Gateway(tmp_path, fake_runtime, dns.nameserver) as gw:
            gw.start().wait_ready(gw.base + "/health")
            yield gw
    finally:
        dns.stop()


# --- traffic --------------------------------------------------------------------------------

def _post(base: str, path: str, body, *, stream: bool = False, leave_after_first: bool = False,
          key: str | None = KEY, timeout: float = 20) -> int:
    """POST and read the whole answer (or one line of it); returns the HTTP status."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request("POST", path, data, headers)
        resp = conn.getresponse()
        try:
            if stream and resp.status == 200:
                for _ in range(10_000):            # bounded: an echo answer is a few words
                    line = resp.readline()
                    if not line or line.strip() == b"data: [DONE]":
                        break
                    if leave_after_first and line.startswith(b"data:"):
                        break
            else:
                resp.read()
        except (http.client.HTTPException, OSError):
            pass                                   # a broken stream is part of the traffic
        finally:
            resp.close()
        return resp.status
    finally:
        conn.close()


def _chat(model: str, text: str = "the quick brown fox jumps over the lazy dog", **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


def _one_round(base: str) -> None:
    _post(base, "/v1/chat/completions", _chat("flaky"))
    for stream in (False, True):
        _post(base, "/v1/chat/completions", _chat("echo-model", stream=stream), stream=stream)
        _post(base, "/v1/completions",
              {"model": "echo-model", "prompt": "one two three four five", "stream": stream},
              stream=stream)
        _post(base, "/v1/chat/completions", _chat("nousage", stream=stream), stream=stream)
        # Broken midway when streamed, a 500 when not.
        _post(base, "/v1/chat/completions", _chat("broken" if stream else "failing",
                                                  stream=stream), stream=stream)
    _post(base, "/v1/embeddings", {"model": "echo-model", "input": ["alpha", "beta"]})
    # A cold pool: the request waits queue.max_wait_s, the wake hook is called (and fails).
    assert _post(base, "/v1/chat/completions", _chat("sleepy")) == 503
    # A client that leaves a long stream after its first event.
    _post(base, "/v1/chat/completions", _chat("echo-model", " ".join(["word"] * 3000),
                                              stream=True), stream=True, leave_after_first=True)
    assert _post(base, "/v1/chat/completions", _chat("no-such-model")) == 404
    assert _post(base, "/v1/chat/completions", b"{not json") == 400
    assert _post(base, "/v1/chat/completions", _chat("echo-model"), key=None) == 401
    for _ in range(3):
        _post(base, "/v1/chat/completions", _chat("echo-model"), key=TINY_KEY)
    # Three at once on a backend that takes one: two wait in the queue, in two classes.
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda key: _post(base, "/v1/chat/completions", _chat("queued"), key=key),
                      (KEY, NIGHTLY_KEY, KEY)))


def drive_traffic(gw: Gateway, wanted: set[str], min_s: float = 6, max_rounds: int = 20,
                  timeout: float = 60) -> set[str]:
    """Rounds of mixed traffic, one a second for at least `min_s` (so that Prometheus sees
    the counters grow across scrapes), until /metrics has every sample name in `wanted`
    (bounded); returns the names still missing."""
    start = time.monotonic()
    missing = set(wanted)
    for _ in range(max_rounds):
        _one_round(gw.base)
        missing = wanted - gw.sample_names()
        elapsed = time.monotonic() - start
        if (not missing and elapsed >= min_s) or elapsed > timeout:
            break
        time.sleep(1)
    return missing


def _reloads(gw: Gateway) -> float:
    return sum(s.value for fam in text_string_to_metric_families(gw.metrics_text())
               for s in fam.samples if s.name == "gateway_config_reloads_total")


def reload_config(gw: Gateway, weight: int, timeout: float = 15) -> bool:
    """Edit the config and send SIGHUP; True once /metrics counts one more reload."""
    before = _reloads(gw)
    gw.config["backends"]["echo-b"]["weight"] = weight
    gw.write_config()
    gw.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reloads(gw) > before:
            return True
        time.sleep(0.2)
    return False


# --- Prometheus -----------------------------------------------------------------------------

class Prometheus(Proc):
    def __init__(self, binary: str, tmp: Path, target: str) -> None:
        conf = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "gateway", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(conf), encoding="utf-8")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__("prometheus", [binary, f"--config.file={tmp / 'prometheus.yml'}",
                                        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                                        f"--web.listen-address=127.0.0.1:{self.port}",
                                        "--log.level=warn"], tmp / "prometheus.log", cwd=tmp)

    def query(self, expr: str) -> list[dict]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"value": result}]
        return result

    def label_values(self, label: str, metric: str) -> list[str]:
        """What Grafana's `label_values(metric, label)` variable query asks Prometheus."""
        url = (self.base + f"/api/v1/label/{label}/values?"
               + urllib.parse.urlencode({"match[]": metric}))
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def wait_for(self, expr: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(expr):
                return True
            time.sleep(0.5)
        return False


def _dashboard_queries() -> list[tuple[str, str]]:
    with DASHBOARD.open(encoding="utf-8") as f:
        dash = json.load(f)
    out = []
    for p in dashboard_panels(dash):
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            if expr.strip():
                out.append((p.get("title", ""), expr))
    return out


def _dashboard_variables() -> list[dict]:
    with DASHBOARD.open(encoding="utf-8") as f:
        return json.load(f)["templating"]["list"]


def _label_values_args(query: str) -> tuple[str, str]:
    """`label_values(metric, label)` -> (label, metric)."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
    assert match, query
    return match.group(2), match.group(1)


def _dashboard_sample_names(queries) -> set[str]:
    """The gateway's sample names the dashboard reads (for a clearer failure message)."""
    names = set()
    for _, expr in queries:
        names.update(re.findall(r"\b(gateway_[a-z0-9_]+)", expr))
    return names


def _values(result: list[dict]) -> list[float]:
    out = []
    for series in result:
        try:
            out.append(float(series["value"][1]))
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    return out


def _problem(expr: str, result: list[dict]) -> str | None:
    """Why a panel's query would show nothing useful, or None."""
    if not result:
        return "queries with no data"
    values = [v for v in _values(result) if not math.isnan(v)]
    if not values:
        return "queries whose every value is NaN"
    is_rate = ("rate(" in expr or "increase(" in expr) and "histogram_quantile" not in expr
    if is_rate and not any(v > 0 for v in values):
        return "rate queries that stayed at 0 through the traffic"
    return None


# --- the tests ------------------------------------------------------------------------------

def test_promtool_accepts_the_metrics(gateway, tmp_path):
    promtool = _binary("promtool")
    _one_round(gateway.base)
    text = gateway.metrics_text()
    assert "gateway_requests_total" in text
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, f"promtool check metrics:\n{run.stdout}{run.stderr}"


def test_every_dashboard_query_returns_data(gateway, tmp_path):
    binary = _binary("prometheus")
    queries = _dashboard_queries()
    assert len(queries) > 20
    with Prometheus(binary, tmp_path, f"127.0.0.1:{gateway.port}") as prom:
        prom.start().wait_ready(prom.base + "/-/ready")
        assert prom.wait_for('up{job="gateway"} == 1', timeout=30), prom.tail()

        wanted = _dashboard_sample_names(queries) - {"gateway_config_reloads_total"}
        never_exposed = drive_traffic(gateway, wanted)
        # Two reloads a few scrapes apart, so that increase() sees the counter grow, each
        # followed by traffic that the new config must serve too.
        for weight in (2, 3):
            if not reload_config(gateway, weight):
                never_exposed.add(f"gateway_config_reloads_total (reload to weight {weight})")
            _one_round(gateway.base)
            time.sleep(1.5)
        time.sleep(2)                      # a few scrapes of the final counters

        verdicts: dict[str, list[str]] = {}
        deadline = time.monotonic() + 30
        pending = list(queries)
        while True:
            verdicts = {}
            for title, expr in pending:
                problem = _problem(expr, prom.query(expr))
                if problem:
                    verdicts.setdefault(problem, []).append(f"{title}: {expr}")
            pending = [(t, e) for t, e in pending
                       if any(f"{t}: {e}" in v for v in verdicts.values())]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1)
        variables = {v["name"]: prom.label_values(*_label_values_args(v["query"]["query"]))
                     for v in _dashboard_variables() if v["type"] == "query"}
    assert set(variables) == {"model", "backend"}
    assert {"echo-model", "nousage"} <= set(variables["model"]), variables
    assert {"echo-a", "sick", "dead"} <= set(variables["backend"]), variables
    assert not verdicts, (
        "".join(f"{problem}:\n  " + "\n  ".join(items) + "\n"
                for problem, items in verdicts.items())
        + f"sample names the gateway never exposed: {sorted(never_exposed)}\n"
        + f"gateway log:\n{gateway.tail()}")
