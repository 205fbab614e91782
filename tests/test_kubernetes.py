"""deploy/kubernetes/: rendered by kubectl's kustomize, validated offline, read for meaning.

No cluster is needed. `kubectl kustomize` builds the objects `kubectl apply -k` would send;
every one is validated against the Kubernetes JSON schemas that the `kubernetes-validate`
package bundles (strict: an unknown field is an error), and then the properties that no
schema checks: probes on the right paths, the config mounted so hot reload works, a grace
period that covers the drain, selectors that match, a config that `gateway check` accepts
with the Secret's values.

The optional components are enabled the way README.md says, by uncommenting their lines
in a copy of the tree. The ServiceMonitor is a custom resource: no bundled schema knows
it, so it is left out of the default build (applying it without the Prometheus Operator's
CRDs fails) and checked field by field here instead.

Skipped when kubectl is missing, unless GATEWAY_REQUIRE_K8S=1 (CI sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import bearer, eventually, unavailable

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
REQUIRE = "GATEWAY_REQUIRE_K8S"
# The schemas to validate against: one of those kubernetes-validate bundles. Every API used
# (apps/v1, policy/v1, autoscaling/v2, networking.k8s.io/v1) is GA well before it.
K8S_VERSION = "1.32.0"
CUSTOM_RESOURCES = {"monitoring.coreos.com/v1"}
IMAGE = "llm-edge-gateway:latest"
PLACEHOLDER = "REPLACE-ME"


# --- rendering -------------------------------------------------------------------------------

def _kustomize_major(kubectl: str) -> int | None:
    """The major version of kubectl's built-in kustomize; None when it does not say."""
    run = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    try:
        version = json.loads(run.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return None
    digits = version.lstrip("v").split(".")[0]
    return int(digits) if digits.isdigit() else None


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        unavailable("kubectl not installed (1.21 or newer)", REQUIRE)
    major = _kustomize_major(path)
    if major is None or major < 4:
        # Components and per-generator options need kustomize v4 (kubectl 1.21 and later);
        # Debian 12's kubernetes-client is 1.20.
        unavailable(f"{path}: its built-in kustomize is older than v4 (kubectl < 1.21)",
                    REQUIRE)
    return path


@pytest.fixture(scope="module")
def validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate not installed (pip install -e '.[test]')", REQUIRE)
    return kubernetes_validate


def render(kubectl: str, directory: Path) -> list[dict]:
    run = subprocess.run([kubectl, "kustomize", str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    # kustomize warns on stderr about deprecated fields: none are used.
    assert run.stderr.strip() == "", run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def uncomment(path: Path, prefixes: list[str]) -> None:
    """Turn `# <prefix>...` lines back into `<prefix>...`, as README.md tells users to."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for prefix in prefixes:
        hits = [i for i, line in enumerate(lines) if line.startswith("# " + prefix)]
        assert len(hits) == 1, f"{path.name}: no single commented line '# {prefix}...'"
        lines[hits[0]] = lines[hits[0]][2:]
    path.write_text("".join(lines), encoding="utf-8")


def with_components(tmp: Path, *names: str) -> Path:
    """A copy of deploy/kubernetes with the named components' documented lines enabled."""
    tree = tmp / "kubernetes"
    shutil.copytree(K8S, tree)
    uncomment(tree / "kustomization.yaml",
              ["components:", *(f"  - components/{name}" for name in names)])
    if "redis" in names:
        uncomment(tree / "gateway.yaml", ["state:"])
    if "vllm-pool" in names:
        uncomment(tree / "gateway.yaml", ["  vllm-pool:"])
    return tree


@pytest.fixture(scope="module")
def base(kubectl) -> list[dict]:
    return render(kubectl, K8S)


@pytest.fixture(scope="module")
def with_redis(kubectl, tmp_path_factory) -> list[dict]:
    return render(kubectl, with_components(tmp_path_factory.mktemp("redis"), "redis"))


@pytest.fixture(scope="module")
def with_pool(kubectl, tmp_path_factory) -> list[dict]:
    return render(kubectl, with_components(tmp_path_factory.mktemp("pool"), "vllm-pool"))


@pytest.fixture(scope="module")
def with_monitor(kubectl, tmp_path_factory) -> list[dict]:
    return render(kubectl, with_components(tmp_path_factory.mktemp("sm"), "servicemonitor"))


# --- reading the objects ---------------------------------------------------------------------

def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects
             if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == name)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def port_number(cont: dict, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in cont["ports"] if p.get("name") == port)


def command_options(cont: dict) -> dict[str, str]:
    """`gateway serve --a x --b y` -> {"--a": "x", "--b": "y"}."""
    cmd = cont["command"]
    assert cmd[:2] == ["gateway", "serve"], cmd
    rest = cmd[2:]
    assert len(rest) % 2 == 0 and all(w.startswith("--") for w in rest[::2]), cmd
    return dict(zip(rest[::2], rest[1::2]))


def gateway_config(objects: list[dict]) -> tuple[str, dict]:
    """(file name, parsed gateway.yaml) of the ConfigMap the gateway's --config points into."""
    deploy = one(objects, "Deployment", "gateway")
    config_path = PurePosixPath(command_options(container(deploy, "gateway"))["--config"])
    mount = next(m for m in container(deploy, "gateway")["volumeMounts"]
                 if PurePosixPath(m["mountPath"]) == config_path.parent)
    volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    cmap = one(objects, "ConfigMap", volume["configMap"]["name"])
    text = cmap["data"][config_path.name]
    return text, yaml.safe_load(text)


def secret_env(objects: list[dict]) -> dict[str, str]:
    secret = one(objects, "Secret")
    return dict(secret.get("stringData") or {})


def env_refs(node: Any) -> set[str]:
    """Names of the ${VAR}s (without a default) in a parsed config's strings."""
    if isinstance(node, dict):
        return set().union(*(env_refs(v) for v in node.values()), set())
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node), set())
    if isinstance(node, str) and "${" in node:
        inner = node.split("${", 1)[1].split("}", 1)[0]
        return {inner} if ":-" not in inner else set()
    return set()


def schema_problems(validate: Any, objects: list[dict]) -> list[str]:
    problems = []
    for obj in objects:
        try:
            validate.validate(obj, K8S_VERSION, strict=True)
        except validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {err.message}")
    return problems


def core(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["apiVersion"] not in CUSTOM_RESOURCES]


# --- schemas ---------------------------------------------------------------------------------

def test_base_has_the_objects_and_no_custom_resources(base):
    kinds = sorted(o["kind"] for o in base)
    assert kinds == sorted(["ConfigMap", "Secret", "Deployment", "Service",
                            "PodDisruptionBudget", "HorizontalPodAutoscaler"])
    assert core(base) == base   # `kubectl apply -k` works without any operator installed


def test_every_object_passes_the_kubernetes_schemas(base, with_redis, validate):
    assert schema_problems(validate, base) == []
    assert schema_problems(validate, with_redis) == []


def test_the_schema_check_catches_mistakes(base, validate):
    """The validation above means something: a misspelt field and a wrong type both fail."""
    deploy = json.loads(json.dumps(one(base, "Deployment", "gateway")))
    container(deploy, "gateway")["readinessProbe"]["httpGet"]["pth"] = "/ready"
    deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    problems = schema_problems(validate, [deploy])
    assert len(problems) == 1 and "Deployment/gateway" in problems[0]


def test_servicemonitor_component(with_monitor, validate):
    assert schema_problems(validate, core(with_monitor)) == []
    monitor = one(with_monitor, "ServiceMonitor", "gateway")
    # No bundled schema for a custom resource: this is why its fields are checked by hand.
    with pytest.raises(validate.SchemaNotFoundError):
        validate.validate(monitor, K8S_VERSION, strict=True)
    service = one(with_monitor, "Service", "gateway")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not monitor["spec"].get("namespaceSelector")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"


# --- the gateway's Deployment ----------------------------------------------------------------

def test_container_runs_the_images_command_with_workers(base):
    cont = container(one(base, "Deployment", "gateway"), "gateway")
    assert cont["image"] == IMAGE
    cmd_line = next(line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
                    if line.startswith("CMD "))
    image_cmd = json.loads(cmd_line[len("CMD "):])
    assert cont["command"][:len(image_cmd)] == image_cmd
    options = command_options(cont)
    assert options["--host"] == "0.0.0.0"
    assert int(options["--workers"]) >= 2


def test_probes_hit_ready_and_health_on_the_served_port(base):
    cont = container(one(base, "Deployment", "gateway"), "gateway")
    _, config = gateway_config(base)
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = cont[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(cont, get["port"]) == config["server"]["port"]


def test_config_is_a_directory_mount_so_hot_reload_sees_updates(base):
    deploy = one(base, "Deployment", "gateway")
    cont = container(deploy, "gateway")
    config_path = PurePosixPath(command_options(cont)["--config"])
    [mount] = [m for m in cont["volumeMounts"]
               if PurePosixPath(config_path).is_relative_to(m["mountPath"])]
    # A subPath mount would never see the kubelet's symlink swap of an updated ConfigMap.
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert PurePosixPath(mount["mountPath"]) == config_path.parent
    volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert "items" not in volume["configMap"]
    cmap = one(base, "ConfigMap", volume["configMap"]["name"])
    assert cmap["metadata"]["name"] == "gateway-config"   # no hash suffix: edits update it
    assert list(cmap["data"]) == [config_path.name]
    assert cmap["data"][config_path.name] == (K8S / "gateway.yaml").read_text(encoding="utf-8")


def kubelet_update(volume: Path, files: dict[str, str], generation: int) -> None:
    """Write a ConfigMap volume as the kubelet's atomic writer does.

    The files go into a new hidden timestamped directory; a `..data_tmp` symlink to it is
    renamed over `..data`; each key is a symlink `name -> ..data/name`, made once; the
    previous directory is then removed.
    """
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    stamp = f"..2026_01_01_00_00_{generation:02d}.{generation}"
    (volume / stamp).mkdir()
    for name, text in files.items():
        (volume / stamp / name).write_text(text, encoding="utf-8")
    (volume / "..data_tmp").symlink_to(stamp)
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    if old:
        shutil.rmtree(volume / old)


async def test_an_updated_configmap_volume_is_hot_reloaded(tmp_path, aiohttp_client,
                                                          monkeypatch):
    """The kubelet's symlink swap of the mounted ConfigMap reaches the gateway's file watch."""
    text = (K8S / "gateway.yaml").read_text(encoding="utf-8")
    secrets = yaml.safe_load((K8S / "secret.yaml").read_text(encoding="utf-8"))["stringData"]
    for name, secret in secrets.items():
        monkeypatch.setenv(name, secret)
    # The example runtime's Service does not exist here: a closed loopback port instead.
    text = text.replace("http://vllm:8000/v1", "http://127.0.0.1:9/v1")
    assert "127.0.0.1:9" in text
    volume = tmp_path / "gateway"
    volume.mkdir()
    kubelet_update(volume, {"gateway.yaml": text}, 1)
    path = str(volume / "gateway.yaml")
    client = await aiohttp_client(create_app(load_config(path), path))
    headers = bearer(secrets["TEAM_A_KEY"])

    async def models() -> set[str]:
        resp = await client.get("/v1/models", headers=headers)
        assert resp.status == 200
        return {m["id"] for m in (await resp.json())["data"]}

    assert "echo-2" not in await models()
    edited = text.replace("models: [echo]", "models: [echo, echo-2]")
    assert edited != text
    kubelet_update(volume, {"gateway.yaml": edited}, 2)

    async def reloaded() -> bool:
        return "echo-2" in await models()
    assert await eventually(reloaded, timeout=10, interval=0.1), \
        "the swapped ConfigMap was not reloaded in 10 s"


def test_grace_period_covers_prestop_and_drain(base):
    spec = one(base, "Deployment", "gateway")["spec"]["template"]["spec"]
    cont = container(one(base, "Deployment", "gateway"), "gateway")
    pre_stop = cont["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    assert sleep_s >= 3   # endpoints must be gone before SIGTERM closes the listener
    _, config = gateway_config(base)
    drain_s = config["server"]["drain_s"]
    assert spec["terminationGracePeriodSeconds"] > sleep_s + drain_s


def test_container_is_locked_down(base):
    spec = one(base, "Deployment", "gateway")["spec"]["template"]["spec"]
    cont = container(one(base, "Deployment", "gateway"), "gateway")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0   # the image's user is a name
    sec = cont["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    # The one writable place is a scratch volume at /tmp.
    writable = [m for m in cont["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    volume = next(v for v in spec["volumes"] if v["name"] == writable[0]["name"])
    assert "emptyDir" in volume
    assert {"cpu", "memory"} <= set(cont["resources"]["requests"])
    assert "memory" in cont["resources"]["limits"]


def test_pods_carry_prometheus_scrape_annotations(base):
    deploy = one(base, "Deployment", "gateway")
    notes = deploy["spec"]["template"]["metadata"]["annotations"]
    _, config = gateway_config(base)
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == config["server"]["port"]
    assert notes["prometheus.io/path"] == "/metrics"


# --- config and secrets ----------------------------------------------------------------------

def _check(config_text: str, secrets: dict[str, str], unset: str | None,
           tmp_path: Path) -> subprocess.CompletedProcess:
    """`gateway check` of the file, with the Secret's keys (less `unset`) as environment."""
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env.update((k, v) for k, v in secrets.items() if k != unset)
    return subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_configmap_passes_gateway_check_with_the_secrets_values(base, tmp_path):
    text, _ = gateway_config(base)
    run = _check(text, secret_env(base), None, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_secret_is_used_and_every_variable_comes_from_the_secret(base, tmp_path):
    text, config = gateway_config(base)
    secrets = secret_env(base)
    assert env_refs(config) == set(secrets)
    assert {"GATEWAY_ADMIN_KEY", "TEAM_A_KEY", "VLLM_API_KEY"} <= set(secrets)
    assert all(value.startswith(PLACEHOLDER) for value in secrets.values())
    # Without one of them the same file fails `gateway check`: the Secret is what it reads.
    run = _check(text, secrets, "VLLM_API_KEY", tmp_path)
    assert run.returncode == 1 and "VLLM_API_KEY" in run.stdout + run.stderr


def test_the_secret_reaches_the_container_as_environment(base):
    cont = container(one(base, "Deployment", "gateway"), "gateway")
    refs = [e["secretRef"]["name"] for e in cont.get("envFrom", []) if "secretRef" in e]
    assert refs == [one(base, "Secret")["metadata"]["name"]]


# --- Service, disruption budget, autoscaler --------------------------------------------------

def test_service_selects_the_gateway_pods_on_the_http_port(base):
    deploy = one(base, "Deployment", "gateway")
    service = one(base, "Service", "gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert selects(service["spec"]["selector"], pod_labels(deploy))
    assert selects(deploy["spec"]["selector"]["matchLabels"], pod_labels(deploy))
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", 8080)
    _, config = gateway_config(base)
    assert port_number(container(deploy, "gateway"), port["targetPort"]) == \
        config["server"]["port"]


def test_disruption_budget_and_autoscaler_fit_together(base):
    deploy = one(base, "Deployment", "gateway")
    pdb = one(base, "PodDisruptionBudget")
    hpa = one(base, "HorizontalPodAutoscaler")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(deploy))
    assert pdb["spec"]["minAvailable"] == 1
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])
    # Several replicas, and a node drain can always evict one of them.
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["minAvailable"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # The HPA owns the count: a replicas field would reset it on every `kubectl apply -k`.
    assert "replicas" not in deploy["spec"]


# --- the Redis component ---------------------------------------------------------------------

def test_redis_component_adds_redis_for_the_state_url(with_redis, base):
    redis = one(with_redis, "Deployment", "gateway-redis")
    service = one(with_redis, "Service", "gateway-redis")
    assert selects(service["spec"]["selector"], pod_labels(redis))
    # The gateway's Service must not send clients to Redis, nor Redis's to the gateway.
    gateway = one(with_redis, "Service", "gateway")
    assert not selects(gateway["spec"]["selector"], pod_labels(redis))
    assert not selects(service["spec"]["selector"],
                       pod_labels(one(with_redis, "Deployment", "gateway")))
    # The URL in gateway.yaml's `state:` line names this Service and its port.
    _, config = gateway_config(with_redis)
    url = config["state"]["redis"]
    host_port = url.removeprefix("redis://").split("/", 1)[0]
    assert host_port == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    # ...and without the component, the line stays commented out.
    assert "state" not in gateway_config(base)[1]


def test_redis_only_admits_the_gateway(with_redis):
    policy = one(with_redis, "NetworkPolicy", "gateway-redis")
    redis = one(with_redis, "Deployment", "gateway-redis")
    gateway = one(with_redis, "Deployment", "gateway")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], pod_labels(gateway))
    assert not selects(source["podSelector"]["matchLabels"], pod_labels(redis))


def test_redis_is_locked_down_and_keeps_nothing(with_redis):
    redis = one(with_redis, "Deployment", "gateway-redis")
    spec = redis["spec"]["template"]["spec"]
    cont = container(redis, "redis")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert cont["securityContext"]["readOnlyRootFilesystem"] is True
    assert cont["args"][:2] == ["--save", ""]   # no snapshots: counters are minutes' worth
    assert cont["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


def test_the_redis_config_passes_gateway_check_and_a_bad_state_url_fails(with_redis, tmp_path):
    text, config = gateway_config(with_redis)
    secrets = secret_env(with_redis)
    run = _check(text, secrets, None, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    bad = text.replace(config["state"]["redis"], "http://gateway-redis:6379/0")
    run = _check(bad, secrets, None, tmp_path)
    assert run.returncode == 1 and "state.redis: must be a redis://" in run.stdout + run.stderr


def test_the_workers_shared_directory_is_on_a_writable_volume(base):
    # `--workers N` keeps its run directory (metrics files, shared limits) under $TMPDIR;
    # the root filesystem is read-only, so $TMPDIR must be the emptyDir.
    deploy = one(base, "Deployment", "gateway")
    cont = container(deploy, "gateway")
    assert cont["securityContext"]["readOnlyRootFilesystem"] is True
    tmpdir = next((e["value"] for e in cont.get("env", []) if e["name"] == "TMPDIR"), "/tmp")
    mount = next(m for m in cont["volumeMounts"] if m["mountPath"] == tmpdir)
    volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert "emptyDir" in volume and not mount.get("readOnly")


# --- the vLLM pool component -----------------------------------------------------------------

def test_vllm_pool_component_passes_the_schemas(with_pool, validate):
    assert schema_problems(validate, with_pool) == []


def test_vllm_pool_is_a_headless_service_of_ready_vllm_pods(with_pool, base):
    vllm = one(with_pool, "Deployment", "vllm-pool")
    service = one(with_pool, "Service", "vllm-pool")
    # Headless: DNS answers with each ready pod's address, which the gateway resolves.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    assert selects(service["spec"]["selector"], pod_labels(vllm))
    assert selects(vllm["spec"]["selector"]["matchLabels"], pod_labels(vllm))
    # Neither Service sends to the other's pods.
    gateway = one(with_pool, "Deployment", "gateway")
    assert not selects(service["spec"]["selector"], pod_labels(gateway))
    assert not selects(one(with_pool, "Service", "gateway")["spec"]["selector"],
                       pod_labels(vllm))
    cont = container(vllm, "vllm")
    [port] = service["spec"]["ports"]
    assert port_number(cont, port["targetPort"]) == port["port"] == 8000
    assert cont["readinessProbe"]["httpGet"]["path"] == "/health"
    assert [o for o in base if o["metadata"]["name"] == "vllm-pool"] == []


def test_the_gateway_discovers_the_pool_by_the_services_name(with_pool, base, tmp_path):
    from urllib.parse import urlsplit
    text, config = gateway_config(with_pool)
    service = one(with_pool, "Service", "vllm-pool")
    pool = config["backends"]["vllm-pool"]
    assert pool["discover"]["dns"] is True and pool["discover"]["interval_s"] > 0
    url = urlsplit(pool["url"])
    assert (url.hostname, url.port) == (service["metadata"]["name"],
                                        service["spec"]["ports"][0]["port"])
    vllm = container(one(with_pool, "Deployment", "vllm-pool"), "vllm")
    served = vllm["args"][vllm["args"].index("--served-model-name") + 1]
    assert served in pool["models"].values()
    run = _check(text, secret_env(with_pool), None, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vllm-pool" not in gateway_config(base)[1]["backends"]
