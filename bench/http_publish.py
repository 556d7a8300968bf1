"""Publishing over HTTP against the Python publisher: events per second, same machine, same run.

    python -m bench.http_publish [--events 20000] [--batch 500] [--concurrency 2] [--rounds 5]

Both sides publish the same events (``bench.tick`` to 100 users round-robin, nobody
connected: the broker confirms and drops them, so only publishing is measured), each
confirmed by the broker:

* ``python``: this process, with Warren's own publisher
  (``shared.messaging.broker.Publisher.publish_event``, publisher confirms), ``--concurrency``
  workers each publishing ``--batch`` events at a time with ``asyncio.gather``;
* ``http``: the same workers POST ``--batch`` events at a time to an edge's
  ``/api/publish/batch`` (``python -m services.ws_edge``, on uvloop as deployed) with a
  service key; the edge publishes them with the same publisher and answers once the
  broker confirmed every one. Each request's body is encoded once, before the clock starts.

Rounds alternate (python, http, python, ...) after one warm-up round of each, so that
both see the same load; the table gives each round, then the medians and their ratio
against the issue's target: the batch endpoint at 80 % of the Python publisher's rate
or more. ``load`` is the 1-minute load average at each round's start, ``steal %`` the
share of the CPUs the hypervisor gave to other guests during the round: with other
sessions busy on the machine, both say how much to trust a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import orjson
import psutil
import uvloop

from bench.cli import add_common_arguments, check_local, run_within
from bench.report import format_table
from bench.servers import edge_process
from bench.workspace import workspace
from shared.db import create_schema, make_engine, session_factory
from shared.db.keys import KeyStore, Scope
from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher, connect

EVENT_TYPE: Final = "bench.tick"
USERS: Final = [f"bench{n:04d}" for n in range(100)]
TARGET_RATIO: Final = 0.8
BUDGET_S: Final = 900.0


@dataclass(frozen=True, slots=True)
class Round:
    system: str
    events: int
    wall_s: float
    load: float
    steal_pct: float

    @property
    def rate(self) -> float:
        return self.events / self.wall_s


def batches(events: int, batch: int) -> list[list[str]]:
    """The users each batch goes to, round-robin."""
    users = itertools.cycle(USERS)
    sizes = [batch] * (events // batch) + ([events % batch] if events % batch else [])
    return [[next(users) for _ in range(size)] for size in sizes]


async def in_workers(work: list[list[str]], concurrency: int,
                     send: Callable[[list[str]], Awaitable[None]]) -> None:
    queue = iter(work)

    async def worker() -> None:
        for targets in queue:
            await send(targets)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def timed(system: str, events: int, run: Callable[[], Awaitable[None]]) -> Round:
    load = os.getloadavg()[0]
    steal_before = getattr(psutil.cpu_times(), "steal", 0.0)
    started = time.perf_counter()
    await run()
    wall = time.perf_counter() - started
    steal = getattr(psutil.cpu_times(), "steal", 0.0) - steal_before
    return Round(system, events, wall, load, 100 * steal / (wall * (psutil.cpu_count() or 1)))


async def python_round(publisher: Publisher, work: list[list[str]], concurrency: int) -> None:
    sender = Address.service("bench")

    async def send(targets: list[str]) -> None:
        await asyncio.gather(*(
            publisher.publish_event(Envelope(
                type=EVENT_TYPE, to=Address.user(user), sender=sender, data={"seq": n}
            ))
            for n, user in enumerate(targets)
        ))

    await in_workers(work, concurrency, send)


async def http_round(client: httpx.AsyncClient, work: list[list[str]], concurrency: int) -> None:
    bodies = {id(targets): orjson.dumps({"events": [
        {"to": f"user:{user}", "type": EVENT_TYPE, "data": {"seq": n}}
        for n, user in enumerate(targets)
    ]}) for targets in work}

    async def send(targets: list[str]) -> None:
        response = await client.post("/api/publish/batch", content=bodies[id(targets)])
        if response.status_code != 200:
            raise RuntimeError(f"the edge answered {response.status_code}: {response.text[:300]}")

    await in_workers(work, concurrency, send)


def make_key(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        return KeyStore(session_factory(engine)).add("bench", [Scope.PUBLISH])[1]
    finally:
        engine.dispose()


async def measure(args: argparse.Namespace) -> None:
    async with workspace(args.amqp_url, args.api_url, "warren-bench-http-", args.logs) as space:
        space.logs.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{space.workdir / 'warren.db'}"
        key = make_key(database_url)
        edge = edge_process(space.amqp_url, database_url, space.logs / "edge.log", settings={
            "WARREN_EDGE_PUBLISH_BATCH_MAX": str(args.batch),
            "WARREN_EDGE_PUBLISH_RATE": "1000000000/second",
        })
        port = await edge.start()
        connection = await connect(space.amqp_url, name="warren-bench-python-publisher")
        try:
            publisher = await Publisher.open(connection)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=60.0,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            ) as client:
                rounds = await alternate(args, publisher, client)
        finally:
            await connection.close()
            await edge.stop()
    report(rounds, args)


async def alternate(args: argparse.Namespace, publisher: Publisher,
                    client: httpx.AsyncClient) -> list[Round]:
    work = batches(args.events, args.batch)
    runs: dict[str, Callable[[], Awaitable[None]]] = {
        "python": lambda: python_round(publisher, work, args.concurrency),
        "http": lambda: http_round(client, work, args.concurrency),
    }
    for run in runs.values():  # warm-up: connections, caches, the key's lookup
        await run()
    rounds = []
    for index in range(args.rounds):
        for system, run in runs.items():
            measured = await timed(system, args.events, run)
            rounds.append(measured)
            print(f"round {index + 1} {system}: {measured.rate:,.0f} events/s "
                  f"(load {measured.load:.1f}, steal {measured.steal_pct:.0f} %)", flush=True)
    return rounds


def report(rounds: Sequence[Round], args: argparse.Namespace) -> None:
    rows = [[r.system, f"{r.events:,}", f"{r.wall_s:.2f}", f"{r.rate:,.0f}", f"{r.load:.1f}",
             f"{r.steal_pct:.0f}"] for r in rounds]
    print(format_table(["system", "events", "wall s", "events/s", "load", "steal %"],
                       rows, args.markdown))
    medians = {system: statistics.median(r.rate for r in rounds if r.system == system)
               for system in ("python", "http")}
    ranges = {system: (min(r.rate for r in rounds if r.system == system),
                       max(r.rate for r in rounds if r.system == system))
              for system in ("python", "http")}
    ratio = medians["http"] / medians["python"]
    summary = [
        [system, f"{medians[system]:,.0f}", f"{ranges[system][0]:,.0f} … {ranges[system][1]:,.0f}"]
        for system in ("python", "http")
    ]
    print()
    print(format_table(["system", "median events/s", "range"], summary, args.markdown))
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"\nhttp / python: {ratio:.0%} (target >= {TARGET_RATIO:.0%}: {verdict}); "
          f"batch {args.batch}, concurrency {args.concurrency}, {args.rounds} rounds of "
          f"{args.events:,} events; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--batch", type=int, default=500, help="events per request / gather")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="requests (or gathers) in flight at once")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each system")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_local(parser, args)
    uvloop.install()
    run_within(measure(args), BUDGET_S, "bench.http_publish")


if __name__ == "__main__":
    main()
