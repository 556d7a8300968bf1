"""Fixtures on real parts: a RabbitMQ vhost per test, a SQLite file per test, real edges."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from xdist.scheduler import LoadScopeScheduling

from shared.auth import AuthSettings, TokenService
from shared.config import DEFAULT_AMQP_URL
from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.messaging.broker import Publisher, connect
from services.ws_edge.server import EdgeServer
from services.ws_edge.settings import EdgeSettings
from tests.support.edge import edge_env
from tests.support.private_broker import PrivateBroker, PrivateBrokerUnavailable
from tests.support.rabbit import BrokerAdmin
from tests.support.tcp_proxy import TcpProxy


CLUSTER_TESTS: Final = "tests/cluster"


class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no types
    """The suite runs on two workers (pyproject.toml). A module's tests stay on one, so
    that its module-scoped servers and browser start once; so do all of tests/cluster,
    so that only one three-node cluster ever runs. (xdist's own ``--dist loadgroup``
    would do this from marks, but loses them on pytest 9.2: pytest-xdist issue 1386.)"""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return CLUSTER_TESTS if module.startswith(f"{CLUSTER_TESTS}/") else module

    def _assign_work_unit(self, node: Any) -> None:
        # The cluster's tests are the longest unit by far (minutes): they go first, so
        # that the other worker runs the rest meanwhile and they never end the run alone.
        if CLUSTER_TESTS in self.workqueue:
            self.workqueue.move_to_end(CLUSTER_TESTS, last=False)
        super()._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)  # known only while xdist is loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModuleScheduling:
    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def broker_admin() -> BrokerAdmin:
    return BrokerAdmin(
        amqp_url=os.environ.get("WARREN_AMQP_URL", DEFAULT_AMQP_URL),
        api_url=os.environ.get("WARREN_RABBITMQ_API_URL", "http://127.0.0.1:15672"),
    )


@pytest.fixture
def vhost(broker_admin: BrokerAdmin) -> Iterator[str]:
    name = broker_admin.create_vhost()
    yield name
    broker_admin.delete_vhost(name)


@pytest.fixture
def amqp_url(broker_admin: BrokerAdmin, vhost: str) -> str:
    return broker_admin.vhost_url(vhost)


@pytest.fixture(scope="session")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of this session's own, for tests that stop and start the broker."""
    # Not under pytest's temporary directory: the node runs as the rabbitmq user, which
    # cannot enter root's private directories.
    directory = Path(tempfile.mkdtemp(prefix="warren-rabbitmq-"))
    try:
        broker = PrivateBroker.start(directory)
    except PrivateBrokerUnavailable as exc:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"broker restart tests need a local RabbitMQ installation: {exc}")
    yield broker
    broker.kill()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def private_amqp_url(private_broker: PrivateBroker) -> Iterator[str]:
    """A fresh vhost on the private node; the node is running again when the test ends."""
    vhost = private_broker.create_vhost()
    yield private_broker.vhost_url(vhost)
    private_broker.start_app()  # a no-op when it is running
    private_broker.delete_vhost(vhost)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warren.db'}"


POSTGRES_URL = os.environ.get(
    "WARREN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away database on the PostgreSQL server, dropped afterwards."""
    admin_url = make_url(POSTGRES_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        admin.connect().close()
    except Exception as exc:  # noqa: BLE001 - any failure means no server to test against
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    name = f"warren_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
async def postgres_proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the PostgreSQL server: cutting it is a database outage."""
    target = make_url(postgres_url)
    proxy = await TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    yield proxy
    await proxy.close()


@pytest.fixture
def users(database_url: str) -> Iterator[UserStore]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield UserStore(session_factory(engine))
    engine.dispose()


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(AuthSettings.from_env({}, development=True))


@pytest.fixture
def token_for(tokens: TokenService) -> Callable[..., str]:
    def issue(user: str, groups: tuple[str, ...] = (), roles: tuple[str, ...] = (), **kw: int) -> str:
        return tokens.issue(user, groups, roles, **kw)

    return issue


@pytest.fixture
async def make_edge(amqp_url: str, database_url: str) -> AsyncIterator[Callable[..., EdgeServer]]:
    """Build in-process edges on free ports; every one built is stopped afterwards."""
    built: list[EdgeServer] = []

    def build(**overrides: str) -> EdgeServer:
        settings = EdgeSettings.from_env(edge_env(amqp_url, database_url, **overrides))
        server = EdgeServer(settings, CollectorRegistry())
        built.append(server)
        return server

    yield build
    for server in built:
        await server.stop()


@pytest.fixture
async def edge(make_edge: Callable[..., EdgeServer]) -> EdgeServer:
    server = make_edge()
    await server.start()
    return server


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    connection = await connect(amqp_url, name="warren-test-publisher")
    async with connection:
        yield await Publisher.open(connection)
