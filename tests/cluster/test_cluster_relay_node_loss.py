"""The node a Cat relay's own broker connection is on stops while that relay answers an
ask (issue 18).

``warren up`` runs two replicas of every service against the three-node cluster through
HAProxy, with the v1 Cat double answering slowly (a frame every 0.1 s: about 2.5 s an
answer). Four users, two on each edge, ask the Cat throughout: each an ask a second
while fewer than two of theirs are unanswered. Then alice asks a question that the
double holds unanswered until the test releases it: the relay that sent it to the Cat
owns alice's session and is answering her ask now. The node its connection is on is
found by the connection's name (``warren-relay-N-<host>``, given by ``connect(name=...)``)
and checked against the broker's own view, the node of the session queue's active
consumer. Each user asks twice more at once, so that asks wait behind those being
answered, and exactly that node is stopped, whatever else is on it (the other relay, an
edge, the leader of alice's session queue: the test prints what was).

The relay loses its connection mid-answer and lets alice's session go; the broker
returns its claim and the asks it held; a replica (the other one, or this one back
first) takes the session and opens a new Cat socket for alice. The test releases the
held answer at that moment: the double writes its end to alice's newest socket, the new
owner's, which is waiting for the answer to a later ask (the case in which the v1
client skips a reply that is not its ask's, docs/cat_relay.md). While the node is down:

- the relay that lost its connection logs the outage, is connected again through
  HAProxy to another node, ready, and serves again: ``POST /send`` through it is
  answered, and it takes a new user's session (holds the user's Cat socket) and answers.

Then the asking stops, and, counted exactly:

- every accepted ask ended exactly once, on the user's open socket and in the history
  stream alike, with its own reply or ``interrupted`` (the held ask, and any other a
  relay held when its connection broke); never two endings, never none;
- each user's asks ended in the order asked, reached the Cat in that order, none twice;
- a relay skipped the end of another ask's answer at least once (it logs so): the held
  answer's end met its new owner mid-answer, as it was meant to;
- the sockets stayed open;
- with the node back: nothing dead-lettered, nothing left in ``chat.ask`` or in a
  session queue.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import pytest
from tornado.simple_httpclient import HTTPTimeoutError

from shared.messaging.names import Command, chat_session_queue_name, work_queue_name
from tests.chaos.watch import Frame, Watcher, api, is_event, until
from tests.cluster.load import ChatLoad, ask_endings, outages, replay_since
from tests.support.cat_v1 import reply_for
from tests.support.cluster import RabbitCluster
from tests.support.system import System

USERS = ("alice", "bob", "carol", "dave")
HELD_USER = "alice"
HOLD = "!hold"  # the double answers it once the test sets ``cat.hold`` (tests/support/cat_v1.py)
# Long enough that an answer (26 frames) outlasts the held one's end (6 frames) by
# seconds: the held end reaches the new owner's socket while that one still waits.
QUESTION = "how does Warren keep my asks in order when a node stops?"
CAT_PACE_S = 0.1
ASK_EVERY_S = 1.0
DEPTH = 2  # a user asks again only while fewer than this many are unanswered
BURST = 2  # asks per user at once, just before the stop
NEW_USERS = ("erin", "frank", "grace", "heidi", "ivan", "judy")  # for the relay's new sessions
SKIPPED = "ignored the Cat's reply to another ask of the same user"
WAIT_S = 30.0
TAKEOVER_S = 60.0
READY_S = 60.0
SETTLE_S = 120.0


@pytest.mark.timeout(600)
async def test_the_node_of_a_relay_answering_an_ask_stops(
    rabbit_cluster: RabbitCluster, cluster_vhost: str,
    warren_up: Callable[..., Awaitable[System]], token_for: Callable[..., str],
) -> None:
    cluster, vhost = rabbit_cluster, cluster_vhost
    began = time.monotonic()
    system = await warren_up()
    cat = system.cat
    cat.pace_s = CAT_PACE_S
    relays, edges = system.names("relay"), system.names("edge")
    assert len(relays) == len(edges) == 2, system.children()
    tokens = {user: token_for(user) for user in USERS}
    edge_of = {user: edges[n % len(edges)] for n, user in enumerate(USERS)}
    watchers = {user: await Watcher.connect(system.port(edge_of[user]), tokens[user])
                for user in USERS}
    load = ChatLoad(watchers, ASK_EVERY_S, DEPTH, QUESTION)
    try:
        load.start()
        # Each user answered once: each has a session, on one relay or the other.
        for watcher in watchers.values():
            await watcher.wait_for(is_event("chat.reply"), WAIT_S)

        # alice's next ask waits in the Cat: the relay that sent it is answering it.
        held = await load.ask(HELD_USER, HOLD)
        assert held is not None, load.refused
        await asyncio.wait_for(cat.holding.wait(), WAIT_S)
        cat_port = cat.peer_ports[HELD_USER]
        relay = await asyncio.to_thread(system.owner_of_port, "relay", cat_port)
        placed = await asyncio.to_thread(cluster.connections, vhost)
        relay_nodes = {name: _nodes_of(placed, name) for name in relays}
        edge_nodes = {name: _nodes_of(placed, name) for name in edges}
        assert all(len(nodes) == 1 for nodes in relay_nodes.values()), relay_nodes
        (node,) = relay_nodes[relay]
        # The broker agrees: the session queue's active consumer is on that node.
        session_queue = chat_session_queue_name(HELD_USER)
        consumers = await asyncio.to_thread(cluster.consumers, vhost, session_queue)
        assert [c.node for c in consumers if c.active] == [node], (consumers, relay_nodes)
        session = await asyncio.to_thread(cluster.replicas, vhost, session_queue)
        # Asks waiting behind those being answered, for every user, when the node stops.
        for _ in range(BURST):
            for user in USERS:
                assert await load.ask(user) is not None, load.refused
        in_flight = {user: len(load.unanswered(user)) for user in USERS}
        assert held in load.unanswered(HELD_USER)
        assert all(n >= BURST for n in in_flight.values()), in_flight

        mark = system.up.mark()
        stop_began = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(cluster.stop, node))
        try:
            # alice's session has a new owner once a new Cat socket asks for her: release
            # the held answer now, while that socket waits for its own ask's.
            await until(lambda: cat.peer_ports.get(HELD_USER) != cat_port, TAKEOVER_S,
                        f"{HELD_USER}'s session taken over (a new Cat socket)")
            taken_over = time.monotonic()
            cat.hold.set()
            new_owner = await asyncio.to_thread(system.owner_of_port, "relay",
                                                cat.peer_ports[HELD_USER])
        finally:
            await stopping
        stopped = time.monotonic()

        # The relay is connected again through HAProxy, to another node, and ready.
        outage = await asyncio.to_thread(
            system.up.wait_for,
            re.compile(rf"^{re.escape(relay)}\s+\|.*broker reconnected after ([0-9.]+) s"),
            READY_S, mark,
        )
        await system.wait_ready(READY_S, services=("relay",))
        ready = time.monotonic()
        now_on = await asyncio.to_thread(cluster.node_of, vhost, f"warren-{relay}-")
        assert now_on != node, now_on
        # It serves again: answers POST /send, takes a new user's session and answers it.
        new_user, tries = await _serves_again(system, relay, token_for)
        served = time.monotonic()

        await load.stop()
        await load.all_ended(SETTLE_S)
        settled = time.monotonic()
        closed = {user: w.close_code for user, w in watchers.items() if w.closed}
        assert closed == {}, closed
        # Every ask ended once, in order, on the open socket and in the history stream.
        problems: dict[str, list[str]] = {}
        for user in USERS:
            replayed = await replay_since(system.port(edge_of[user]), tokens[user],
                                          watchers[user].welcome["data"]["position"])
            for where, endings in (("live", load.endings(user)),
                                   ("stream", ask_endings(replayed, load.asks[user]))):
                found = load.problems(user, endings, cat.asks[user])
                if found:
                    problems[f"{user} ({where})"] = [*found, _story(load, user, endings)]
        assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())
        held_ending = next(e for e in load.endings(HELD_USER) if e["data"]["ask_id"] == held)
        assert (held_ending["type"], held_ending["data"].get("code")) == (
            "chat.error", "interrupted"), held_ending
        interrupted = {user: n for user in USERS if (n := sum(
            1 for e in load.endings(user) if e["type"] == "chat.error"))}
        # The end of the held answer reached the new owner's socket mid-answer, and was
        # skipped there (its own reply came right, as checked above).
        skipped = sum(1 for line in system.up.output().splitlines()[mark:] if SKIPPED in line)
        assert skipped >= 1, "no relay met the end of another ask's answer"

        restart_began = time.monotonic()
        await asyncio.to_thread(cluster.start_node, node)
        back = time.monotonic()
        # Counted with every node up: a classic dead-letter queue may live on the one
        # that was down.
        depths = await asyncio.to_thread(cluster.queue_depths, vhost)
        dead = {q: n for q, n in depths.items() if n != 0 and q.endswith(".dead")}
        assert dead == {}, dead
        kept = {work_queue_name(Command.CHAT_ASK),
                *(chat_session_queue_name(user) for user in (*USERS, *NEW_USERS))}
        waiting = {q: n for q, n in depths.items() if q in kept and n != 0}
        assert waiting == {}, waiting
        asked = {user: len(asks) for user, asks in load.asks.items()}
        refused = Counter(str(error["data"].get("code")) for _text, error in load.refused)
        answered_anyway = load.refused_but_asked([t for u in USERS for t in cat.asks[u]])
        print(
            f"\n{relay} answering {HELD_USER}'s ask, connected to {node}; relays on "
            f"{_named(relay_nodes)}, edges on {_named(edge_nodes)}; {node} "
            f"{'led' if session.leader == node else 'did not lead'} {session_queue} (leader "
            f"{session.leader}); asks unanswered at the stop {in_flight}. {node} stopped in "
            f"{stopped - stop_began:.2f} s; {HELD_USER}'s session taken over by {new_owner} "
            f"{taken_over - stop_began:.2f} s after the stop began; {relay} logged an "
            f"outage of {outage.group(1)} s (every outage: {outages(system, mark)}), was "
            f"on {now_on} and every relay ready {ready - stop_began:.2f} s after the stop "
            f"began, and owned {new_user}'s session after {tries} new user(s), "
            f"{served - stop_began:.2f} s; every ask ended {settled - stop_began:.2f} s "
            f"after it. Asks accepted {asked}, refused {dict(refused)} (of them sent to the "
            f"Cat all the same: {answered_anyway}), ended "
            f"interrupted {interrupted}; the Cat's end of another ask skipped {skipped} "
            f"time(s); node back in {back - restart_began:.2f} s; the test took "
            f"{time.monotonic() - began:.2f} s"
        )
    finally:
        cat.hold.set()  # the held answer must not outlive the test
        await load.close()
        for watcher in watchers.values():
            await watcher.close()


async def _serves_again(
    system: System, relay: str, token_for: Callable[..., str]
) -> tuple[str, int]:
    """``POST /send`` through ``relay``, as new users in turn, until one's session is the
    relay's own (it holds the user's Cat socket): answered each time, and claims taken
    again (handed out round robin). The user, and how many were tried."""
    for tries, user in enumerate(NEW_USERS, 1):
        text = f"{user} 0: {QUESTION}"
        try:
            status, body = await api(system.port(relay), token_for(user), "/send",
                                     method="POST", body={"user_id": user, "message": text})
        except HTTPTimeoutError:
            raise AssertionError(f"POST /send through {relay}, as {user}, not answered within "
                                 f"{WAIT_S:g} s") from None
        assert (status, body) == (200, {"response": reply_for(text)}), (user, status, body)
        owner = await asyncio.to_thread(system.owner_of_port, "relay",
                                        system.cat.peer_ports[user])
        if owner == relay:
            return user, tries
    raise AssertionError(f"{relay} took none of {len(NEW_USERS)} new users' sessions")


def _story(load: ChatLoad, user: str, endings: list[Frame]) -> str:
    """The user's asks and how they ended, in the order each happened, by text: for a
    failure's message."""
    texts = dict(load.asks.get(user, []))
    asked = [text for _ask, text in load.asks.get(user, [])]
    ended = [(texts.get(e["data"]["ask_id"], e["data"]["ask_id"]),
              e["data"].get("code") or "reply") for e in endings]
    return f"asked {asked}; ended {ended}"


def _nodes_of(connections: Mapping[str, str], child: str) -> set[str]:
    """The nodes the connections of ``child`` (``relay-1``...) are on: its instance id,
    hence its connections' names, begin with the child's name."""
    return {node for name, node in connections.items() if name.startswith(f"warren-{child}-")}


def _named(nodes: Mapping[str, set[str]]) -> dict[str, str]:
    return {child: ", ".join(sorted(on)) for child, on in nodes.items()}
