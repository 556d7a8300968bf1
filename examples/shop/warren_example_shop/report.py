"""A report: the shop's orders, from its own database, streamed row by row."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Any

from warren import Column, ColumnType, Param, Report, ReportContext, Table
from warren_example_shop.settings import shop_settings
from warren_example_shop.store import connect, count_orders, iter_orders

COLUMNS = (
    Column("id", ColumnType.INTEGER),
    Column("customer"),
    Column("item"),
    Column("quantity", ColumnType.INTEGER),
    Column("amount", ColumnType.NUMBER, number_format="#,##0.00"),
    Column("placed", ColumnType.DATE),
)


def orders(params: dict[str, Any], ctx: ReportContext) -> Table:
    customer: str | None = params["customer"]
    connection = connect(shop_settings().database)
    total = count_orders(connection, customer)

    def rows() -> Iterator[Sequence[Any]]:
        # The worker reads this while it writes the sheet: one order in memory at a time.
        with closing(connection):
            for order in iter_orders(connection, customer):
                yield (order.id, order.customer, order.item, order.quantity, order.amount,
                       order.placed)

    return Table(COLUMNS, rows(), total=total)


ORDERS = Report(
    name="shop_orders",
    description="The shop's orders, oldest first.",
    build=orders,
    params={
        "customer": Param("str", "only this customer's orders", default=None, max_length=64),
    },
)
