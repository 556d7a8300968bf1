"""The client's address, as seen through the reverse proxies the operator trusts.

``X-Forwarded-For`` and ``X-Real-IP`` are plain request headers: any client can write
them. Only a proxy listed in ``WARREN_TRUSTED_PROXIES`` may speak for the client behind
it. ``X-Forwarded-For`` is read from the right: each hop was appended by the hop to its
right, so the walk stops at the first address that is not a trusted proxy, and that
address is the client. Whatever lies to its left was written by the client itself.
``X-Real-IP`` is read only when the peer is trusted and sent no ``X-Forwarded-For``.

A header that does not parse never fails the request: the client is then the nearest
address known to be real (the peer, or the trusted hop that reported the garbage).
With no trusted proxies (the default) the peer's address is the client's.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final

from tornado.httputil import HTTPHeaders

from shared.config import ConfigError, Env, env_list

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Longer values are not addresses; they are not parsed at all.
MAX_HOP_LENGTH: Final = 64


def parse_address(value: str) -> IPAddress | None:
    """An address as proxies write it (also ``[v6]``, ``[v6]:port``, ``v4:port``); None if
    it is none. IPv4-mapped IPv6 addresses are returned as IPv4."""
    value = value.strip()
    if not value or len(value) > MAX_HOP_LENGTH:
        return None
    if value.startswith("["):
        value, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and _is_port(port[1:]))):
            return None
    elif value.count(":") == 1:
        value, _, port = value.partition(":")
        if not _is_port(port):
            return None
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 5


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The networks whose forwarding headers are believed (``WARREN_TRUSTED_PROXIES``)."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_env(cls, env: Env) -> TrustedProxies:
        networks = []
        for item in env_list(env, "WARREN_TRUSTED_PROXIES"):
            try:
                networks.append(ip_network(item))
            except ValueError as exc:
                raise ConfigError(
                    f"WARREN_TRUSTED_PROXIES must be comma-separated addresses or networks "
                    f"such as 10.0.0.0/8, got {item!r}: {exc}"
                ) from exc
        return cls(tuple(networks))

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client_address(self, peer: str | None, headers: HTTPHeaders) -> str | None:
        """The client's address for a request from ``peer`` with ``headers``."""
        nearest = parse_address(peer) if peer else None
        if nearest is None:
            return peer  # not an IP peer: a Unix socket
        if not self.trusts(nearest):
            return str(nearest)
        forwarded = ",".join(headers.get_list("X-Forwarded-For"))
        hops = [hop for hop in forwarded.split(",") if hop.strip()]
        if not hops:
            hops = headers.get_list("X-Real-IP")[-1:]
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                break
            nearest = address
            if not self.trusts(address):
                break
        return str(nearest)
