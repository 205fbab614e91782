"""The validated raw dict into the frozen Config objects."""

from __future__ import annotations

from types import MappingProxyType

from .types import (
    ApiKey, BackendConfig, Budget, Config, DiscoverConfig, EngineConfig, Fallback, HealthConfig,
    QueueConfig, ResponsesConfig, RetryConfig, RouteConfig, ServerConfig, StateConfig, Timeouts,
    TracingConfig, WakeConfig, backend,
)


def given(section: dict | None) -> dict:
    """The keys actually set; the dataclasses own every default."""
    return {k: v for k, v in (section or {}).items() if v is not None}


def build(doc: dict) -> Config:
    auth = doc.get("auth") or {}
    return Config(
        server=_server(given(doc.get("server"))),
        backends=MappingProxyType({name: _backend(name, given(raw))
                                   for name, raw in doc["backends"].items()}),
        routes=MappingProxyType({model: _route(given(raw))
                                 for model, raw in (doc.get("routes") or {}).items()}),
        health=HealthConfig(**given(doc.get("health"))),
        retries=RetryConfig(**given(doc.get("retries"))),
        queue=QueueConfig(**given(doc.get("queue"))),
        auth_keys=tuple(_api_key(given(raw)) for raw in auth.get("keys") or ()),
        engine=EngineConfig(**given(doc.get("engine"))),
        tracing=(TracingConfig(**given(doc["tracing"]))
                 if doc.get("tracing") is not None else None),
        state=StateConfig(**given(doc.get("state"))),
        responses=ResponsesConfig(**given(doc.get("responses"))),
    )


def _server(kw: dict) -> ServerConfig:
    kw["cors_origins"] = tuple(kw.get("cors_origins", ()))
    kw["admin_key"] = kw.get("admin_key") or None
    return ServerConfig(**kw)


def _backend(name: str, kw: dict) -> BackendConfig:
    kw["api_key"] = kw.get("api_key") or None   # `${KEY:-}` means no key, not an empty bearer
    if "timeouts" in kw:
        kw["timeouts"] = Timeouts(**given(kw["timeouts"]))
    if "discover" in kw:
        discover = given(kw["discover"])
        discover["nameservers"] = tuple(discover.get("nameservers", ()))
        kw["discover"] = DiscoverConfig(**discover)
    if "wake" in kw:
        kw["wake"] = WakeConfig(**given(kw["wake"]))
    return backend(name, kw.pop("kind"), kw.pop("url", ""), **kw)


def _route(kw: dict) -> RouteConfig:
    kw["fallbacks"] = tuple(Fallback(**given(f)) for f in kw.get("fallbacks", ()))
    return RouteConfig(**kw)


def _api_key(kw: dict) -> ApiKey:
    if "models" in kw:
        kw["models"] = tuple(kw["models"])
    if "budget" in kw:
        kw["budget"] = Budget(**given(kw["budget"])) if given(kw["budget"]) else None
    return ApiKey(**kw)
