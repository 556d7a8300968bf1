"""The broker connection's records name the address lost, each address tried and the one
that took over, never with its password (shared/messaging/broker.py, failover.py).

The attempt itself is replaced (the seam is aio-pika's own per-attempt method, which
``FailoverConnection`` wraps in a round); the round, the callbacks and the records are
the real ones. Reconnecting for real, through a proxy that is cut, is
tests/integration/test_broker_connection_log.py and test_broker_addresses.py.
"""

from __future__ import annotations

import logging

import pytest
from aio_pika import RobustConnection

from shared.messaging.broker import ConnectionWatch, broker_address, broker_addresses
from shared.messaging.failover import FailoverConnection

PASSWORD = "s3cret-pw"
FIRST = f"amqp://warren:{PASSWORD}@rabbit-0:5672/prod"
SECOND = f"amqp://warren:{PASSWORD}@rabbit-1:5672/prod"


async def refuse_rabbit_0(self: RobustConnection) -> None:
    """aio-pika's attempt at ``self.url``: rabbit-0 is down, rabbit-1 answers."""
    if self.url.host == "rabbit-0":
        raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.1', 5672)")


async def test_a_move_names_the_address_lost_each_one_tried_and_the_one_taken(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(RobustConnection, "_RobustConnection__connect_transport", refuse_rabbit_0)
    caplog.set_level(logging.DEBUG, logger="shared.messaging")
    connection = FailoverConnection([FIRST, SECOND])
    ConnectionWatch(connection, name="warren-edge", alert_after_s=60)
    try:
        # As aio-pika does: the loss, the reconnect loop's round, the restore.
        await connection.close_callbacks(ConnectionResetError("connection reset by peer"))
        await connection._RobustConnection__connect_transport()
        await connection.reconnect_callbacks()
    finally:
        await connection.close()

    said = [(r.levelname, r.getMessage().partition(" after")[0], getattr(r, "broker", None))
            for r in caplog.records if r.name.startswith("shared.messaging")]
    assert said == [
        ("WARNING", "broker connection lost; reconnecting", "amqp://rabbit-0:5672/prod"),
        ("DEBUG", "broker address did not answer", "amqp://rabbit-0:5672/prod"),
        ("INFO", "broker reconnected", "amqp://rabbit-1:5672/prod"),
    ]
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
        assert not any(PASSWORD in str(value) for value in vars(record).values()), record


async def test_the_outage_alert_lists_every_address_without_passwords() -> None:
    connection = FailoverConnection([FIRST, SECOND])
    try:
        assert broker_addresses(connection) == (
            "amqp://rabbit-0:5672/prod, amqp://rabbit-1:5672/prod"
        )
        assert broker_address(connection) == "amqp://rabbit-0:5672/prod"
    finally:
        await connection.close()
