"""The cluster itself, and where Warren's durable queues live on it.

Warren's own declarations (shared/messaging/broker.py, services/runner/dispatch.py),
made through HAProxy, as services make them: work and runs queues, and the chat claims
and session queues, are quorum queues with a replica on every node, the history stream
too; a connection whose node stops moves through HAProxy to a live one with its
consumer; and the dead letters, classic queues, never stop a service from starting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from services.runner.dispatch import declare_runs_queue
from shared.config import HistorySettings
from shared.messaging.broker import (
    connect,
    declare_chat_claims_queue,
    declare_history_stream,
    declare_quorum_queue,
    declare_session_queue,
    declare_work_queue,
)
from shared.messaging.names import (
    CHAT_CLAIMS_QUEUE,
    HISTORY_STREAM,
    RUNNER_RUNS_QUEUE,
    Command,
    chat_session_queue_name,
    dead_letter_queue_name,
    work_queue_name,
)
from tests.support.cluster import RabbitCluster
from tests.support.rabbit import reconnected

WAIT_S = 60.0
# From the start of a node's orderly stop (a few seconds) to the connection restored.
MOVE_S = 30.0


def test_three_nodes_of_its_own_behind_haproxy(rabbit_cluster: RabbitCluster) -> None:
    nodes = {n.node for n in rabbit_cluster.nodes}
    assert len(nodes) == 3
    assert rabbit_cluster.running_nodes() == nodes
    # Never the machine's shared broker: other names, and a cookie of the cluster's own.
    assert not any(name.startswith("rabbit@") for name in nodes)
    assert all(n.cookie for n in rabbit_cluster.nodes)
    assert set(rabbit_cluster.proxy.states().values()) == {"UP"}
    status = rabbit_cluster.ctl("environment")
    assert "{cluster_partition_handling,pause_minority}" in status


async def test_work_runs_chat_queues_and_history_are_replicated_on_every_node(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, cluster_url: str
) -> None:
    nodes = tuple(sorted(n.node for n in rabbit_cluster.nodes))
    connection = await connect(cluster_url, name="warren-test-declare")
    try:
        channel = await connection.channel()
        for command in Command:
            await declare_work_queue(channel, command)
        await declare_runs_queue(channel)
        await declare_chat_claims_queue(channel)
        assert isinstance(channel, AbstractRobustChannel)
        await declare_session_queue(channel, "alice")
        await declare_history_stream(connection, HistorySettings())
    finally:
        await connection.close()

    chat = [CHAT_CLAIMS_QUEUE, chat_session_queue_name("alice")]
    replicated = [work_queue_name(c) for c in Command] + [RUNNER_RUNS_QUEUE, *chat]
    for queue in [*replicated, HISTORY_STREAM]:
        replicas = rabbit_cluster.replicas(cluster_vhost, queue)
        assert replicas.members == nodes, replicas
        assert replicas.online == nodes, replicas
    assert {rabbit_cluster.replicas(cluster_vhost, q).type for q in replicated} == {"quorum"}
    assert rabbit_cluster.replicas(cluster_vhost, HISTORY_STREAM).type == "stream"
    # The dead letters are classic queues, on one node only: best effort
    # (docs/reliability.md 2.6).
    dead = rabbit_cluster.replicas(cluster_vhost, dead_letter_queue_name(RUNNER_RUNS_QUEUE))
    assert dead.type == "classic"


async def test_a_group_size_given_later_would_refuse_every_declaration(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, cluster_url: str
) -> None:
    """Why Warren leaves ``x-quorum-initial-group-size`` to RabbitMQ: the argument is part
    of a quorum queue's identity, so a deployment whose queues exist could never add or
    change it (each service's declaration would be refused, and it would not start)."""
    connection = await aio_pika.connect(cluster_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            "warren.test.sized", durable=True, arguments={"x-queue-type": "quorum"}
        )
        try:
            await channel.declare_queue(
                "warren.test.sized", durable=True,
                arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 3},
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            assert "x-quorum-initial-group-size" in str(exc)
        else:
            raise AssertionError("RabbitMQ accepted a new group size for an existing queue")
    finally:
        await connection.close()


async def test_a_connection_whose_node_stops_moves_through_haproxy_with_its_consumer(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, cluster_url: str
) -> None:
    async def declare(channel: AbstractRobustChannel) -> AbstractQueue:
        return await channel.declare_queue(
            "warren.test.moving", durable=True, arguments={"x-queue-type": "quorum"}
        )

    await _moves_with_its_consumer(rabbit_cluster, cluster_vhost, cluster_url, declare)


async def test_a_work_queue_consumer_whose_node_stops_moves_with_it(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, cluster_url: str
) -> None:
    async def declare(channel: AbstractRobustChannel) -> AbstractQueue:
        # Its `.dead` queue is declared by this connection, so it lives on its node.
        return await declare_quorum_queue(channel, "warren.test.moving")

    await _moves_with_its_consumer(rabbit_cluster, cluster_vhost, cluster_url, declare)


async def _moves_with_its_consumer(
    cluster: RabbitCluster, vhost: str, url: str,
    declare: Callable[[AbstractRobustChannel], Awaitable[AbstractQueue]],
) -> None:
    """Consume through HAProxy, stop the connection's node: the connection reconnects
    through HAProxy to another node and its consumer receives again."""
    name = "warren-test-mover"
    # A short pause between failed rounds, so that a refused restore is retried often.
    connection = await connect(url, name=name, max_reconnect_interval=1.0)
    try:
        channel = await connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        queue = await declare(channel)
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                received.put_nowait(message.body)

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=queue.name)
        assert await asyncio.wait_for(received.get(), WAIT_S) == b"before"

        node = await asyncio.to_thread(cluster.node_of, vhost, name)
        moved = reconnected(connection)
        stopped_at = time.monotonic()
        await asyncio.to_thread(cluster.stop, node)
        await asyncio.wait_for(moved, MOVE_S)
        print(f"\nreconnected through HAProxy {time.monotonic() - stopped_at:.2f} s after "
              "the stop began (the stop itself takes seconds)")

        assert await asyncio.to_thread(cluster.node_of, vhost, name) != node
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        assert await asyncio.wait_for(received.get(), WAIT_S) == b"after"
    finally:
        await connection.close()


async def test_a_work_queue_is_declared_while_the_node_of_its_dead_letters_is_down(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, cluster_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dead letters are best effort on a cluster: a service that starts while the node of
    its classic ``.dead`` queue is down starts all the same, and its work queue works."""
    cluster, vhost, name = rabbit_cluster, cluster_vhost, "warren.test.work"
    node = cluster.nodes[0].node
    placer = await connect(cluster.node(node).vhost_url(vhost), name="warren-test-placer")
    async with placer:
        await declare_quorum_queue(await placer.channel(), name)
    assert await asyncio.to_thread(cluster.home, vhost, dead_letter_queue_name(name)) == node
    await asyncio.to_thread(cluster.stop, node)

    connection = await connect(cluster_url, name="warren-test-starter")
    try:
        channel = await connection.channel()
        queue = await declare_quorum_queue(channel, name)
        assert "a dead-letter queue is unavailable" in caplog.text  # refused, and let be
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                if not received.done():
                    received.set_result(message.body)

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"work"), routing_key=name)
        assert await asyncio.wait_for(received, WAIT_S) == b"work"
    finally:
        await connection.close()
