"""One host name's addresses, asked of DNS with dnspython's asyncio resolver.

Every A and AAAA record counts. An answer with no address (NXDOMAIN, or the name
has no A/AAAA record) is an answer: no members. Anything else (a timeout, a refused
query, SERVFAIL, no resolver configured) is a failed lookup, `LookupFailed`, after
which the caller keeps what it had.
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from ..config.schema import nameserver_address


class LookupFailed(Exception):
    """No answer at all: the last members stay."""


class HostResolver:
    """Lookups of one backend's host: its `discover.nameservers`, or the system's."""

    def __init__(self, nameservers: tuple[str, ...], timeout_s: float) -> None:
        self._nameservers = nameservers
        self._timeout_s = timeout_s
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _make(self) -> dns.asyncresolver.Resolver:
        if not self._nameservers:
            try:
                resolver = dns.asyncresolver.Resolver()   # /etc/resolv.conf: search, ndots
            except dns.resolver.NoResolverConfiguration as exc:
                raise LookupFailed(f"no resolver configured: {exc}") from None
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*nameserver_address(n))
                                    for n in self._nameservers]
        resolver.lifetime = self._timeout_s
        resolver.cache = None   # each round asks again: members change with the records
        return resolver

    async def addresses(self, host: str) -> tuple[str, ...]:
        """Every address `host` resolves to (A, then AAAA); an IP literal is itself."""
        try:
            ipaddress.ip_address(host)
            return (host,)
        except ValueError:
            pass
        if self._resolver is None:
            self._resolver = self._make()
        answers = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers[0] + answers[1]   # type: ignore[operator]

    async def _query(self, host: str, rdtype: str) -> tuple[str, ...]:
        assert self._resolver is not None
        try:
            answer = await self._resolver.resolve(host, rdtype,
                                                  search=not self._nameservers)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except dns.resolver.LifetimeTimeout:
            raise LookupFailed(f"no answer within {self._timeout_s:g} s") from None
        except dns.resolver.NoNameservers:
            raise LookupFailed("every nameserver refused or failed (SERVFAIL, REFUSED)"
                               ) from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{type(exc).__name__}: {exc}") from None
        return tuple(record.address for record in answer)
