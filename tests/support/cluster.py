"""A real three-node RabbitMQ cluster of the test session's own, behind HAProxy.

Three private nodes (``tests/support/private_broker.py``) from the machine's
installation, each with its own node name, loopback ports, database and logs under one
directory, an Erlang cookie of the cluster's own (so that none of them can reach, let
alone join, the machine's shared broker ``rabbit@localhost``), joined with
``rabbitmqctl join_cluster`` and run with ``cluster_partition_handling =
pause_minority``, as production's three-node cluster is. HAProxy (``haproxy.py``)
gives them one address, as the Kubernetes Service does.

Starting it takes a while (three nodes, two joins), so one cluster serves the whole
session; each test gets its own vhost on it. A test that stops, kills or cuts off a
node brings it back before it ends (:meth:`RabbitCluster.heal` makes sure).

A network partition is made in Erlang's distribution, not with a packet filter: the test
machines have none, and the nodes share the loopback interface, so no address or port
tells one node's links from another's (:meth:`RabbitCluster.partition`).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.haproxy import HaProxy
from tests.support.private_broker import STARTUP_TIMEOUT_S, PrivateBroker, vhost_url

CLUSTER_SIZE = 3
NODE_CONFIG = "cluster_partition_handling = pause_minority\n"
# An Erlang pid as rabbitmqctl's table prints it names its node:
# <warren-cluster-0ce7f3-1@localhost.1796599876.1239.0>
PID_NODE = re.compile(r"^<(?P<node>[^@<>]+@[^.]+)\.\d+\.\d+\.\d+>$")
# The cookie a node cut off from its peers holds for them: any atom but the cluster's.
PARTITION_COOKIE = "warren_partitioned"


@dataclass
class QueueReplicas:
    """Where a replicated queue (quorum queue or stream) lives."""

    name: str
    type: str
    leader: str
    members: tuple[str, ...]
    online: tuple[str, ...]


@dataclass(frozen=True)
class QueueConsumer:
    """One consumer of a queue, and the node it consumes from (its channel's, which is
    its connection's)."""

    tag: str
    node: str
    active: bool  # with single active consumer: the one the queue delivers to


@dataclass
class RabbitCluster:
    directory: Path
    nodes: tuple[PrivateBroker, ...]
    proxy: HaProxy
    stopped: set[str] = field(default_factory=set)
    partitioned: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, directory: Path, size: int = CLUSTER_SIZE) -> RabbitCluster:
        """Boot ``size`` nodes at once, join them to the first, put HAProxy in front."""
        # The nodes run as the rabbitmq user, who must be able to enter it.
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        cookie = secrets.token_hex(20).upper()
        prefix = f"warren-cluster-{uuid.uuid4().hex[:6]}"
        nodes = tuple(
            PrivateBroker.prepare(
                directory / f"node-{index}", name=f"{prefix}-{index}", config=NODE_CONFIG,
                plugins=(), cookie=cookie,
            )
            for index in range(1, size + 1)
        )
        try:
            with ThreadPoolExecutor(size) as pool:
                list(pool.map(PrivateBroker.boot, nodes))
            seed = nodes[0]
            for node in nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", seed.node)
                node.start_app()
            proxy = HaProxy.start(directory / "haproxy", {_server(n): n.port for n in nodes})
        except BaseException:
            for node in nodes:
                node.crash()
            raise
        cluster = cls(directory=directory, nodes=nodes, proxy=proxy)
        members = cluster.running_nodes()
        if members != {n.node for n in nodes}:
            cluster.close()
            raise RuntimeError(f"the cluster did not form: running nodes {sorted(members)}")
        return cluster

    # -- addresses -------------------------------------------------------------

    @property
    def url(self) -> str:
        """HAProxy's address: what services use."""
        return self.proxy.url

    def vhost_url(self, vhost: str) -> str:
        return vhost_url(self.url, vhost)

    def node_urls(self, vhost: str) -> list[str]:
        """Each node's own address (a deployment without a load balancer lists them all)."""
        return [n.vhost_url(vhost) for n in self.nodes]

    def create_vhost(self, prefix: str = "warren-cluster") -> str:
        """A vhost of the whole cluster (made through any running node)."""
        return next(self.live_nodes()).create_vhost(prefix)

    def delete_vhost(self, vhost: str) -> None:
        next(self.live_nodes()).delete_vhost(vhost)

    # -- nodes -----------------------------------------------------------------

    def node(self, name: str) -> PrivateBroker:
        for candidate in self.nodes:
            if candidate.node == name:
                return candidate
        raise LookupError(f"{name!r} is not a node of this cluster")

    def live_nodes(self) -> Iterator[PrivateBroker]:
        return (n for n in self.nodes if n.node not in self.stopped | self.partitioned)

    def ctl(self, *args: str) -> str:
        """rabbitmqctl on a node that is running and not cut off (the majority answers
        for the cluster)."""
        return next(self.live_nodes()).ctl(*args)

    def running_nodes(self) -> set[str]:
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def stop(self, name: str) -> None:
        """Stop a node in order (its VM exits); HAProxy marks it down within a second."""
        self.stopped.add(name)
        self.node(name).stop_node()

    def kill(self, name: str) -> None:
        """SIGKILL a node's VM, as a machine failure would."""
        self.stopped.add(name)
        self.node(name).crash()

    def start_node(self, name: str) -> None:
        """Boot a stopped node again: it rejoins the cluster, and HAProxy sends to it again."""
        node = self.node(name)
        node.boot()
        node.ctl("await_startup", "--timeout", str(STARTUP_TIMEOUT_S))
        self.stopped.discard(name)
        self.await_proxy(name, "UP")

    def partition(self, name: str) -> None:
        """Cut ``name`` off from the other nodes, as a network partition would.

        The node is given a wrong cookie for each of its peers and its links to them are
        dropped: neither side can connect again, since each checks the other's handshake
        with the cookie it holds for it. Everything else stays: clients' AMQP links to
        the node (through HAProxy), and rabbitmqctl's to it (the CLI is no peer, and
        gets the node's own cookie). With ``pause_minority`` the node, alone, sees no
        majority and stops RabbitMQ on itself (its Erlang VM keeps running), pinging its
        peers every second until it sees them again (:meth:`rejoin`).
        """
        peers = _atoms(n.node for n in self.nodes if n.node != name)
        self.partitioned.add(name)
        self.node(name).ctl("eval", (
            f"[begin erlang:set_cookie(Peer, {PARTITION_COOKIE}), "
            f"erlang:disconnect_node(Peer) end || Peer <- {peers}], ok."
        ))

    def rejoin(self, name: str) -> None:
        """End :meth:`partition`: the node's peers' cookie back, and links to them. The
        paused node sees a majority again and starts RabbitMQ (syncing from its peers);
        back when HAProxy sends to it again."""
        node = self.node(name)
        peers = _atoms(n.node for n in self.nodes if n.node != name)
        node.ctl("eval", (
            "Cookie = erlang:get_cookie(), "
            f"[erlang:set_cookie(Peer, Cookie) || Peer <- {peers}], "
            f"[net_kernel:connect_node(Peer) || Peer <- {peers}], ok."
        ))
        # It starts RabbitMQ after its next ping round: until then there is no boot to await.
        _wait(lambda: self.rabbit_running(name), STARTUP_TIMEOUT_S, f"RabbitMQ running on {name}")
        self.partitioned.discard(name)
        self.await_proxy(name, "UP")

    def accepts_amqp(self, name: str) -> bool:
        """Whether the node's own AMQP port takes a connection (a paused node's does not)."""
        try:
            socket.create_connection(("127.0.0.1", self.node(name).port), timeout=2).close()
        except OSError:
            return False
        return True

    def await_proxy(self, name: str, state: str, timeout: float = 30) -> None:
        """Wait until HAProxy's checks find the node in ``state`` (``UP``, ``DOWN``)."""
        server = _server(self.node(name))
        self.proxy.wait_until(lambda states: states.get(server) == state, timeout,
                              f"{server} {state}")

    def rabbit_running(self, name: str) -> bool:
        """Whether RabbitMQ runs on the node, asked of the node itself (a paused node's VM
        still answers the CLI)."""
        return self.node(name).ctl("eval", "rabbit:is_running().").strip() == "true"

    def partitions(self) -> dict[str, list[str]]:
        """The partitions the running nodes have recorded (node -> the nodes it saw on
        the other side): none once a paused node has rejoined and started again."""
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return {str(k): [str(n) for n in v] for k, v in (status.get("partitions") or {}).items()}

    def await_replicas_online(self, vhost: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until every member of every quorum queue and stream of ``vhost`` is
        online: a node started again has its replicas back, and catching up."""
        _wait(lambda: all(r.online == r.members for r in self.replicated(vhost)), timeout,
              f"every replica in {vhost} online")

    def heal(self) -> None:
        """Every node running again and in the cluster (after a test that stopped one or
        cut one off)."""
        for name in sorted(self.partitioned):
            self.rejoin(name)
        for name in sorted(self.stopped):
            self.start_node(name)
        _wait(lambda: self.running_nodes() == {n.node for n in self.nodes}, STARTUP_TIMEOUT_S,
              "every node running in the cluster")

    def close(self) -> None:
        self.proxy.stop()
        # The whole cluster goes with its directory: no orderly shutdown needed.
        for node in self.nodes:
            node.crash()

    # -- who is where ----------------------------------------------------------

    def connections(self, vhost: str) -> dict[str, str]:
        """Client-provided connection name -> the node the connection is on, in ``vhost``."""
        # The JSON formatter prints pids without their node, and the table formatter
        # client properties in Erlang's syntax: ask both, joined on the connection's
        # own name ("<client address> -> <node address>").
        node_by_address: dict[str, str] = {}
        listed = self.ctl("list_connections", "--no-table-headers", "vhost", "pid", "name")
        for line in listed.splitlines():
            owner, pid, address = (line.split("\t") + ["", ""])[:3]
            match = PID_NODE.match(pid)
            if owner == vhost and match:
                node_by_address[address] = match["node"]
        found: dict[str, str] = {}
        for row in json.loads(self.ctl(
            "list_connections", "name", "client_properties", "--formatter", "json"
        )):
            name = _client_property(row["client_properties"], "connection_name")
            node = node_by_address.get(str(row["name"]))
            if name is not None and node is not None:
                found[str(name)] = node
        return found

    def node_of(self, vhost: str, connection_prefix: str) -> str:
        """The node of the one connection whose name starts with ``connection_prefix``."""
        nodes = {node for name, node in self.connections(vhost).items()
                 if name.startswith(connection_prefix)}
        if len(nodes) != 1:
            raise LookupError(f"connections named {connection_prefix}* are on {sorted(nodes)}")
        return nodes.pop()

    def consumers(self, vhost: str, queue: str) -> list[QueueConsumer]:
        """The consumers of ``queue`` now, each with the node its connection is on."""
        listed = self.ctl("list_consumers", "-p", vhost, "--no-table-headers",
                          "queue_name", "channel_pid", "consumer_tag", "active")
        found: list[QueueConsumer] = []
        for line in listed.splitlines():
            name, pid, tag, active = (line.split("\t") + ["", "", ""])[:4]
            match = PID_NODE.match(pid)
            if name == queue and match:
                found.append(QueueConsumer(tag=tag, node=match["node"], active=active == "true"))
        return found

    def replicas(self, vhost: str, queue: str) -> QueueReplicas:
        """A quorum queue's or stream's leader and members, as the cluster sees them now."""
        for found in self._queues(vhost):
            if found.name == queue:
                return found
        raise LookupError(f"no queue {queue!r} in {vhost!r}")

    def replicated(self, vhost: str) -> list[QueueReplicas]:
        """Every quorum queue and stream of ``vhost``."""
        return [q for q in self._queues(vhost) if q.type in {"quorum", "stream"}]

    def _queues(self, vhost: str) -> list[QueueReplicas]:
        listed = json.loads(self.ctl(
            "list_queues", "-p", vhost, "name", "type", "leader", "members", "online",
            "--formatter", "json",
        ))
        return [
            QueueReplicas(
                name=str(row["name"]), type=str(row["type"]), leader=str(row["leader"]),
                members=_nodes(row["members"]), online=_nodes(row["online"]),
            )
            for row in listed
        ]

    def lead(self, vhost: str, queue: str, name: str) -> None:
        """Make ``name`` the leader of a quorum queue (Ra's leadership transfer), and wait
        until the cluster lists it so."""
        current = self.replicas(vhost, queue).leader
        if current == name:
            return
        # Ra's name for a quorum queue: "<vhost>_<queue>" (RabbitMQ's
        # rabbit_quorum_queue:qname_to_internal_name/1, for any vhost but "/").
        ra_name = f"'{vhost}_{queue}'"
        self.node(current).ctl("eval", (
            f"ra:transfer_leadership({{{ra_name}, '{current}'}}, {{{ra_name}, '{name}'}})."
        ))
        _wait(lambda: self.replicas(vhost, queue).leader == name, 30,
              f"{name} leading {queue}")

    def home(self, vhost: str, queue: str) -> str:
        """The node a classic queue lives on (the only one that holds it)."""
        listed = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "pid")
        for line in listed.splitlines():
            name, _, pid = line.rpartition("\t")
            match = PID_NODE.match(pid)
            if name == queue and match:
                return match["node"]
        raise LookupError(f"no classic queue {queue!r} in {vhost!r}")

    def bindings(self, vhost: str, queue: str, source: str) -> set[str]:
        """The routing keys ``queue`` is bound with from the exchange ``source``."""
        listed = self.ctl("list_bindings", "-p", vhost, "--no-table-headers",
                          "source_name", "destination_name", "routing_key")
        keys: set[str] = set()
        for line in listed.splitlines():
            bound_from, destination, key = (line.split("\t") + ["", ""])[:3]
            if bound_from == source and destination == queue:
                keys.add(key)
        return keys

    def queue_depths(self, vhost: str) -> dict[str, int | None]:
        """Ready plus unacknowledged messages of every queue in ``vhost``; None for a
        queue that cannot say (a classic queue whose node is down)."""
        listed = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
        depths: dict[str, int | None] = {}
        for line in listed.splitlines():
            name, _, count = line.rpartition("\t")
            if name:
                depths[name] = int(count) if count.strip() else None
        return depths


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll the cluster's state (no event tells it) until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def _server(node: PrivateBroker) -> str:
    """The node's name in HAProxy's configuration."""
    return node.node.split("@", 1)[0]


def _atoms(nodes: Iterable[str]) -> str:
    """Node names as an Erlang list of quoted atoms."""
    return "[" + ", ".join(f"'{node}'" for node in nodes) + "]"


def _nodes(value: Any) -> tuple[str, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(sorted(str(v) for v in value))
    return ()


def _client_property(properties: Any, key: str) -> object | None:
    """rabbitmqctl's JSON gives client properties as a list of [key, type, value]."""
    found: object | None = None
    if isinstance(properties, dict):
        found = properties.get(key)
    else:
        for item in properties or ():
            if isinstance(item, Sequence) and len(item) == 3 and item[0] == key:
                found = item[2]
    return found
