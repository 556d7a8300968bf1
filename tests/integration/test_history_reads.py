"""A ``history`` frame is answered when its read is done, without holding up the
connection's other frames, one at a time per connection (docs/protocol.md 17.4)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher
from services.ws_edge.server import EdgeServer
from tests.support.client import Client

BACKLOG = 3000  # events in the stream: a read of all of them takes a while


async def replies(client: Client, refs: set[str]) -> dict[str, dict[str, Any]]:
    """The replies to ``refs``, in the order they arrive (as a dict, which keeps it)."""
    got: dict[str, dict[str, Any]] = {}
    while set(got) != refs:
        frame = await client.recv(timeout=30)
        if frame.get("type") in ("ack", "error") and frame.get("ref") in refs:
            got[frame["ref"]] = frame
    return got


async def test_frames_after_a_history_request_are_handled_while_it_reads(
    edge: EdgeServer, publisher: Publisher, token_for: Callable[..., str]
) -> None:
    sender = Address.service("t")
    await asyncio.gather(*(
        publisher.publish_event(Envelope("message", Address.user("bob"), sender, {"n": n}))
        for n in range(BACKLOG)
    ))
    alice = await Client.connect(edge.port, token_for("alice"))
    # Sent back to back: the history read, a second one, and a message to herself.
    await alice.send({"type": "history", "ref": "read", "data": {"key": "user:alice"}})
    await alice.send({"type": "history", "ref": "again", "data": {"key": "user:alice"}})
    await alice.send({"type": "message.send", "ref": "send", "to": "user:alice", "data": {}})
    got = await replies(alice, {"read", "again", "send"})
    assert got["again"]["data"]["code"] == "rate_limited", got["again"]
    assert got["send"]["type"] == "ack" and got["read"]["type"] == "ack"
    assert list(got).index("send") < list(got).index("read")  # not held up by the read
    assert got["read"]["data"]["events"] == []  # bob's events are not hers
    # Refused for being busy is not a strike, and the connection goes on.
    reply = await alice.request({"type": "history", "ref": "later", "data": {"key": "user:alice"}})
    assert reply["type"] == "ack"
