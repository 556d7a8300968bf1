"""A user's service as a user writes it (warren.service), for tests that run it as a
process: ``warren serve tests.support.user_service:service``."""

from __future__ import annotations

import asyncio
from typing import Any

from warren.service import CommandContext, CommandError, Service

service = Service("orders")


@service.command("orders.create", description="Create an order")
async def create(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
    qty = data.get("qty", 0)
    if not isinstance(qty, int) or qty <= 0:
        raise CommandError("invalid_qty", "qty must be a positive integer")
    ctx.log.info("order created", extra={"qty": qty})
    return {"order_id": 42, "qty": qty}


@service.command("orders.slow", description="An order that takes a while: drained on stop")
async def slow(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
    ctx.log.info("slow order started")
    await asyncio.sleep(float(data.get("seconds", 1.0)))  # the handler's own work
    return {"slept": True}
