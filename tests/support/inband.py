"""The in-band replay of docs/protocol.md 17.5, as a raw socket and the Python client
see it: which ``replay.done`` is the in-band one, and what is wrong with what a socket
that stayed open received across its edge's broker outage."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from shared.messaging import Envelope
from tests.support.history import Frame, is_event
from warren.client import Event


def in_band(frame: Frame) -> bool:
    """The ``replay.done`` of an in-band replay (17.5), not of a ``?since=`` recovery."""
    return not is_event(frame) and frame.get("type") == "replay.done" \
        and "recovered" in frame.get("data", {})


def gap_problems(
    frames: Sequence[Frame],
    published: Sequence[Envelope],
    keys: Collection[str],
    *,
    window: float,
    doubtful: Collection[tuple[str, int]] = (),
) -> list[str]:
    """What is wrong with what one socket, open before the first event was published,
    received: every event published to its keys exactly once after de-duplication by
    id, in order per key, nothing else; a repeat only before an in-band ``replay.done``
    and no older than its ``since`` minus the window. ``doubtful``: (key, number) of
    publishes whose outcome the publisher never learnt; they may be there or not."""
    problems: list[str] = []
    known = {envelope.id for envelope in published}
    seen: set[str] = set()
    numbers: dict[str, list[int]] = {key: [] for key in keys}
    dones = [index for index, frame in enumerate(frames) if in_band(frame)]
    for index, frame in enumerate(frames):
        if not is_event(frame):
            continue
        done = next((frames[i] for i in dones if i > index), None)
        if frame["to"] not in keys:
            problems.append(f"an event for {frame['to']}: {frame['data']}")
            continue
        if frame["id"] in seen:
            if done is None:
                problems.append(f"{frame['data']} again, with no replay after it")
            elif frame["ts"] < done["data"]["since"] - window:
                problems.append(f"{frame['data']} again, older than the replay's window")
            continue
        seen.add(frame["id"])
        number = frame["data"]["n"]
        if frame["id"] not in known and (frame["to"], number) not in doubtful:
            problems.append(f"an event never published: {frame['data']}")
        numbers[frame["to"]].append(number)
    for key, got in numbers.items():
        if got != sorted(set(got)):
            problems.append(f"{key}: out of order: {got}")
        expected = [e.data["n"] for e in published if str(e.to) == key]
        missing = sorted(set(expected) - set(got))
        if missing:
            problems.append(f"{key}: {len(missing)} of {len(expected)} missing: {missing[:10]}")
    return problems


def client_problems(events: Sequence[Event], published: Sequence[Envelope],
                    keys: Collection[str]) -> list[str]:
    """The same for what the Python client delivered: it de-duplicated, so no repeat."""
    return gap_problems([event.to_dict() for event in events], published, keys, window=0.0)
