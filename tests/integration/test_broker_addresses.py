"""Several broker addresses (``WARREN_AMQP_URL`` as a list): tried in turn at start-up and
after a loss, with a capped backoff between rounds that all failed
(shared/messaging/failover.py).

A dead address is a closed loopback port (refused at once); a live one is the shared
broker, directly or through a TCP proxy that the test cuts. The broker itself is never
touched.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.messaging.broker import BrokerUnavailable, connect
from shared.messaging.failover import FailoverConnection
from tests.support.private_broker import free_port
from tests.support.rabbit import reconnected
from tests.support.tcp_proxy import TcpProxy

WAIT_S = 30.0


def port_of(connection: AbstractRobustConnection) -> int | None:
    """The port of the address the connection is on now."""
    assert isinstance(connection, FailoverConnection)
    return connection.url.port


def at_port(amqp_url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    credentials = parts.netloc.rpartition("@")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    started = [await TcpProxy("127.0.0.1", 5672).start() for _ in range(2)]
    yield started
    for proxy in started:
        await proxy.close()


async def test_a_dead_first_address_is_passed_over_at_start_up(amqp_url: str) -> None:
    dead = at_port(amqp_url, free_port())
    connection = await connect(f"{dead},{amqp_url}", name="warren-test-addresses", timeout=10)
    try:
        assert port_of(connection) == urllib.parse.urlsplit(amqp_url).port
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name
    finally:
        await connection.close()


async def test_start_up_fails_fast_naming_every_address_when_none_answers(amqp_url: str) -> None:
    dead = [at_port(amqp_url, free_port()) for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as refused:
        await connect(dead, name="warren-test-addresses", timeout=10)
    # One round of refused connections, not the whole timeout.
    assert time.monotonic() - started < 5
    message = str(refused.value)
    for url in dead:
        assert str(urllib.parse.urlsplit(url).port) in message
    assert "guest:guest" not in message


async def test_after_a_loss_the_connection_moves_to_the_next_address_and_restores(
    amqp_url: str, proxies: list[TcpProxy]
) -> None:
    first, second = proxies
    connection = await connect(
        [at_port(amqp_url, first.port), at_port(amqp_url, second.port)],
        name="warren-test-addresses", reconnect_interval=0.1,
    )
    try:
        assert port_of(connection) == first.port
        # A consumer on a robust channel, as every service has: restored after the move.
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            received.put_nowait(message.body)

        await queue.consume(on_message, no_ack=True)
        moved = reconnected(connection)

        first.cut()  # the first address's node is gone: refused from now on
        await asyncio.wait_for(moved, WAIT_S)

        assert port_of(connection) == second.port
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        assert await asyncio.wait_for(received.get(), WAIT_S) == b"after"
    finally:
        await connection.close()


async def test_rounds_that_all_fail_back_off_up_to_the_cap(amqp_url: str) -> None:
    dead = [at_port(amqp_url, free_port()) for _ in range(2)]
    # Not failing fast: the reconnect loop keeps trying, as after a loss.
    connection = FailoverConnection(
        dead, reconnect_interval=0.05, max_reconnect_interval=0.2, fail_fast=False
    )
    attempt = asyncio.ensure_future(connection.connect(timeout=1))
    try:
        pauses: dict[int, float] = {}
        deadline = time.monotonic() + WAIT_S
        while connection.failed_rounds < 6:
            assert time.monotonic() < deadline, f"pauses after each failed round: {pauses}"
            pauses[connection.failed_rounds] = connection.reconnect_interval
            await asyncio.sleep(0.005)
        pauses[connection.failed_rounds] = connection.reconnect_interval
        # Doubling from reconnect_interval, then held at the cap.
        expected = {0: 0.05, 1: 0.05, 2: 0.1, 3: 0.2, 4: 0.2, 5: 0.2, 6: 0.2}
        assert {n: expected[n] for n in pauses} == pauses
        assert set(connection.failures) == set(connection.addresses)
        assert not attempt.done()
    finally:
        attempt.cancel()
        await connection.close()
