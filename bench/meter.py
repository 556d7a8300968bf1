"""CPU time and memory of the bench's processes, of RabbitMQ and of the whole host."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from urllib.parse import urlsplit

import psutil


def cpu_seconds(process: psutil.Process, reaped: bool = False) -> float:
    """User and system CPU seconds of ``process``; with ``reaped``, plus those of the
    children it has waited for (a runner's finished jobs)."""
    times = process.cpu_times()
    total = times.user + times.system
    if reaped:
        total += times.children_user + times.children_system
    return float(total)


def live_children_seconds(process: psutil.Process) -> float:
    """CPU seconds of the children of ``process`` that still run (a runner's current jobs)."""
    total = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += cpu_seconds(child)
    return total


def broker_process(amqp_url: str) -> psutil.Process | None:
    """The process listening on the broker's AMQP port: RabbitMQ's Erlang VM. Other
    sessions' private brokers on this host (other ports) are not counted as ours."""
    port = urlsplit(amqp_url).port or 5672
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return psutil.Process(connection.pid) if connection.pid else None
    return None


class Meter:
    """CPU seconds of named groups of processes, of this process, of the broker and of the
    whole host, between two reads; and the memory of the process under test.

    ``with_jobs`` names the groups whose processes run jobs as children (the runners):
    their children count too, finished or running.
    """

    def __init__(self, subject: int, groups: Mapping[str, Sequence[int]], amqp_url: str,
                 with_jobs: Collection[str] = ()) -> None:
        self.subject = psutil.Process(subject)
        self._groups = {name: [psutil.Process(pid) for pid in pids]
                        for name, pids in groups.items()}
        self._with_jobs = frozenset(with_jobs)
        self._me = psutil.Process()
        self._broker = broker_process(amqp_url)

    def read(self) -> dict[str, float]:
        """CPU seconds so far: one entry per group, ``orchestrator`` (this process),
        ``host_busy`` (user, nice, system and irq time of every CPU), ``host_softirq``,
        ``host_steal``, and ``broker``, missing once the broker process is gone; ``wall``
        is the monotonic clock."""
        host = psutil.cpu_times()
        reading = {"wall": time.monotonic()}
        for name, processes in self._groups.items():
            if name in self._with_jobs:
                reading[name] = sum(cpu_seconds(p, reaped=True) + live_children_seconds(p)
                                    for p in processes)
            else:
                reading[name] = sum(cpu_seconds(p) for p in processes)
        reading["orchestrator"] = cpu_seconds(self._me)
        reading["host_busy"] = host.user + host.nice + host.system + host.irq
        reading["host_softirq"] = host.softirq
        reading["host_steal"] = getattr(host, "steal", 0.0)
        if self._broker is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                reading["broker"] = cpu_seconds(self._broker)
        return reading

    def shares(self, before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """Percent of one core per group, for this process and for the broker between two
        reads; ``other``: the rest of the host's busy time, softirq included (other
        programs, other kernel work)."""
        wall = max(after["wall"] - before["wall"], 1e-6)
        shares = {name: 100 * (after[name] - before[name]) / wall
                  for name in (*self._groups, "orchestrator")}
        shares["broker"] = 100 * (after.get("broker", 0.0) - before.get("broker", 0.0)) / wall
        busy = 100 * (after["host_busy"] + after["host_softirq"]
                      - before["host_busy"] - before["host_softirq"]) / wall
        shares["other"] = max(0.0, busy - sum(shares.values()))
        return shares

    def rss_mb(self) -> float:
        return float(self.subject.memory_info().rss) / (1 << 20)

    def fds(self) -> int:
        return int(self.subject.num_fds())
