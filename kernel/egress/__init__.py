"""Outbound HTTP that a tenant can steer, refused from non-public addresses (see ``client``)."""

from __future__ import annotations

from kernel.egress.addresses import AddressPolicy, literal_address
from kernel.egress.client import EgressClient, EgressFailed, EgressRefused, EgressResponse, PinnedTransport
from kernel.egress.resolver import NameserverResolver, Resolver, SystemResolver, resolver_for

__all__ = [
    "AddressPolicy",
    "EgressClient",
    "EgressFailed",
    "EgressRefused",
    "EgressResponse",
    "NameserverResolver",
    "PinnedTransport",
    "Resolver",
    "SystemResolver",
    "literal_address",
    "resolver_for",
]
