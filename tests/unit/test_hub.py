"""The per-process hub of open sockets, and the text framer."""

from __future__ import annotations

import asyncio
import struct

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from services.ws_edge.hub import Hub, TextFramer


class FakeSocket:
    def __init__(self, name: str, accept: bool = True) -> None:
        self.name = name
        self.accept = accept
        self.frames: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return self.accept

    def close_with(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def keepalive(self, now: float, interval_s: float) -> None:
        """The heartbeat is the keepalive's concern (tests/unit/test_keepalive.py)."""

    def __repr__(self) -> str:
        return f"FakeSocket({self.name!r})"


class SelfRemovingSocket(FakeSocket):
    """Closes itself on write (a slow consumer) and leaves the hub from inside dispatch."""

    def __init__(self, name: str, hub: Hub) -> None:
        super().__init__(name)
        self.hub = hub

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        self.hub.forget(self)
        return False


class ForgetOnClose(FakeSocket):
    def __init__(self, name: str, hub: Hub) -> None:
        super().__init__(name)
        self.hub = hub

    def close_with(self, code: int, reason: str) -> None:
        super().close_with(code, reason)
        self.hub.forget(self)


def with_ids(batch: list[tuple[str, bytes]]) -> list[tuple[str, bytes, str]]:
    """A batch as the consumer hands it over: each frame with its event's id."""
    return [(key, frame, f"id-{n}") for n, (key, frame) in enumerate(batch)]


def opened(hub: Hub, socket: FakeSocket, *keys: str) -> FakeSocket:
    hub.track(socket)
    hub.subscribe(socket, keys)
    return socket


# --- dispatch -------------------------------------------------------------------------


def test_dispatch_reaches_only_subscribers_of_the_key() -> None:
    hub = Hub()
    alice = opened(hub, FakeSocket("alice"), "user.alice", "group.ops", "broadcast")
    bob = opened(hub, FakeSocket("bob"), "user.bob", "broadcast")
    assert hub.dispatch("user.alice", b"f1") == 1
    assert hub.dispatch("group.ops", b"f2") == 1
    assert hub.dispatch("broadcast", b"f3") == 2
    assert hub.dispatch("user.carol", b"f4") == 0
    assert alice.frames == [b"f1", b"f2", b"f3"]
    assert bob.frames == [b"f3"]


def test_the_same_bytes_go_to_every_recipient() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "broadcast")
    b = opened(hub, FakeSocket("b"), "broadcast")
    frame = b"shared"
    hub.dispatch("broadcast", frame)
    assert a.frames[0] is frame
    assert b.frames[0] is frame


def test_duplicate_keys_deliver_once() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k", "k", "k")
    assert hub.dispatch("k", b"x") == 1
    assert a.frames == [b"x"]


def test_refusing_subscriber_is_not_counted() -> None:
    hub = Hub()
    good = opened(hub, FakeSocket("good"), "k")
    slow = opened(hub, FakeSocket("slow", accept=False), "k")
    assert hub.dispatch("k", b"x") == 1
    assert good.frames == [b"x"]
    assert slow.frames == [b"x"]


def test_subscriber_removing_itself_during_dispatch() -> None:
    hub = Hub()
    others = [opened(hub, FakeSocket(f"s{i}"), "k") for i in range(5)]
    leaver = SelfRemovingSocket("leaver", hub)
    opened(hub, leaver, "k")
    assert hub.dispatch("k", b"x") == 5
    assert all(s.frames == [b"x"] for s in others)
    assert leaver.frames == [b"x"]
    assert hub.dispatch("k", b"y") == 5
    assert leaver.frames == [b"x"]
    assert len(hub) == 5


def test_all_subscribers_removing_themselves_during_dispatch() -> None:
    hub = Hub()
    leavers = [SelfRemovingSocket(f"l{i}", hub) for i in range(4)]
    for leaver in leavers:
        opened(hub, leaver, "k")
    assert hub.dispatch("k", b"x") == 0
    assert all(leaver.frames == [b"x"] for leaver in leavers)
    assert hub.dispatch("k", b"y") == 0
    assert len(hub) == 0


def test_forget_stops_delivery() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k", "j")
    hub.forget(a)
    assert hub.dispatch("k", b"x") == 0
    assert hub.dispatch("j", b"x") == 0
    assert a.frames == []


def test_forget_of_unknown_subscriber_is_harmless() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    hub.forget(FakeSocket("stranger"))
    assert hub.dispatch("k", b"x") == 1
    assert len(hub) == 1
    hub.forget(a)
    hub.forget(a)
    assert len(hub) == 0


def test_subscribe_again_then_forget_stops_all_delivery() -> None:
    # forget() promises to "stop delivering to it": that must hold for every key the
    # subscriber was ever subscribed to, not only those of its last subscribe() call.
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "user.a")
    hub.subscribe(a, ["group.g"])
    hub.forget(a)
    assert hub.dispatch("group.g", b"x") == 0
    assert hub.dispatch("user.a", b"x") == 0
    assert a.frames == []


def test_len_counts_tracked_connections() -> None:
    hub = Hub()
    assert len(hub) == 0
    a = FakeSocket("a")
    hub.track(a)
    hub.track(a)
    hub.track(FakeSocket("b"))
    assert len(hub) == 2


def test_opening_counts_the_upgrades_being_admitted_whatever_ends_them() -> None:
    hub = Hub()
    with hub.admitting():
        with hub.admitting():
            assert hub.opening == 2
        assert hub.opening == 1
        with pytest.raises(RuntimeError), hub.admitting():
            assert hub.opening == 2
            raise RuntimeError("refused")
        assert hub.opening == 1
    assert hub.opening == 0


def test_open_connections_are_not_opening() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    handshaking = FakeSocket("handshaking")
    hub.track(handshaking)
    assert (len(hub), hub.opening) == (2, 0)
    hub.forget(a)
    hub.forget(handshaking)
    assert (len(hub), hub.opening) == (0, 0)


def test_subscribe_alone_does_not_track() -> None:
    hub = Hub()
    hub.subscribe(FakeSocket("a"), ["k"])
    assert len(hub) == 0


# --- dispatch_batch -------------------------------------------------------------------


def test_batch_gives_each_subscriber_its_frames_in_one_write_in_order() -> None:
    hub = Hub()
    alice = opened(hub, FakeSocket("alice"), "user.alice", "group.ops", "broadcast")
    bob = opened(hub, FakeSocket("bob"), "user.bob", "broadcast")
    carol = opened(hub, FakeSocket("carol"), "user.carol")
    batch = [("broadcast", b"b1"), ("user.alice", b"a1"), ("group.ops", b"g1"),
             ("user.bob", b"u1"), ("broadcast", b"b2"), ("user.nobody", b"n1")]
    assert hub.dispatch_batch(with_ids(batch)) == [2, 1, 1, 1, 2, 0]
    assert alice.frames == [b"b1a1g1b2"]
    assert bob.frames == [b"b1u1b2"]
    assert carol.frames == []


def test_batch_joins_the_same_frames_once_for_all_their_recipients() -> None:
    hub = Hub()
    members = [opened(hub, FakeSocket(f"m{i}"), "group.g", "broadcast") for i in range(3)]
    other = opened(hub, FakeSocket("other"), "broadcast")
    assert hub.dispatch_batch(with_ids([("broadcast", b"b"), ("group.g", b"g")])) == [4, 3]
    assert [m.frames for m in members] == [[b"bg"]] * 3
    assert members[0].frames[0] is members[1].frames[0] is members[2].frames[0]
    assert other.frames == [b"b"]


def test_batch_writes_a_lone_frame_as_is() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    b = opened(hub, FakeSocket("b"), "k", "j")
    frame = b"shared"
    assert hub.dispatch_batch(with_ids([("k", frame), ("j", b"only b")])) == [2, 1]
    assert a.frames[0] is frame
    assert b.frames == [b"sharedonly b"]


def test_batch_of_one_is_a_plain_dispatch() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    frame = b"x"
    assert hub.dispatch_batch(with_ids([("k", frame)])) == [1]
    assert a.frames[0] is frame


def test_batch_counts_nothing_for_a_refusing_subscriber() -> None:
    hub = Hub()
    good = opened(hub, FakeSocket("good"), "k", "j")
    slow = opened(hub, FakeSocket("slow", accept=False), "k", "j")
    assert hub.dispatch_batch(with_ids([("k", b"1"), ("j", b"2")])) == [1, 1]
    assert good.frames == [b"12"]
    assert slow.frames == [b"12"]


def test_batch_with_subscribers_leaving_during_the_writes() -> None:
    hub = Hub()
    others = [opened(hub, FakeSocket(f"s{i}"), "k") for i in range(3)]
    leaver = opened(hub, SelfRemovingSocket("leaver", hub), "k")
    assert hub.dispatch_batch(with_ids([("k", b"x"), ("k", b"y")])) == [3, 3]
    assert all(s.frames == [b"xy"] for s in others)
    assert leaver.frames == [b"xy"]
    assert hub.dispatch_batch(with_ids([("k", b"z"), ("k", b"w")])) == [3, 3]
    assert leaver.frames == [b"xy"]


# --- close_all and wait_empty ---------------------------------------------------------


def test_close_all_closes_every_tracked_socket() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    b = FakeSocket("b")
    hub.track(b)  # tracked but never subscribed (still in the handshake)
    untracked = FakeSocket("untracked")
    hub.subscribe(untracked, ["k"])
    hub.close_all(1001, "edge shutting down")
    assert a.closed == [(1001, "edge shutting down")]
    assert b.closed == [(1001, "edge shutting down")]
    assert untracked.closed == []


def test_close_all_skips_forgotten_sockets() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    hub.forget(a)
    hub.close_all(1001, "bye")
    assert a.closed == []


def test_close_all_tolerates_sockets_forgetting_themselves() -> None:
    hub = Hub()
    sockets = [ForgetOnClose(f"s{i}", hub) for i in range(5)]
    for s in sockets:
        opened(hub, s, "k")
    hub.close_all(1001, "bye")
    assert all(s.closed == [(1001, "bye")] for s in sockets)
    assert len(hub) == 0


async def test_wait_empty_returns_at_once_when_empty() -> None:
    await asyncio.wait_for(Hub().wait_empty(), 1)


async def test_wait_empty_completes_after_the_last_forget() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    b = opened(hub, FakeSocket("b"), "k")
    waiter = asyncio.ensure_future(hub.wait_empty())
    await asyncio.sleep(0)
    hub.forget(a)
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.forget(b)
    await asyncio.wait_for(waiter, 1)


async def test_wait_empty_blocks_again_after_a_new_track() -> None:
    hub = Hub()
    a = opened(hub, FakeSocket("a"), "k")
    hub.forget(a)
    await asyncio.wait_for(hub.wait_empty(), 1)
    hub.track(FakeSocket("b"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hub.wait_empty(), 0.05)


async def test_close_all_then_forget_empties_the_hub() -> None:
    hub = Hub()
    sockets = [ForgetOnClose(f"s{i}", hub) for i in range(3)]
    for s in sockets:
        opened(hub, s, "k")
    waiter = asyncio.ensure_future(hub.wait_empty())
    hub.close_all(1001, "bye")
    await asyncio.wait_for(waiter, 1)


# --- TextFramer -----------------------------------------------------------------------


def parse_server_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """Parse one unmasked frame by hand: (opcode, fin, payload). Fails on leftovers."""
    first, second = frame[0], frame[1]
    assert first & 0x70 == 0, "RSV bits must be clear"
    assert second & 0x80 == 0, "server frames must not be masked"
    length = second & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:]
    assert len(payload) == length
    return first & 0x0F, bool(first & 0x80), payload


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (10, b"\x81\x0a"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (200, b"\x81\x7e\x00\xc8"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f" + (65536).to_bytes(8, "big")),
        (70000, b"\x81\x7f" + (70000).to_bytes(8, "big")),
    ],
)
def test_text_frame_header_and_length_encoding(size: int, header: bytes) -> None:
    payload = b"x" * size
    frame = TextFramer().text(payload)
    assert frame[: len(header)] == header
    assert frame[len(header) :] == payload
    assert len(frame) == len(header) + size


@pytest.mark.parametrize("size", [10, 200, 70000])
def test_text_frame_parses_back_by_hand(size: int) -> None:
    payload = ("é" * (size // 2)).encode()  # two bytes each: `size` bytes of valid UTF-8
    assert len(payload) == size
    opcode, fin, body = parse_server_frame(TextFramer().text(payload))
    assert opcode == 0x1
    assert fin
    assert body == payload


@pytest.mark.parametrize("size", [10, 200, 70000])
def test_text_frame_parses_back_with_a_wsproto_client(size: int) -> None:
    text = ("ab€" * size)[:size]
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(TextFramer().text(text))
    frames = list(client.received_frames())
    assert len(frames) == 1
    assert frames[0].opcode is Opcode.TEXT
    assert frames[0].frame_finished and frames[0].message_finished
    assert frames[0].payload == text


def test_str_and_bytes_give_the_same_frame() -> None:
    framer = TextFramer()
    assert framer.text("héllo") == framer.text("héllo".encode())


def test_framer_is_reusable() -> None:
    framer = TextFramer()
    first = framer.text(b'{"a":1}')
    second = framer.text(b'{"a":1}')
    assert first == second
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(first + second + framer.text(b"z"))
    assert [f.payload for f in client.received_frames()] == ['{"a":1}', '{"a":1}', "z"]


def test_text_rejects_invalid_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        TextFramer().text(b"\xff\xfe")


# --- sockets per user -------------------------------------------------------------------


def test_slots_are_counted_per_user_up_to_the_limit() -> None:
    hub = Hub()
    assert [hub.take_slot("alice", 2) for _ in range(3)] == [True, True, False]
    assert hub.take_slot("bob", 2)
    assert (hub.slots("alice"), hub.slots("bob")) == (2, 1)
    hub.free_slot("alice")
    assert hub.take_slot("alice", 2)
    assert not hub.take_slot("alice", 2)


def test_a_limit_of_zero_is_no_limit() -> None:
    hub = Hub()
    assert all(hub.take_slot("alice", 0) for _ in range(1000))
    assert hub.slots("alice") == 1000


def test_a_user_whose_slots_are_all_free_is_forgotten() -> None:
    hub = Hub()
    hub.take_slot("alice", 5)
    hub.take_slot("alice", 5)
    hub.free_slot("alice")
    hub.free_slot("alice")
    assert hub.slots("alice") == 0
    assert hub._slots == {}  # no entry kept per user ever seen
