"""Name resolution for outbound calls, injectable so that tests (and operators) choose the server.

:class:`SystemResolver` asks the C library (``/etc/hosts``, then the configured DNS), the default.
:class:`NameserverResolver` asks the given DNS servers directly with dnspython
(``BUSINESSOS_EGRESS_NAMESERVERS``), for installations that want egress resolution apart from the
host's and for the test suite's local DNS server. Either returns every A and AAAA record: the
client judges all of them and connects only to one it judged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from kernel.egress.addresses import Address

__all__ = ["NameserverResolver", "Resolver", "SystemResolver", "parse_nameserver", "resolver_for"]


class Resolver(Protocol):
    """Resolves a host name to all of its addresses; an empty list means it does not resolve."""

    async def resolve(self, host: str) -> list[Address]: ...


class SystemResolver:
    """The C library's resolver (``getaddrinfo``), run in the loop's executor."""

    async def resolve(self, host: str) -> list[Address]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        found: list[Address] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]))
            if address not in found:
                found.append(address)
        return found


def parse_nameserver(value: str) -> tuple[str, int]:
    """``ip``, ``ip:port`` or ``[ipv6]:port`` as (address, port); ``ValueError`` otherwise."""
    value = value.strip()
    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif value.count(":") == 1:
        host, _, raw = value.partition(":")
        port = int(raw)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return str(ipaddress.ip_address(host)), port


class NameserverResolver:
    """Asks the given DNS servers for A and AAAA records (dnspython, no system configuration)."""

    def __init__(self, nameservers: Sequence[str], *, lifetime: float = 5.0) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [
            dns.nameserver.Do53Nameserver(address, port) for address, port in map(parse_nameserver, nameservers)
        ]
        self._resolver.lifetime = lifetime
        self._resolver.cache = None  # each call sees the answer of the moment, judged once and pinned

    async def _records(self, host: str, kind: str) -> list[Address]:
        try:
            answer = await self._resolver.resolve(host, kind, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except (dns.exception.Timeout, dns.exception.DNSException):
            return []
        return [ipaddress.ip_address(record.to_text()) for record in answer]

    async def resolve(self, host: str) -> list[Address]:
        v4, v6 = await asyncio.gather(self._records(host, "A"), self._records(host, "AAAA"))
        return v4 + v6


def resolver_for(nameservers: Sequence[str]) -> Resolver:
    """The resolver the settings ask for: the system's, or the named DNS servers."""
    return NameserverResolver(nameservers) if nameservers else SystemResolver()
