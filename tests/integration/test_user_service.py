"""A user's own service (warren.service) on a real broker, a real edge and a real database:
a client's command reaches the handler and its outcome comes back; failures are told,
retried or dead-lettered as documented; a redelivery runs nothing twice; the process
serves its probes and metrics, drains on SIGTERM, and runs under ``warren serve``."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from shared.db import create_schema, make_engine, session_factory
from shared.db.commands import CommandStore
from shared.db.models import utcnow
from shared.messaging import Address, Envelope
from shared.messaging.broker import WORK_QUEUE_DELIVERY_LIMIT, Publisher, connect
from shared.messaging.names import dead_letter_queue_name, work_queue_name
from services.ws_edge.server import EdgeServer
from tests.support.catalogue import forgotten, known
from tests.support.client import Client
from tests.support.excel import http
from tests.support.logs import LogSeen
from tests.support.rabbit import depth
from tests.support.service_process import ServiceProcess
from tests.support.up import PASSWORD, WarrenUp, login, no_cat, up_env
from warren.service import (
    CommandContext,
    CommandError,
    Service,
    ServiceRuntime,
    ServiceSettings,
)

WAIT_S = 10.0
ROOT = Path(__file__).resolve().parents[2]


def service_env(amqp_url: str, database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_SERVICE_HOST": "127.0.0.1",
        "WARREN_SERVICE_PORT": "0",
        "WARREN_SERVICE_SHUTDOWN_DEADLINE_S": "5",
        "WARREN_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class ServeProcess(ServiceProcess):
    """``python -m warren.service <reference>`` in a child process."""

    module = "warren.service"
    ready_message = "service ready"


@pytest.fixture
async def run_service(
    amqp_url: str, database_url: str, edge: EdgeServer
) -> AsyncIterator[Callable[[Service], Any]]:
    """Start a service in-process, beside the edge, and wait until the edge accepts its
    types; every one started is stopped afterwards."""
    started: list[ServiceRuntime] = []

    async def start(service: Service) -> ServiceRuntime:
        settings = ServiceSettings.from_env(service_env(amqp_url, database_url), service.name)
        runtime = ServiceRuntime(service, settings, CollectorRegistry())
        started.append(runtime)
        await runtime.start()
        await known(edge, *(c.type for c in service.commands))
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(amqp_url, name="warren-test-user-service")
    async with connection:
        yield connection


async def command(client: Client, type: str, data: dict[str, Any], ref: int = 1) -> str:
    """Send a command; its id, from the edge's ack."""
    ack = await client.request({"type": type, "ref": ref, "data": data})
    assert ack["type"] == "ack", ack
    return str(ack["data"]["id"])


def counted(outcomes: list[Exception | dict[str, Any] | None]) -> tuple[Service, list[str]]:
    """An ``orders.create`` service whose n-th call raises or returns ``outcomes[n]``
    (the last one from then on); also the ids of its calls."""
    service = Service("orders")
    calls: list[str] = []

    @service.command("orders.create")
    async def create(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
        calls.append(ctx.command_id)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return service, calls


async def test_a_command_through_the_edge_gets_its_result(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    service = Service("orders")
    seen: list[tuple[str, str, dict[str, Any]]] = []

    @service.command("orders.create", description="Create an order")
    async def create(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
        seen.append((ctx.sender, ctx.command_id, data))
        await ctx.publish("orders.note", {"step": "created"})
        return {"order_id": 42}

    await run_service(service)
    client = await Client.connect(edge.port, token_for("alice"))
    command_id = await command(client, "orders.create", {"qty": 2})
    note = await client.recv()
    done = await client.recv()
    assert seen == [("alice", command_id, {"qty": 2})]
    assert (note["type"], note["from"], note["data"]) == (
        "orders.note", "service:orders", {"step": "created"}
    )
    assert (done["type"], done["from"], done["data"]) == (
        "orders.create.done", "service:orders", {"order_id": 42, "command_id": command_id}
    )


async def test_a_command_error_is_told_to_the_sender_and_not_retried(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str],
    broker: AbstractRobustConnection,
) -> None:
    service, calls = counted([CommandError("invalid_qty", "qty must be positive")])
    runtime = await run_service(service)
    client = await Client.connect(edge.port, token_for("alice"))
    command_id = await command(client, "orders.create", {"qty": 0})
    failed = await client.recv()
    assert (failed["type"], failed["data"]) == ("orders.create.failed", {
        "command_id": command_id, "code": "invalid_qty", "message": "qty must be positive",
    })
    await runtime.stop()  # whatever was returned to the queue stays there
    queue = work_queue_name("orders.create")
    assert calls == [command_id]
    assert await depth(broker, queue) == 0
    assert await depth(broker, dead_letter_queue_name(queue)) == 0


async def test_a_handler_that_raises_is_retried_and_answers_once(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    service, calls = counted([RuntimeError("flaky"), RuntimeError("flaky"), {"order_id": 7}])
    runtime = await run_service(service)
    client = await Client.connect(edge.port, token_for("alice"))
    command_id = await command(client, "orders.create", {"qty": 1})
    done = await client.recv()
    assert (done["type"], done["data"]) == (
        "orders.create.done", {"order_id": 7, "command_id": command_id}
    )
    await runtime.stop()
    assert calls == [command_id] * 3
    assert not client.pending


async def test_a_redelivered_completed_command_runs_once(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str],
    publisher: Publisher, database_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    service, calls = counted([{"order_id": 1}])
    runtime = await run_service(service)
    client = await Client.connect(edge.port, token_for("alice"))
    skipped = LogSeen("command handled before; not run again")
    logging.getLogger("warren.service").addHandler(skipped)
    caplog.set_level(logging.INFO, "warren.service")
    try:
        alice = Address.user("alice")
        envelope = Envelope(type="orders.create", to=alice, sender=alice, data={"qty": 1})
        await publisher.publish_command(envelope)
        done = await client.recv()
        await publisher.publish_command(envelope)  # the same id: a redelivery
        await asyncio.wait_for(skipped.seen.wait(), WAIT_S)
    finally:
        logging.getLogger("warren.service").removeHandler(skipped)
    await runtime.stop()
    assert done["data"] == {"order_id": 1, "command_id": envelope.id}
    assert calls == [envelope.id]
    assert not client.pending
    assert runtime.metrics.registry.get_sample_value(
        "warren_service_commands_total",
        {"service": "orders", "type": "orders.create", "outcome": "duplicate"},
    ) == 1
    engine = make_engine(database_url)
    try:
        assert CommandStore(session_factory(engine)).attempts("orders", envelope.id) == 1
    finally:
        engine.dispose()


async def test_a_handler_that_always_raises_is_dead_lettered_and_the_sender_told(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str],
    broker: AbstractRobustConnection,
) -> None:
    service, calls = counted([RuntimeError("a bug")])
    runtime = await run_service(service)
    client = await Client.connect(edge.port, token_for("alice"))
    command_id = await command(client, "orders.create", {"qty": 1})
    failed = await client.recv(timeout=30)
    assert (failed["type"], failed["data"]["command_id"], failed["data"]["code"]) == (
        "orders.create.failed", command_id, "internal"
    )
    await runtime.stop()
    queue = work_queue_name("orders.create")
    assert calls == [command_id] * (WORK_QUEUE_DELIVERY_LIMIT + 1)
    assert await depth(broker, queue) == 0
    assert await depth(broker, dead_letter_queue_name(queue)) == 1
    assert not client.pending


async def test_stop_drains_a_handler_in_hand_then_withdraws(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    service = Service("orders")
    entered, release = asyncio.Event(), asyncio.Event()

    @service.command("orders.create")
    async def create(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
        entered.set()
        await release.wait()
        return {"order_id": 3}

    runtime = await run_service(service)
    client = await Client.connect(edge.port, token_for("alice"))
    command_id = await command(client, "orders.create", {})
    await asyncio.wait_for(entered.wait(), WAIT_S)
    stopping = asyncio.create_task(runtime.stop())
    await forgotten(edge, "orders.create")  # withdrawn first, with the handler still in hand
    assert not runtime.is_ready()
    assert not stopping.done() and not client.pending
    release.set()
    await asyncio.wait_for(stopping, WAIT_S)
    done = await client.recv()
    assert done["data"] == {"order_id": 3, "command_id": command_id}


async def test_probes_and_metrics(
    run_service: Callable[[Service], Any], edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    service, _ = counted([{"ok": True}])
    runtime = await run_service(service)
    assert (await http(runtime.port, "/healthz"))[0] == 200
    status, _, body = await http(runtime.port, "/readyz")
    assert (status, body) == (200, {"status": "ready"})
    client = await Client.connect(edge.port, token_for("alice"))
    await command(client, "orders.create", {})
    assert (await client.recv())["type"] == "orders.create.done"
    status, response, _ = await http(runtime.port, "/metrics")
    assert status == 200 and response is not None
    text = response.body.decode()
    assert ('warren_service_commands_total{outcome="done",service="orders",'
            'type="orders.create"} 1.0') in text
    assert 'warren_service_handler_seconds_count{service="orders",type="orders.create"} 1.0' in text
    await runtime.stop()
    assert not runtime.is_ready()


def test_a_service_refuses_bad_declarations() -> None:
    service = Service("orders")
    with pytest.raises(ValueError, match="type must be"):
        service.command("Orders.Create")
    with pytest.raises(ValueError, match="too long"):
        service.command("orders." + "x" * 54)

    @service.command("orders.create")
    async def create(ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any] | None:
        return None

    with pytest.raises(ValueError, match="twice"):
        service.command("orders.create")
    with pytest.raises(ValueError, match="service name"):
        Service("no spaces")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_command_store_runs_a_command_until_completed(
    request: pytest.FixtureRequest, database_url: str, backend: str
) -> None:
    url = database_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    try:
        create_schema(engine)
        store = CommandStore(session_factory(engine))
        assert store.claim("orders", "c1") and store.claim("orders", "c1")  # a retry
        assert store.claim("billing", "c1")  # another service's command of the same id
        store.complete("orders", "c1")
        assert not store.claim("orders", "c1")
        assert (store.attempts("orders", "c1"), store.attempts("billing", "c1")) == (2, 1)
        assert store.forget(utcnow() + timedelta(seconds=1)) == 1
        assert store.claim("orders", "c1")  # forgotten: a very late duplicate runs again
    finally:
        engine.dispose()


async def test_warren_serve_runs_a_service_and_drains_it_on_sigterm(
    amqp_url: str, database_url: str, edge: EdgeServer, token_for: Callable[..., str],
) -> None:
    process = ServeProcess(
        service_env(amqp_url, database_url), ["tests.support.user_service:service"]
    )
    await process.start()
    try:
        await known(edge, "orders.create", "orders.slow")
        status, _, body = await http(process.port, "/readyz")
        assert (status, body) == (200, {"status": "ready"})
        client = await Client.connect(edge.port, token_for("alice"))
        created = await command(client, "orders.create", {"qty": 3})
        done = await client.recv()
        assert (done["type"], done["data"]) == (
            "orders.create.done", {"order_id": 42, "qty": 3, "command_id": created}
        )
        logged = await process.wait_log("order created")
        assert logged["correlation_id"] == created

        slow = await command(client, "orders.slow", {"seconds": 1.0}, ref=2)
        await process.wait_log("slow order started")
        process.signal(signal.SIGTERM)
        finished = await client.recv()
        assert (finished["type"], finished["data"]) == (
            "orders.slow.done", {"slept": True, "command_id": slow}
        )
        assert await process.exited() == 0
        messages = [record.get("message") for record in process.logs]
        assert messages.index("service stopped") > messages.index("slow order started")
    finally:
        await process.kill()


async def test_warren_serve_refuses_a_reference_that_is_not_a_service(
    amqp_url: str, database_url: str
) -> None:
    process = ServeProcess(service_env(amqp_url, database_url), ["tests.support.user_service:nope"])
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        await process.start()
    assert await process.exited() == 2
    assert "not a warren.service.Service" in process.tail()


async def test_warren_up_runs_a_users_service_and_stops_it_after_the_edge(
    amqp_url: str, tmp_path: Path
) -> None:
    env = up_env(amqp_url, tmp_path, **no_cat(tmp_path), WARREN_SERVICE_PORT="0",
                 PYTHONPATH=str(ROOT))
    up = WarrenUp(env, ["--service", "orders=tests.support.user_service:service"], tmp_path)
    try:
        await asyncio.to_thread(up.start)
        children = up.children()
        assert sorted(children) == ["edge-1", "excel-1", "orders", "relay-1", "runner-1"]
        assert f"orders    :{children['orders'][1]} (tests.support.user_service:service)" in (
            up.output()
        )
        status, _, body = await http(children["orders"][1], "/readyz")
        assert (status, body) == (200, {"status": "ready"})
        passwords = dict(PASSWORD.findall(up.output()))
        async with httpx.AsyncClient(timeout=10) as client:
            token = await login(
                client, f"http://127.0.0.1:{children['edge-1'][1]}", "alice", passwords["alice"]
            )
        ws = await Client.connect(children["edge-1"][1], token)
        created = await command(ws, "orders.create", {"qty": 5})
        done = await ws.recv()
        assert (done["type"], done["data"]) == (
            "orders.create.done", {"order_id": 42, "qty": 5, "command_id": created}
        )
        ws.close()
        assert await asyncio.to_thread(up.stop) == 0
    finally:
        up.kill()
    output = up.output()
    assert output.index("[up] edge-1 stopped") < output.index("[up] orders stopped")
    assert "[up] all stopped" in output
