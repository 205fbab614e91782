"""The config's vocabulary: frozen dataclasses, `backend()`, ConfigError and its problems.

Everything outside the config_* modules sees only these objects, never the raw dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Mapping

from .kinds import KINDS, normalise_root

USER_AGENT = "llm-edge-gateway"
STRATEGIES = ("weighted", "least_busy", "prefix_affinity", "session_affinity", "least_latency")
# The request classes, first served first (limits/classes.py reads requests into them).
PRIORITIES = ("interactive", "standard", "batch")
# Kinds whose runtimes order their own queue by a request's `priority` (engine_priority).
ENGINE_PRIORITY_KINDS = ("vllm", "sglang")

# While loading, problems travel as (key path, message) pairs;
# config_messages turns them into "key.path: message" lines at the end.
Problem = tuple[tuple, str]


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 3.0
    first_byte_s: float = 60.0
    idle_s: float = 60.0


# A discovered member's name: its configured backend's, then the address it resolved to
# (`vllm-pool/10.0.0.5:8000`). Configured names cannot hold the separator (schema.py).
MEMBER_SEP = "/"


def backend_label(name: str) -> str:
    """The configured backend of a backend or member name: the metric label `backend`."""
    return name.partition(MEMBER_SEP)[0]


@dataclass(frozen=True)
class DiscoverConfig:
    """`discover:` every A/AAAA record of the URL's host is a member (gateway/discovery/)."""
    dns: bool = False
    interval_s: float = 5
    nameservers: tuple[str, ...] = ()   # "ip" or "ip:port" ("[v6]:port"); () = the system's


@dataclass(frozen=True)
class WakeConfig:
    """`wake:` called once when a request starts waiting on the backend's cold pool."""
    url: str
    method: str = "POST"


@dataclass(frozen=True)
class BackendConfig:
    name: str
    kind: str
    url: str = ""                               # server root: no trailing slash, no /v1
    api_key: str | None = None
    weight: float = 1.0
    models: Mapping[str, str] | None = None     # public name -> runtime id; None = discover
    max_concurrency: int | None = None
    capabilities: Mapping[str, bool] = field(default_factory=dict)   # resolved: kind + overrides
    headers: Mapping[str, str] = field(default_factory=dict)
    health_path: str = ""
    timeouts: Timeouts = Timeouts()
    engine_priority: bool = False               # the class as the body's `priority` (vllm, sglang)
    discover: DiscoverConfig | None = None      # set: members come from DNS
    wake: WakeConfig | None = None
    member_of: str | None = None                # a discovered member: its configured backend

    @property
    def label(self) -> str:
        """The configured name: the metric label, whatever member this is."""
        return self.member_of or self.name

    @property
    def discovers(self) -> bool:
        return self.discover is not None and self.discover.dns

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    @cached_property
    def request_headers(self) -> Mapping[str, str]:
        """The headers every request to this backend carries (built once, not per request):
        a default User-Agent, its own headers, then the fixed ones, which win."""
        fixed = {"Content-Type": "application/json",
                 "Accept": "application/json, text/event-stream",
                 # Bodies are relayed and rewritten as bytes: they must come uncompressed.
                 "Accept-Encoding": "identity"}
        if self.api_key:
            fixed["Authorization"] = f"Bearer {self.api_key}"
        taken = {name.lower() for name in fixed}
        own = {k: v for k, v in self.headers.items() if k.lower() not in taken}
        headers = {} if any(k.lower() == "user-agent" for k in own) else {
            "User-Agent": USER_AGENT}
        headers.update(own)
        headers.update(fixed)
        return MappingProxyType(headers)

    def model_id(self, public: str) -> str:
        """The id this runtime knows the public model by (the same without a models map)."""
        models = self.models
        return public if models is None else models.get(public, public)

    def identity(self) -> tuple[str, str]:
        """What must stay equal for a reload to keep this backend's runtime state."""
        return (self.kind, self.url)


def backend(name: str, kind: str, url: str = "", *, models=None,
            capabilities: Mapping[str, bool] | None = None,
            health_path: str | None = None, headers: Mapping[str, str] | None = None,
            **kw) -> BackendConfig:
    """A BackendConfig with the kind's defaults resolved (for the loader and for tests)."""
    spec = KINDS[kind]
    caps = dict(spec.capabilities)
    caps.update(capabilities or {})
    if isinstance(models, (list, tuple)):
        models = {m: m for m in models}
    return BackendConfig(
        name=name, kind=kind, url=normalise_root(url) if url else "",
        models=MappingProxyType(dict(models)) if models is not None else None,
        capabilities=MappingProxyType(caps),
        health_path=spec.health_path if health_path is None else health_path,
        headers=MappingProxyType(dict(headers or {})), **kw)


@dataclass(frozen=True)
class Fallback:
    backend: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class RouteConfig:
    strategy: str = "weighted"
    fallbacks: tuple[Fallback, ...] = ()
    max_output_tokens: int | None = None   # sent when a request asks for none; its ceiling


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: tuple[str, ...] = ()
    max_body_mb: float = 16
    drain_s: float = 30
    admin_key: str | None = None
    client_idle_s: float = 30      # a stream's client that reads nothing this long is cut

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 10
    timeout_s: float = 2
    unhealthy_after: int = 3
    healthy_after: int = 2
    cooldown_s: float = 5          # passive ejection: first cooldown, doubled per ejection
    max_cooldown_s: float = 120


@dataclass(frozen=True)
class StateConfig:
    redis: str | None = None       # shared rate limits across replicas; None = local only
    sqlite: str | None = None      # a file: one server's lasting state (budget counts,
                                   # responses kept for stateless runtimes)


@dataclass(frozen=True)
class ResponsesConfig:
    """Responses the gateway stores itself, for runtimes whose Responses keep no state."""
    ttl_s: float = 86400           # a stored response is forgotten this long after it was made
    max_stored: int = 10000        # past this many, the oldest are forgotten first


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 2
    deadline_s: float = 120


@dataclass(frozen=True)
class QueueConfig:
    """Where a request waits when every backend of its pool is at max_concurrency."""
    max_wait_s: float = 10
    max_size: int = 1000
    promote_after_s: float = 30    # a waiting request moves up one class per this long


@dataclass(frozen=True)
class EngineConfig:
    """Reading each runtime's own load (health/scraper.py) and when a backend is saturated."""
    interval_s: float = 1            # scrape every backend whose kind exposes load this often
    stale_after_s: float = 3         # a reading older than this (since its scrape) is ignored
    max_queue: int = 8               # saturated past this many requests waiting in the runtime
    max_kv_usage: float = 0.9        # ...or past this KV-cache usage (0..1)


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces over OTLP/HTTP; the section absent means no tracing at all."""
    otlp_endpoint: str = "http://127.0.0.1:4318"   # the collector; /v1/traces is added
    sample_ratio: float = 1.0                      # of new traces; a client's flag wins
    service_name: str = "llm-gateway"
    # Not in the schema: tests shorten them.
    export_delay_s: float = 1.0                    # the batch processor's schedule
    export_timeout_s: float = 3.0                  # one export, retries included
    queue_size: int = 2048                         # spans waiting for the batch thread

    @property
    def traces_url(self) -> str:
        url = self.otlp_endpoint.rstrip("/")
        return url if url.endswith("/v1/traces") else url + "/v1/traces"


@dataclass(frozen=True)
class Budget:
    """A key's tokens (prompt + completion) per UTC day and calendar month; None = no cap."""
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    priority: str = "standard"          # its class: one of PRIORITIES
    share: float = 1                    # its weight against the keys of its class
    max_concurrency: int | None = None  # its requests in flight, whole server
    budget: Budget | None = None


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    health: HealthConfig = HealthConfig()
    retries: RetryConfig = RetryConfig()
    queue: QueueConfig = QueueConfig()
    auth_keys: tuple[ApiKey, ...] = ()
    engine: EngineConfig = EngineConfig()
    tracing: TracingConfig | None = None
    state: StateConfig = StateConfig()
    responses: ResponsesConfig = ResponsesConfig()

    def route(self, model: str) -> RouteConfig:
        return self.routes.get(model, DEFAULT_ROUTE)


DEFAULT_ROUTE = RouteConfig()   # a model without a `routes` entry: weighted, no fallbacks
