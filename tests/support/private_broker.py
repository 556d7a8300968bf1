"""A RabbitMQ node of the test session's own, which tests may stop, restart and kill.

The machine's shared broker must never be restarted by one test: every other test (and
every other test run on the machine) uses it. Fault tests instead start a second node
from the same installation, on free loopback ports, with its own node name, database
and logs under a temporary directory. Starting it takes a few seconds, so one node
serves the whole session; each test gets its own vhost on it. A cluster of such nodes
(``tests/support/cluster.py``) adds an Erlang cookie of its own and its joins.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_S = 90
CTL_TIMEOUT_S = 120
#: The Erlang VM's flags of every node Warren runs, here and deployed (docker-compose.yml,
#: k8s/base/rabbitmq.yaml; tests/deploy/test_broker_config.py checks them). In Erlang's
#: default time mode a step of the system clock (a VM resumed, NTP correcting a boot
#: clock) reaches the node's own clock only at 1 % of the time that passes, so for minutes
#: the stream's timestamps lag the edges' positions and a recovery seeks past what it
#: should replay (docs/protocol.md 17.2). Multi-time-warp mode follows the step at once.
ERL_ARGS = "+C multi_time_warp"


class PrivateBrokerUnavailable(RuntimeError):
    """This machine cannot run a second RabbitMQ node (no rabbitmq-server installed)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def require_installation() -> None:
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        raise PrivateBrokerUnavailable("rabbitmq-server is not installed on this machine")


@dataclass
class PrivateBroker:
    """One private RabbitMQ node: ``stop_app``/``start_app`` restart it, ``kill`` ends it."""

    directory: Path
    node: str
    port: int
    dist_port: int
    prometheus_port: int
    # None: the machine's cookie (the rabbitmq user's ~/.erlang.cookie), which the
    # shared broker uses too; a cluster of the session's own has one of its own, so that
    # none of its nodes can ever reach (or join) the shared broker.
    cookie: str | None = None

    @classmethod
    def start(cls, directory: Path) -> PrivateBroker:
        broker = cls.prepare(directory)
        broker.boot()
        return broker

    @classmethod
    def prepare(
        cls,
        directory: Path,
        *,
        name: str | None = None,
        config: str = "",
        plugins: Sequence[str] = ("rabbitmq_prometheus",),
        cookie: str | None = None,
    ) -> PrivateBroker:
        """Write the node's configuration under ``directory``, without starting it.

        ``config``: more ``rabbitmq.conf`` lines. The Prometheus plugin (the default)
        lets the deployment tests check the metric names that alerts and dashboards use
        against a real node.
        """
        require_installation()
        directory.mkdir(parents=True, exist_ok=True)
        # The Debian wrapper runs the node as the rabbitmq user when started by root.
        directory.chmod(0o777)
        broker = cls(
            directory=directory,
            node=f"{name or 'warren-test-' + uuid.uuid4().hex[:8]}@localhost",
            port=free_port(),
            dist_port=free_port(),
            prometheus_port=free_port(),
            cookie=cookie,
        )
        lines = [
            f"listeners.tcp.local = 127.0.0.1:{broker.port}",
            "loopback_users = none",
            "log.console = false",
        ]
        if "rabbitmq_prometheus" in plugins:
            lines += [
                "prometheus.tcp.ip = 127.0.0.1", f"prometheus.tcp.port = {broker.prometheus_port}"
            ]
        (directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n" + config)
        (directory / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        for path in directory.iterdir():
            path.chmod(0o666)
        return broker

    @property
    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.directory / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
        }
        # The Debian wrapper runs the node and rabbitmqctl through su, which keeps the
        # environment but sets HOME to the rabbitmq user's: a cookie file of our own is
        # never read there, the variable is (by the node and by the CLI tools alike).
        if self.cookie is not None:
            env["RABBITMQ_ERLANG_COOKIE"] = self.cookie
        return env

    def boot(self) -> None:
        self.launch()
        self.await_boot()

    def launch(self, prefix: Sequence[str] = ()) -> None:
        """Start the node's Erlang VM in the background; :meth:`await_boot` waits for it.
        ``prefix``: a command to start it through (``taskset -c 1``, say)."""
        subprocess.run(
            [*prefix, "rabbitmq-server", "-detached"], env=self._env, check=True,
            capture_output=True, timeout=CTL_TIMEOUT_S,
        )

    def await_boot(self) -> None:
        # ``wait`` watches the pid file the node writes, so it cannot ask too early.
        self.ctl("wait", str(self.directory / "node.pid"), "--timeout", str(STARTUP_TIMEOUT_S))

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            capture_output=True, text=True, timeout=CTL_TIMEOUT_S, env=self._env,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {self.node} failed: {done.stderr.strip()}"
            )
        return done.stdout

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def vhost_url(self, vhost: str) -> str:
        return vhost_url(self.url, vhost)

    def create_vhost(self, prefix: str = "warren-fault") -> str:
        vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        self.ctl("delete_vhost", vhost)

    def stop_app(self) -> None:
        """Stop RabbitMQ on the node, as a broker shutdown does: every connection drops."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", str(STARTUP_TIMEOUT_S))

    def restart(self) -> None:
        self.stop_app()
        self.start_app()

    def queue_depths(self, vhost: str) -> dict[str, int]:
        """Ready plus unacknowledged messages of every queue in ``vhost``."""
        listed = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
        depths: dict[str, int] = {}
        for line in listed.splitlines():
            name, _, count = line.rpartition("\t")
            if name:
                depths[name] = int(count)
        return depths

    def stop_node(self) -> None:
        """Stop the node and its Erlang VM in order, and wait until the VM has exited."""
        self.ctl("stop", str(self.directory / "node.pid"))

    def crash(self) -> None:
        """SIGKILL the node's Erlang VM, as a machine failure would."""
        pid_file = self.directory / "node.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        # A stale pid file would make the next ``wait`` watch a dead process.
        pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop the node and its Erlang VM; its files are left to the temporary directory."""
        try:
            self.ctl("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            self.crash()


def vhost_url(url: str, vhost: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parsed._replace(path="/" + urllib.parse.quote(vhost, safe="")))
