"""Run a benchmark with RabbitMQ on a core of its own, as a deployment would have it.

    python -m bench.pinned_broker [--broker-cpu 1] [--bench-cpu 0] -- MODULE [ARGS...]

On this two-core VM the broker shares the cores with the edge, its clients and the
publisher, so broker-side work (the history stream's append, for one) comes out of the
edge's CPU. This starts a private RabbitMQ node (``tests/support/private_broker.py``,
with the management plugin, on free ports), pins every thread of its Erlang VM to
``--broker-cpu``, then runs ``python -m MODULE ARGS`` pinned to ``--bench-cpu``, with
``--amqp-url`` and ``--api-url`` pointing at the node, and stops the node afterwards.
Every process the benchmark starts inherits its CPU. The shared broker is not touched.

Example (issue 16's constraint): ``python -m bench.pinned_broker -- bench.fanout
--stream-ab 3 --markdown --skip-peer``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.private_broker import PrivateBroker, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pinned_broker", description=__doc__)
    parser.add_argument("--broker-cpu", type=int, default=1, help="the broker's CPU (1)")
    parser.add_argument("--bench-cpu", type=int, default=0, help="everything else's CPU (0)")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="-- MODULE [ARGS...]")
    args = parser.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        parser.error("name the benchmark module to run after --")
    directory = Path(tempfile.mkdtemp(prefix="warren-pinned-broker-"))
    management = free_port()
    node = PrivateBroker.prepare(
        directory, plugins=("rabbitmq_management",),
        config=f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management}\n",
    )
    node.launch(prefix=("taskset", "-c", str(args.broker_cpu)))
    try:
        node.await_boot()
        pid = (directory / "node.pid").read_text().strip()
        # The VM's threads started before the CPU list was inherited everywhere: set all.
        subprocess.run(["taskset", "-a", "-p", "-c", str(args.broker_cpu), pid],
                       check=True, capture_output=True)
        print(f"broker {node.node} (pid {pid}) on CPU {args.broker_cpu}; "
              f"the benchmark on CPU {args.bench_cpu}", flush=True)
        return subprocess.call(
            ["taskset", "-c", str(args.bench_cpu), sys.executable, "-m", *bench,
             "--amqp-url", node.url, "--api-url", f"http://127.0.0.1:{management}"],
            cwd=REPO_ROOT,
        )
    finally:
        node.stop_node()


if __name__ == "__main__":
    sys.exit(main())
