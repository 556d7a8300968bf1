"""Ports for every replica: consecutive from each service's base port, or free ones."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from shared.config import ConfigError
from services.supervisor.settings import Placement

PortCheck = Callable[[str, int], bool]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (bound as Tornado binds)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError:
                return False
    return True


def free_port(host: str) -> int:
    """A port nothing listens on now; the kernel picks it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def assign_ports(
    placements: Sequence[Placement],
    is_free: PortCheck = port_free,
    pick_free: Callable[[str], int] = free_port,
) -> dict[str, list[int]]:
    """Ports per kind name. A taken port is a :class:`ConfigError` naming the setting to change."""
    assigned: dict[str, list[int]] = {}
    used: dict[int, str] = {}
    for placement in placements:
        kind = placement.kind
        ports: list[int] = []
        for index in range(placement.replicas):
            name = f"{kind.name}-{index + 1}"
            if placement.base_port == 0:
                port = pick_free(placement.host)
                while port in used:
                    port = pick_free(placement.host)
            else:
                port = placement.base_port + index
                setting = f"WARREN_{kind.prefix}_PORT"
                if port in used:
                    raise ConfigError(
                        f"{name} would take port {port}, already given to {used[port]}: "
                        f"move {setting} (now {placement.base_port}) or use 0 for free ports"
                    )
                if not is_free(placement.host, port):
                    raise ConfigError(
                        f"port {port} on {placement.host} ({name}) is in use: set {setting} "
                        f"to another base port, or to 0 for free ports"
                    )
            used[port] = name
            ports.append(port)
        assigned[kind.name] = ports
    return assigned
