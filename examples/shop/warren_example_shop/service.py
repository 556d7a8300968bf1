"""The shop's service: it handles ``orders.create`` and answers the sender.

Run it with ``warren serve warren_example_shop.service:service``, or beside Warren's
own services with ``warren up --service shop=warren_example_shop.service:service``.
A client sends ``{"type": "orders.create", "data": {"item": "mug", "quantity": 2}}`` and
receives ``orders.create.done`` with the order, or ``orders.create.failed`` saying why.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from warren.service import CommandContext, CommandError, Service
from warren_example_shop.settings import shop_settings
from warren_example_shop.store import PRICES_CENTS, add_order

MAX_QUANTITY: Final = 100

service = Service("shop")


@service.command(
    "orders.create",
    description="Order an item: {item, quantity}; the shop sells " + ", ".join(PRICES_CENTS),
)
async def create_order(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any]:
    item, quantity = data.get("item"), data.get("quantity", 1)
    if not isinstance(item, str) or item not in PRICES_CENTS:
        raise CommandError("unknown_item", f"item must be one of {', '.join(PRICES_CENTS)}")
    if type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        raise CommandError("invalid_quantity",
                           f"quantity must be an integer from 1 to {MAX_QUANTITY}")
    # SQLite blocks: off the event loop, which goes on serving other commands. Keyed by
    # the command id, so a command handled twice places one order.
    order = await asyncio.to_thread(
        add_order, shop_settings().database, ctx.sender, item, quantity, ctx.command_id
    )
    ctx.log.info("order placed", extra={"order_id": order.id, "customer": order.customer})
    return {"order_id": order.id, "item": order.item, "quantity": order.quantity,
            "amount": f"{order.amount:.2f}", "placed": order.placed}
