"""Publishing over HTTP (docs/protocol.md 15): the settings, the events a body holds, and
the per-key rate limit. Pure logic; the handlers are in handlers/publish.py.

An event is checked as a WebSocket ``message.send`` is: the same address syntax
(``parse_destination``), the same type syntax (``check_type``), ``data`` a JSON object no
larger than a frame the edge accepts (``WARREN_EDGE_MAX_FRAME_BYTES``). ``from`` is never
read from the body: the edge sets it to ``service:<key name>``, and refuses a body that
names another sender.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from shared.config import ConfigError, Env, env_float, env_int, env_str
from shared.messaging import Address, AddressError, Envelope, new_id, parse_destination
from shared.messaging.names import check_type

#: A client-supplied event id: a name, which a UUID's text also is.
EVENT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Fields an event may have. ``from`` may only repeat what the edge sets (the key's
#: service), so that a body copied from an envelope works; any other sender is refused.
EVENT_FIELDS: Final = frozenset({"to", "type", "data", "id", "from"})


@dataclass(frozen=True, slots=True)
class PublishSettings:
    batch_max: int = 500  # events in one POST /api/publish/batch
    max_body_bytes: int = 4 << 20
    rate: RateLimitItem = parse("1000/second")  # events per key
    key_cache_s: float = 10.0  # how long a verified key is trusted without a lookup

    @classmethod
    def from_env(cls, env: Env) -> PublishSettings:
        raw_rate = env_str(env, "WARREN_EDGE_PUBLISH_RATE", "1000/second")
        try:
            rate = parse(raw_rate)
        except ValueError as exc:
            raise ConfigError(
                f"WARREN_EDGE_PUBLISH_RATE must be a rate such as 1000/second, got {raw_rate!r}"
            ) from exc
        return cls(
            batch_max=env_int(env, "WARREN_EDGE_PUBLISH_BATCH_MAX", 500, minimum=1),
            max_body_bytes=env_int(env, "WARREN_EDGE_PUBLISH_MAX_BODY_BYTES", 4 << 20, minimum=1024),
            rate=rate,
            key_cache_s=env_float(env, "WARREN_EDGE_KEY_CACHE_S", 10.0, minimum=0.0),
        )

    def __post_init__(self) -> None:
        if self.batch_max > self.rate.amount:
            raise ConfigError(
                f"WARREN_EDGE_PUBLISH_BATCH_MAX ({self.batch_max}) is more events than "
                f"WARREN_EDGE_PUBLISH_RATE allows per window ({self.rate.amount}): "
                "a full batch could never be published"
            )


class EventError(ValueError):
    """One event of a publish that the edge refuses; ``field`` names what is wrong."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field

    def to_json(self, index: int | None = None) -> dict[str, Any]:
        placed = {} if index is None else {"index": index}
        return {**placed, "field": self.field, "error": self.code, "message": str(self)}


class BatchError(ValueError):
    """A batch with invalid events: none of it is published."""

    def __init__(self, errors: Sequence[tuple[int, EventError]], total: int) -> None:
        super().__init__(f"{len(errors)} of {total} events are invalid; none was published")
        self.code = "invalid_batch"
        self.errors = errors


class BadBody(ValueError):
    """A body that is not the JSON the endpoint takes; ``field`` names what is wrong."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class BodyTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes (WARREN_EDGE_PUBLISH_MAX_BODY_BYTES)")


class PublishThrottled(Exception):
    """The key published more events than ``WARREN_EDGE_PUBLISH_RATE`` allows."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"this key's publish rate is used up; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def load_body(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBody("bad_request", None, f"the body is not JSON: {exc}") from exc


def batch_events(raw: object, batch_max: int) -> list[object]:
    """The events of a batch body ``{"events": [...]}``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
        raise BadBody("bad_request", "events", 'the body must be {"events": [...]}')
    events: list[object] = raw["events"]
    if not events:
        raise BadBody("bad_request", "events", "events must hold at least one event")
    if len(events) > batch_max:
        raise BadBody(
            "batch_too_long", "events",
            f"a batch holds at most {batch_max} events (WARREN_EDGE_PUBLISH_BATCH_MAX), "
            f"got {len(events)}",
        )
    unknown = set(raw) - {"events"}
    if unknown:
        field = sorted(unknown)[0]
        raise BadBody("bad_request", field, f"unknown field {field[:64]!r}")
    return events


def make_event(raw: object, sender: Address, max_data_bytes: int) -> Envelope:
    """The envelope for one event of a body, from ``sender``; :class:`EventError` if the
    event is not valid."""
    if not isinstance(raw, dict):
        raise EventError("invalid_event", "event", "an event must be a JSON object")
    unknown = set(raw) - EVENT_FIELDS
    if unknown:
        field = sorted(unknown)[0]
        raise EventError("invalid_event", field[:64], f"unknown field {field[:64]!r}")
    if "from" in raw and raw["from"] != str(sender):
        raise EventError(
            "forged_sender", "from",
            f"from is set by the edge to {sender} (this key's service); leave it out",
        )
    try:
        to = parse_destination(raw.get("to"))
    except AddressError as exc:
        raise EventError("invalid_address", "to", str(exc)) from exc
    try:
        kind = check_type(raw.get("type"))
    except AddressError as exc:
        raise EventError("invalid_type", "type", str(exc)) from exc
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise EventError("invalid_data", "data", "data must be a JSON object")
    size = len(orjson.dumps(data))
    if size > max_data_bytes:
        raise EventError(
            "too_large", "data",
            f"data is {size} bytes, more than {max_data_bytes} (WARREN_EDGE_MAX_FRAME_BYTES)",
        )
    event_id = raw.get("id")
    if event_id is None:
        event_id = new_id()
    elif not isinstance(event_id, str) or EVENT_ID.fullmatch(event_id) is None:
        raise EventError(
            "invalid_id", "id", f"id must match [A-Za-z0-9_-]{{1,64}} (a UUID does), got {event_id!r:.80}"
        )
    return Envelope(type=kind, to=to, sender=sender, data=data, id=event_id)


def make_batch(events: Sequence[object], sender: Address, max_data_bytes: int) -> list[Envelope]:
    """Every event's envelope, or :class:`BatchError` naming each invalid one."""
    envelopes: list[Envelope] = []
    errors: list[tuple[int, EventError]] = []
    seen: set[str] = set()
    for index, raw in enumerate(events):
        try:
            envelope = make_event(raw, sender, max_data_bytes)
        except EventError as exc:
            errors.append((index, exc))
            continue
        if envelope.id in seen:
            errors.append((index, EventError(
                "invalid_id", "id", f"id {envelope.id!r} appears twice in the batch"
            )))
            continue
        seen.add(envelope.id)
        envelopes.append(envelope)
    if errors:
        raise BatchError(errors, len(events))
    return envelopes


class PublishLimiter:
    """Events per key within ``WARREN_EDGE_PUBLISH_RATE``, counted in this edge process
    (with N edges a key gets up to N times the rate)."""

    def __init__(self, rate: RateLimitItem) -> None:
        self._rate = rate
        self._windows = SlidingWindowCounterRateLimiter(MemoryStorage())

    def spend(self, key_id: str, events: int) -> None:
        """Count ``events`` for the key, or raise :class:`PublishThrottled` counting none."""
        if not self._windows.hit(self._rate, key_id, cost=events):
            reset = self._windows.get_window_stats(self._rate, key_id).reset_time
            raise PublishThrottled(max(1, round(reset - time.time())))
