"""An edge SIGKILLed under load: its 200 Python clients (warren.client) reconnect to the
other edge with their positions and recover, and across all of them, after the client's
de-duplication, no event is lost, none repeated, none out of order (docs/protocol.md 17).

Two edges as OS processes on the shared broker, in the test's vhost (no ``warren up``:
only edges take part). One publisher, at a steady rate, to the clients' users, their
groups (20 clients each) and broadcast, before, during and after the recovery.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable

import pytest

from shared.messaging import ADDRESS_BROADCAST, Address
from shared.messaging.broker import Publisher
from tests.support.edge import Spawn, spawn_edge  # noqa: F401  (a fixture)
from tests.support.history import Feed
from tests.support.recovery_audit import Inbox, Watch, addressed, audit, instance_of, steady, url
from warren.client import Client, StateChange

__all__ = ["spawn_edge"]  # a fixture, used by name

CLIENTS = 200
GROUPS = 10
RATE = 150  # events a second: 1 in 6 broadcast, 1 in 6 to a group, the rest to users
CONNECT_BATCH = 50  # at most this many upgrades at once: all must land on edge A
RECOVER_TIMEOUT = 120.0
SETTLE_TIMEOUT = 60.0


def user(i: int) -> Address:
    return Address.user(f"u{i:03d}")


def group(i: int) -> Address:
    return Address.group(f"g{i % GROUPS}")


def rotation() -> list[Address]:
    """One pass over every user, in rounds of broadcast, a group, four users."""
    addresses: list[Address] = []
    for r in range(CLIENTS // 4):
        addresses += [ADDRESS_BROADCAST, group(r), *(user(4 * r + k) for k in range(4))]
    return addresses


@pytest.mark.timeout(400)
async def test_an_edge_killed_under_load_its_200_clients_recover_everything_on_the_other(
    spawn_edge: Spawn, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    edge_a, edge_b = await spawn_edge(), await spawn_edge()
    a, b = await instance_of(edge_a), await instance_of(edge_b)
    loop = asyncio.get_running_loop()
    watch = Watch()
    recovered_at: dict[int, float] = {}
    not_recovered: list[StateChange] = []

    def on_state(i: int) -> Callable[[StateChange], None]:
        def listener(change: StateChange) -> None:
            welcome = change.welcome
            if welcome is not None and welcome.edge == b:
                if welcome.recovered is not True:
                    not_recovered.append(change)
                elif change.state == "connected":
                    recovered_at.setdefault(i, loop.time())
            watch.poke()
        return listener

    clients = [Client([url(edge_a.port), url(edge_b.port)],
                      token=token_for(user(i).name, (group(i).name,)))
               for i in range(CLIENTS)]
    keys = [{str(user(i)), str(group(i)), str(ADDRESS_BROADCAST)} for i in range(CLIENTS)]
    inboxes = [Inbox(client, watch) for client in clients]
    for i, client in enumerate(clients):
        client.on_state(on_state(i))
    try:
        for start in range(0, CLIENTS, CONNECT_BATCH):
            batch = clients[start:start + CONNECT_BATCH]
            await asyncio.wait_for(asyncio.gather(*(c.connect() for c in batch)), 60)
        assert all(c.welcome is not None and c.welcome.edge == a for c in clients)

        feed = Feed(publisher, event_type="test.tick")
        stop = asyncio.Event()
        flowing = asyncio.create_task(steady(feed, rotation(), RATE, stop, watch))
        await watch.expect(lambda: len(feed.published) >= 2 * RATE
                           and all(inbox.events for inbox in inboxes), "events flowing")

        await edge_a.kill()
        killed_at, killed_after = loop.time(), len(feed.published)
        await watch.expect(lambda: len(recovered_at) == CLIENTS or bool(not_recovered),
                           "every client recovered on edge B", RECOVER_TIMEOUT)
        assert not not_recovered, not_recovered[:3]
        all_recovered = loop.time()
        recovered_after = len(feed.published)
        await watch.expect(lambda: len(feed.published) >= recovered_after + RATE,
                           "live events after the recovery")
        stop.set()
        await flowing
        await watch.until(lambda: all(
            inbox.has_all(addressed(feed.published, mine))
            for inbox, mine in zip(inboxes, keys)), SETTLE_TIMEOUT)

        audits = [audit(inbox.events, feed.published, mine)
                  for inbox, mine in zip(inboxes, keys)]
        lost = sum(result.lost for result in audits)
        repeated = sum(result.repeated for result in audits)
        foreign = sum(result.foreign for result in audits)
        disordered = sum(len(result.disordered) for result in audits)
        delivered = sum(len(inbox.events) for inbox in inboxes)
        waits = sorted(at - killed_at for at in recovered_at.values())
        print(
            f"\n{CLIENTS} clients; {len(feed.published)} events published "
            f"({recovered_after - killed_after} between the kill and the last recovery), "
            f"{delivered} delivered; lost {lost}, repeated {repeated}, foreign {foreign}, "
            f"keys out of order {disordered}; recovered all in {all_recovered - killed_at:.2f} s "
            f"(median client {statistics.median(waits):.2f} s); replayed "
            f"{sum(c.stats.replayed for c in clients)}, repeats the clients dropped "
            f"{sum(c.stats.duplicates for c in clients)}, connects "
            f"{sum(c.stats.connects for c in clients)}"
        )
        assert (lost, repeated, foreign, disordered) == (0, 0, 0, 0), [
            result for result in audits if not result.ok][:3]
        assert all(c.state == "connected" and c.welcome is not None and c.welcome.edge == b
                   for c in clients)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
