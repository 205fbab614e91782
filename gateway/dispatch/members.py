"""Members: the servers a `discover` backend's host name resolves to, each a backend.

A configured backend with `discover: {dns: true}` is not itself sent requests: each
address its host resolves to is a member, a `BackendState` of its own named
`<backend>/<address>:<port>` (`vllm-pool/10.0.0.5:8000`, `vllm-pool/[fd00::5]:8000`),
with the backend's config but that address in its URL. Members are in
`Gateway.states` and the route table like any backend, so health checks, passive
ejection, in-flight counts, engine scrapes, strategies, affinity, stored-response
ids and traces see them without knowing what they are. The metric label `backend` is
the configured name (`BackendConfig.label`).

`Members` holds the addresses last resolved per backend (gateway/discovery/ writes
them) and the members that left while requests still ran on them (draining: no new
requests, since the route table no longer has them; their streams finish, holding
their state). It does no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

from ..config import MEMBER_SEP, BackendConfig
from .backend import BackendState

# gateway_backend_members{state}: every member the gateway holds is in exactly one.
AVAILABLE, UNAVAILABLE, DRAINING = "available", "unavailable", "draining"
MEMBER_STATES = (AVAILABLE, UNAVAILABLE, DRAINING)


def host_of(config: BackendConfig) -> str:
    """The host name a discover backend's URL resolves (no brackets for IPv6)."""
    return urlsplit(config.url).hostname or ""


def member_config(config: BackendConfig, address: str) -> BackendConfig:
    """The config of the member at `address`: the backend's, with the address as host."""
    parts = urlsplit(config.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    userinfo, _, authority = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    headers = dict(config.headers)
    if not any(k.lower() == "host" for k in headers):
        # What the runtime was asked for before the name was resolved: its Host.
        headers["Host"] = authority
    return dataclasses.replace(
        config, name=f"{config.name}{MEMBER_SEP}{host}:{port}",
        url=urlunsplit((parts.scheme, netloc, parts.path, "", "")),
        headers=MappingProxyType(headers), member_of=config.name, discover=None)


class Members:
    """Addresses per discover backend, and the members draining after they left."""

    def __init__(self) -> None:
        self.addresses: dict[str, tuple[str, ...]] = {}
        self.draining: dict[str, BackendState] = {}

    def expand(self, backends: Mapping[str, BackendConfig]) -> Iterator[BackendConfig]:
        """Every backend requests may go to: a discover backend's members in its place,
        in the order of its last answer (none before the first)."""
        for config in backends.values():
            if not config.discovers:
                yield config
                continue
            for address in self.addresses.get(config.name, ()):
                yield member_config(config, address)

    def set(self, backend: str, addresses: Iterable[str]) -> bool:
        """Record a lookup's answer; True when the members changed."""
        new = tuple(sorted(set(addresses), key=_address_order))
        if self.addresses.get(backend) == new:
            return False
        self.addresses[backend] = new
        return True

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the addresses of backends no longer configured to discover."""
        keep = set(keep)
        for name in [n for n in self.addresses if n not in keep]:
            del self.addresses[name]

    def retire(self, left: Iterable[BackendState]) -> None:
        """Members gone from the states: those still running requests drain."""
        for state in left:
            if state.config.member_of is not None and state.in_flight > 0:
                self.draining[state.name] = state

    def sweep(self) -> list[str]:
        """Members whose last request ended stop draining; their names."""
        done = [n for n, s in self.draining.items() if s.in_flight <= 0]
        for name in done:
            del self.draining[name]
        return done

    def counts(self, backends: Iterable[str], states: Iterable[BackendState], now: float
               ) -> dict[str, dict[str, int]]:
        """Per discover backend of `backends`: its members by state, for
        gateway_backend_members (zeros before its first answer)."""
        counts: dict[str, dict[str, int]] = {
            name: dict.fromkeys(MEMBER_STATES, 0) for name in backends}
        for state in states:
            label = state.config.member_of
            if label is not None and label in counts:
                counts[label][AVAILABLE if state.available(now) else UNAVAILABLE] += 1
        for state in self.draining.values():
            label = state.config.member_of or ""
            if label in counts:
                counts[label][DRAINING] += 1
        return counts


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)
