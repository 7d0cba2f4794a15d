"""Which addresses an outbound call may reach.

Only globally routable unicast addresses, unless the operator allowlisted a network
(``BUSINESSOS_EGRESS_ALLOW_NETWORKS``). IPv6 forms that carry an IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64, 6to4) are judged by that IPv4 address too, so ``[::ffff:127.0.0.1]`` or
``[64:ff9b::7f00:1]`` are refused like ``127.0.0.1``. Host names that look numeric (``2130706433``,
``0x7f.1``, ``0177.0.0.1``, ``127.1``) are read the way the C resolver reads them and judged as the
address they mean; a numeric-looking name that is not a valid address is refused outright.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

__all__ = ["Address", "AddressPolicy", "literal_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named explicitly (not only through ``is_global``) so that a Python whose tables differ cannot
# quietly open one of them.
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
        "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.IGNORECASE)


def literal_address(host: str) -> Address | None:
    """The address ``host`` names when it is an IP literal in any spelling, else ``None``.

    Raises ``ValueError`` for a numeric-looking host that is no valid address and for IPv6 zone
    ids (a zone picks an interface, which no outbound call should do)."""
    host = host.strip("[]")
    if "%" in host:
        raise ValueError("an IPv6 zone id is not allowed")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:  # inet_aton accepts what the C library accepts: decimal, octal, hex, short forms
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise ValueError("is a numeric host that is not a valid IPv4 address") from None
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or int(address) >> 32 == 0:  # NAT64 or IPv4-compatible: the low 32 bits
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


class AddressPolicy:
    """Decides whether one resolved address may be connected to."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allow_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def _allowed(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.allow_networks)

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is refused, or ``None`` when it may be reached."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                return "an IPv6 zone id is not allowed"
            inner = _embedded_v4(address)
            if address.ipv4_mapped is not None and inner is not None:
                return self.refusal(inner)  # a mapped address is the IPv4 address itself
            if self._allowed(address):
                return None
            if inner is not None and self.refusal(inner) is not None:
                return f"{address} embeds the non-public IPv4 address {inner}"
            if any(address in n for n in _FORBIDDEN_V6):
                return f"{address} is not a public address"
        else:
            if self._allowed(address):
                return None
            if any(address in n for n in _FORBIDDEN_V4):
                return f"{address} is not a public address"
        if (
            not address.is_global or address.is_multicast or address.is_reserved
            or address.is_unspecified or address.is_loopback or address.is_link_local
        ):
            return f"{address} is not a public address"
        return None
