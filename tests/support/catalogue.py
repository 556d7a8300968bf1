"""Declaring command types in the catalogue from a test, as a service would, and waiting
for an edge to know them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from shared.catalogue import Advertiser, CommandType, Offer
from shared.messaging.broker import connect
from services.ws_edge.server import EdgeServer

WAIT_S = 10.0


@asynccontextmanager
async def declared(
    amqp_url: str,
    *commands: CommandType | str,
    service: str = "test_service",
    jobs: tuple[Mapping[str, Any], ...] = (),
    reports: tuple[Mapping[str, Any], ...] = (),
    ttl_s: float = 30.0,
) -> AsyncIterator[Advertiser]:
    """Announce ``commands`` (and jobs, reports) as ``service`` until the block ends, then
    withdraw them."""
    offer = Offer(
        commands=tuple(c if isinstance(c, CommandType) else CommandType(c) for c in commands),
        jobs=jobs, reports=reports,
    )
    connection = await connect(amqp_url, name=f"warren-test-{service}")
    async with connection:
        advertiser = await Advertiser.start(
            connection, service=service, instance_id=f"{service}-{uuid.uuid4().hex[:8]}",
            offer=offer, ttl_s=ttl_s,
        )
        try:
            yield advertiser
        finally:
            await advertiser.stop()


async def known(edge: EdgeServer, *types: str) -> None:
    """Return once ``edge`` accepts every one of ``types``."""
    assert edge.deps is not None
    await edge.deps.commands.view.wait_until(lambda view: set(types) <= view.types(), WAIT_S)


async def forgotten(edge: EdgeServer, *types: str) -> None:
    """Return once ``edge`` accepts none of ``types``."""
    assert edge.deps is not None
    await edge.deps.commands.view.wait_until(lambda view: not set(types) & view.types(), WAIT_S)
