"""The children ``warren up`` starts: command, environment, port and readiness URL of each.

Pure: the ports, the Cat's address and the interpreter are decided before and passed in,
so the plan can be checked without starting anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.supervisor.settings import EDGE, RELAY, RUNNER, Placement, UpSettings


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str  # "edge-1": log prefix, and the base of its instance id
    kind: str  # "edge", "relay", "runner", "excel", "cat", or "service" (the user's own)
    tier: int  # started in ascending tiers, stopped in descending ones
    argv: tuple[str, ...]
    env: Mapping[str, str]  # set on top of the supervisor's own environment
    port: int
    ready_url: str  # 200 means ready
    required: bool = True  # a required child that does not get ready aborts ``warren up``
    cwd: Path | None = None
    log_file: Path | None = None  # output goes there instead of the terminal (the Cat's)
    # Descriptors handed over to the child: the supervisor closes its copies once the
    # child has started (the local Cat's listening socket).
    pass_fds: tuple[int, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class CatPlan:
    """The Cat the relays use; ``local`` when ``warren up`` starts it itself."""

    url: str
    origin: str  # "configured", "default", "local" or "none"
    protocol: str | None = None  # forced on the relays when known


def host_id(hostname: str) -> str:
    """The host part of instance ids: a name (``[A-Za-z0-9_-]``) from the machine's name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", hostname).strip("-")[:40] or "host"


def base_url(placement: Placement, port: int) -> str:
    return f"http://{placement.probe_host}:{port}"


def service_specs(
    settings: UpSettings,
    ports: Mapping[str, list[int]],
    cat: CatPlan,
    python: str,
    host: str,
    relay_api_key: str | None = None,
) -> list[ChildSpec]:
    """Every replica of the four services, in start order.

    ``relay_api_key``: the service key the relays take for ``POST /send``, when ``warren
    up`` made one (a configured key reaches them with the rest of the environment).
    """
    edge = settings.placement(EDGE)
    edge_urls = [base_url(edge, port) for port in ports[EDGE.name]]
    relay = settings.placement(RELAY)
    relay_urls = [base_url(relay, port) for port in ports[RELAY.name]]
    specs: list[ChildSpec] = []
    for placement in settings.placements:
        kind = placement.kind
        for index, port in enumerate(ports[kind.name]):
            name = f"{kind.name}-{index + 1}"
            env = {
                "PYTHONUNBUFFERED": "1",  # log lines reach the supervisor as they are written
                "WARREN_INSTANCE_ID": f"{name}-{host}",
                f"WARREN_{kind.prefix}_HOST": placement.host,
                f"WARREN_{kind.prefix}_PORT": str(port),
            }
            if kind is RELAY:
                env["WARREN_CAT_URL"] = cat.url
                if cat.protocol is not None:
                    env["WARREN_CAT_PROTOCOL"] = cat.protocol
                if relay_api_key is not None:
                    env["WARREN_RELAY_API_KEY"] = relay_api_key
            elif kind is EDGE:
                env["WARREN_EDGE_RELAY_URLS"] = ",".join(relay_urls)
            elif kind is RUNNER:
                # The http_probe job gets something to probe: the first edge.
                env["WARREN_RUNNER_HTTP_JOB_URL"] = settings.runner_http_job_url or edge_urls[0]
            specs.append(
                ChildSpec(
                    name=name,
                    kind=kind.name,
                    tier=kind.tier,
                    argv=(python, "-m", kind.module),
                    env=env,
                    port=port,
                    ready_url=f"{base_url(placement, port)}/readyz",
                )
            )
    return specs


def user_service_specs(
    settings: UpSettings, ports: Mapping[str, list[int]], python: str, host: str
) -> list[ChildSpec]:
    """The user's own services, each ``warren serve <reference>``, probed on its
    ``/readyz`` like Warren's services and stopped after the edges."""
    specs = []
    for service in settings.services:
        placement = service.placement
        port = ports[placement.kind.name][0]
        prefix = placement.kind.prefix
        specs.append(ChildSpec(
            name=service.name,
            kind="service",
            tier=placement.kind.tier,
            argv=(python, "-m", "services.cli", "serve", service.reference),
            env={
                "PYTHONUNBUFFERED": "1",
                "WARREN_INSTANCE_ID": f"{service.name}-{host}",
                f"WARREN_{prefix}_HOST": placement.host,
                f"WARREN_{prefix}_PORT": str(port),
            },
            port=port,
            ready_url=f"{base_url(placement, port)}/readyz",
        ))
    return specs
