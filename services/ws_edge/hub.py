"""Which local sockets hold which routing keys, and the fan-out to them.

A message is framed once; the same bytes are written to every recipient's stream.
Messages that arrive together are fanned out together: each socket gets all of its
frames of the batch in one write, so a busy edge makes fewer system calls per event.
Sockets that get the same frames (the members of a group, everyone for a broadcast)
share one joined buffer; frames are only ever concatenated, never built per socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, cast

from wsproto.frame_protocol import FrameProtocol


class Subscriber(Protocol):
    def send_frame(self, frame: bytes) -> bool: ...
    def close_with(self, code: int, reason: str) -> None: ...
    def keepalive(self, now: float, interval_s: float) -> float | None:
        """Send the heartbeat (services/ws_edge/keepalive.py); return when to be visited
        next, or None once closed."""
        ...


class Holder(Subscriber, Protocol):
    """A subscriber whose events are held back while it recovers (docs/protocol.md 17.3)."""

    def hold_frame(self, event_id: str, frame: bytes) -> None: ...


class TextFramer:
    """Builds complete, unmasked, uncompressed server text frames (RFC 6455)."""

    def __init__(self) -> None:
        self._protocol = FrameProtocol(client=False, extensions=[])

    def text(self, payload: bytes | str) -> bytes:
        text = payload if isinstance(payload, str) else payload.decode("utf-8")
        return bytes(self._protocol.send_data(text, fin=True))


class Hub:
    """Open connections of this process, the routing keys each one receives, and how
    many sockets each user holds."""

    def __init__(self) -> None:
        self._open: set[Subscriber] = set()
        self._by_key: dict[str, set[Subscriber]] = {}
        self._keys: dict[Subscriber, tuple[str, ...]] = {}
        self._slots: dict[str, int] = {}
        # Sockets that recover: their events are handed to them to hold, not written.
        self._held_by_key: dict[str, set[Holder]] = {}
        self._held_keys: dict[Subscriber, tuple[str, ...]] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._opening = 0

    def __len__(self) -> int:
        return len(self._open)

    @property
    def opening(self) -> int:
        """Upgrades waiting for their keys to be bound and their user to be read
        (:meth:`admitting`)."""
        return self._opening

    @contextlib.contextmanager
    def admitting(self) -> Iterator[None]:
        """Count one upgrade in :attr:`opening` for as long as the block runs."""
        self._opening += 1
        try:
            yield
        finally:
            self._opening -= 1

    def take_slot(self, user_id: str, limit: int) -> bool:
        """Count one more socket of ``user_id`` unless it holds ``limit`` already (0: no
        limit); False if it does. Taken at the handshake, before the upgrade, so sockets
        still upgrading or waiting for their bindings count too; every slot taken must
        be given back once with :meth:`free_slot`."""
        held = self._slots.get(user_id, 0)
        if limit and held >= limit:
            return False
        self._slots[user_id] = held + 1
        return True

    def free_slot(self, user_id: str) -> None:
        held = self._slots[user_id] - 1
        if held:
            self._slots[user_id] = held
        else:
            del self._slots[user_id]

    def slots(self, user_id: str) -> int:
        """The sockets ``user_id`` holds on this edge (handshakes past the check included)."""
        return self._slots.get(user_id, 0)

    def track(self, subscriber: Subscriber) -> None:
        """A connection opened; it is closed by :meth:`close_all` from now on."""
        self._open.add(subscriber)
        self._empty.clear()

    def subscribe(self, subscriber: Subscriber, keys: Iterable[str]) -> None:
        """Deliver events for ``keys`` (and only those) to ``subscriber`` from now on."""
        self._unsubscribe(subscriber)
        held = tuple(dict.fromkeys(keys))
        self._keys[subscriber] = held
        for key in held:
            self._by_key.setdefault(key, set()).add(subscriber)

    def hold(self, holder: Holder, keys: Iterable[str]) -> None:
        """Hand events for ``keys`` to ``holder.hold_frame`` instead of writing them,
        until :meth:`subscribe` (which a recovering socket calls once it has written
        what it held: the two happen in one step of the loop, so nothing falls between)."""
        self._unsubscribe(holder)
        held = tuple(dict.fromkeys(keys))
        self._held_keys[holder] = held
        for key in held:
            self._held_by_key.setdefault(key, set()).add(holder)

    def subscribed(self) -> tuple[Subscriber, ...]:
        """The connections that receive their events live now (not held back)."""
        return tuple(self._keys)

    def held(self) -> tuple[Holder, ...]:
        """The connections whose events are held back now (:meth:`hold`)."""
        # Only hold() adds to _held_keys, and only holders.
        return cast(tuple[Holder, ...], tuple(self._held_keys))

    def forget(self, subscriber: Subscriber) -> None:
        """A connection closed: stop delivering to it and stop tracking it."""
        self._unsubscribe(subscriber)
        self._open.discard(subscriber)
        if not self._open:
            self._empty.set()

    def _unsubscribe(self, subscriber: Subscriber) -> None:
        for key in self._keys.pop(subscriber, ()):
            holders = self._by_key.get(key)
            if holders is not None:
                holders.discard(subscriber)
                if not holders:
                    del self._by_key[key]
        if self._held_keys:
            for key in self._held_keys.pop(subscriber, ()):
                held = self._held_by_key.get(key)
                if held is not None:
                    held.discard(subscriber)
                    if not held:
                        del self._held_by_key[key]

    def _hand_held(self, key: str, frame: bytes, event_id: str) -> None:
        for holder in tuple(self._held_by_key.get(key, ())):
            holder.hold_frame(event_id, frame)

    def dispatch(self, key: str, frame: bytes, event_id: str = "") -> int:
        """Write ``frame`` to every subscriber of ``key``; return how many took it."""
        if self._held_by_key:
            self._hand_held(key, frame, event_id)
        holders = self._by_key.get(key)
        if not holders:
            return 0
        delivered = 0
        # A write can close a slow subscriber, which removes it: iterate a snapshot.
        for subscriber in tuple(holders):
            if subscriber.send_frame(frame):
                delivered += 1
        return delivered

    def dispatch_batch(self, messages: Sequence[tuple[str, bytes, str]]) -> list[int]:
        """Write each ``(key, frame, event id)`` to the subscribers of its key, in order;
        return how many took each. A subscriber's frames of the batch go out in one write."""
        if len(messages) == 1:
            return [self.dispatch(*messages[0])]
        if self._held_by_key:
            for key, frame, event_id in messages:
                self._hand_held(key, frame, event_id)
        outbox: dict[Subscriber, list[int]] = {}
        for index, (key, _frame, _id) in enumerate(messages):
            for subscriber in self._by_key.get(key, ()):
                mine = outbox.get(subscriber)
                if mine is None:
                    outbox[subscriber] = [index]
                else:
                    mine.append(index)
        delivered = [0] * len(messages)
        joined: dict[tuple[int, ...], bytes] = {}
        for subscriber, indices in outbox.items():
            if len(indices) == 1:
                data = messages[indices[0]][1]
            else:
                which = tuple(indices)
                data = joined.get(which, b"")
                if not data:
                    data = joined[which] = b"".join([messages[i][1] for i in indices])
            if subscriber.send_frame(data):
                for i in indices:
                    delivered[i] += 1
        return delivered

    def close_all(self, code: int, reason: str) -> None:
        for subscriber in tuple(self._open):
            subscriber.close_with(code, reason)

    async def wait_empty(self) -> None:
        await self._empty.wait()
