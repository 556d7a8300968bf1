"""The shop's orders, in its own SQLite file (``SHOP_DATABASE``).

``shop-init`` creates the table and, in an empty one, a few orders to look at.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Final

from warren_example_shop.settings import SettingsError, ShopSettings

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    item TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    placed TEXT NOT NULL,  -- ISO date, as SQLite keeps dates
    -- The command that placed it: a command handled twice places one order.
    command_id TEXT UNIQUE
)
"""
#: What the shop sells, and for how many cents each.
PRICES_CENTS: Final = {"notebook": 250, "pen": 120, "mug": 800, "poster": 1500}
SEED: Final = (
    ("alice", "notebook", 3, "2024-01-05"),
    ("bob", "mug", 1, "2024-02-11"),
    ("alice", "poster", 2, "2024-03-20"),
)
#: Another process (the service, a report) may hold the file's lock for a moment.
BUSY_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    customer: str
    item: str
    quantity: int
    amount: Decimal
    placed: str


def connect(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(database, timeout=BUSY_TIMEOUT_S)


def init(database: Path) -> int:
    """Create the table; seed it if it is empty. Returns the number of orders seeded."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(database)) as connection, connection:
        connection.execute(SCHEMA)
        (count,) = connection.execute("SELECT COUNT(*) FROM orders").fetchone()
        if count:
            return 0
        connection.executemany(
            "INSERT INTO orders (customer, item, quantity, amount_cents, placed)"
            " VALUES (?, ?, ?, ?, ?)",
            [(c, item, n, PRICES_CENTS[item] * n, placed) for c, item, n, placed in SEED],
        )
        return len(SEED)


def add_order(
    database: Path, customer: str, item: str, quantity: int, command_id: str | None = None
) -> Order:
    """Record an order placed today; ``KeyError`` for an item the shop does not sell. With
    ``command_id``, the order that command placed already is returned instead of a new one
    (Warren may deliver a command again: docs/extending.md, "Your own services")."""
    cents = PRICES_CENTS[item] * quantity
    placed = date.today().isoformat()
    with closing(connect(database)) as connection, connection:
        connection.execute(
            "INSERT INTO orders (customer, item, quantity, amount_cents, placed, command_id)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (command_id) DO NOTHING",
            (customer, item, quantity, cents, placed, command_id),
        )
        if command_id is None:
            (order_id,) = connection.execute("SELECT last_insert_rowid()").fetchone()
        else:
            (order_id,) = connection.execute(
                "SELECT id FROM orders WHERE command_id = ?", (command_id,)
            ).fetchone()
        id_, who, item_, quantity_, cents_, placed_ = connection.execute(
            "SELECT id, customer, item, quantity, amount_cents, placed FROM orders WHERE id = ?",
            (order_id,),
        ).fetchone()
        return Order(id_, who, item_, quantity_, _money(cents_), placed_)


def count_orders(connection: sqlite3.Connection, customer: str | None) -> int:
    (count,) = connection.execute(
        "SELECT COUNT(*) FROM orders WHERE ? IS NULL OR customer = ?", (customer, customer)
    ).fetchone()
    return int(count)


def iter_orders(connection: sqlite3.Connection, customer: str | None) -> Iterator[Order]:
    """Orders, oldest first, read from the cursor one at a time."""
    cursor = connection.execute(
        "SELECT id, customer, item, quantity, amount_cents, placed FROM orders"
        " WHERE ? IS NULL OR customer = ? ORDER BY id",
        (customer, customer),
    )
    for id_, who, item, quantity, cents, placed in cursor:
        yield Order(id_, who, item, quantity, _money(cents), placed)


def _money(cents: int) -> Decimal:
    return Decimal(cents) / 100


def main(argv: Sequence[str] | None = None) -> None:
    """``shop-init``: create the shop's database (``SHOP_DATABASE``) with a few orders."""
    parser = argparse.ArgumentParser(
        prog="shop-init", description="Create the shop's orders table, seeded when empty."
    )
    parser.parse_args(argv)
    try:
        settings = ShopSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"shop-init: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    seeded = init(settings.database)
    print(f"{settings.database}: {seeded} orders seeded" if seeded
          else f"{settings.database}: already has orders; left as it is")
