"""Warren on a real three-node RabbitMQ cluster behind HAProxy (tests/support/cluster.py).

The cluster starts once, when the first test here needs it, and stops after the last
one: package scope, so that its three idle nodes do not run beside the rest of the
suite. Each test gets a vhost of its own and leaves every node running.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import SETTINGS
from tests.support.cluster import RabbitCluster
from tests.support.haproxy import HaProxyUnavailable
from tests.support.private_broker import PrivateBrokerUnavailable
from tests.support.system import System


@pytest.fixture(scope="package")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    # Not under pytest's temporary directory: the nodes run as the rabbitmq user, which
    # cannot enter root's private directories.
    directory = Path(tempfile.mkdtemp(prefix="warren-cluster-"))
    try:
        cluster = RabbitCluster.start(directory)
    except (PrivateBrokerUnavailable, HaProxyUnavailable) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"the cluster tests need RabbitMQ and HAProxy installed here: {exc}")
    yield cluster
    cluster.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster_vhost(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A fresh vhost; every node is running again (and in the cluster) afterwards."""
    vhost = rabbit_cluster.create_vhost()
    yield vhost
    rabbit_cluster.heal()
    rabbit_cluster.delete_vhost(vhost)


@pytest.fixture
def cluster_url(rabbit_cluster: RabbitCluster, cluster_vhost: str) -> str:
    """The vhost through HAProxy: the one address services are given."""
    return rabbit_cluster.vhost_url(cluster_vhost)


@pytest.fixture
async def warren_up(
    cluster_url: str, postgres_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[System]]]:
    """Start ``warren up`` with two replicas of every service on the cluster, through
    HAProxy, with the chaos tests' settings and any given; stopped afterwards."""
    started: list[System] = []

    async def start(**settings: str) -> System:
        system = await System.start(
            cluster_url, postgres_url, tmp_path, **{**SETTINGS, **settings}
        )
        started.append(system)
        await system.wait_ready()
        return system

    yield start
    for system in started:
        await system.stop()
        # Every service's log lines, for a look after a failure (pytest keeps tmp_path).
        (tmp_path / "warren-up.log").write_text(system.up.output() + "\n")
