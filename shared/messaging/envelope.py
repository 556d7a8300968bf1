"""The one envelope every message on the broker carries, and its JSON encoding."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shared.messaging.names import (
    DESTINATION_KINDS,
    SENDER_KINDS,
    Address,
    AddressError,
    check_type,
    parse_destination,
    parse_sender,
)

SCHEMA_VERSION: Final = 1
MAX_ID_LENGTH: Final = 128


class EnvelopeError(ValueError):
    """A body that is not a valid version-1 envelope."""


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    to: Address
    sender: Address
    data: dict[str, Any]
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        """Refuse to build an envelope that could not be decoded again."""
        try:
            check_type(self.type)
        except AddressError as exc:
            raise EnvelopeError(str(exc)) from exc
        if self.to.kind not in DESTINATION_KINDS:
            raise EnvelopeError(f"to must be a user, a group or broadcast, not {self.to}")
        if self.sender.kind not in SENDER_KINDS:
            raise EnvelopeError(f"from must be a user or a service, not {self.sender}")
        if not isinstance(self.id, str) or not 0 < len(self.id) <= MAX_ID_LENGTH:
            raise EnvelopeError("id must be a non-empty string of at most 128 characters")
        if isinstance(self.ts, bool) or not isinstance(self.ts, (int, float)) or not math.isfinite(self.ts):
            raise EnvelopeError("ts must be a finite number of unix seconds")
        if not isinstance(self.data, dict):
            raise EnvelopeError("data must be a JSON object")

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "type": self.type,
            "ts": self.ts,
            "to": str(self.to),
            "from": str(self.sender),
            "data": self.data,
        }


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.to_dict())


def decode(body: bytes | str) -> Envelope:
    """Parse and validate an envelope; raise :class:`EnvelopeError` saying what is wrong."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from exc
    return from_dict(raw)


def from_dict(raw: object) -> Envelope:
    if not isinstance(raw, dict):
        raise EnvelopeError("envelope must be a JSON object")
    version = raw.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    try:
        to = parse_destination(raw.get("to"))
        sender = parse_sender(raw.get("from"))
    except AddressError as exc:
        raise EnvelopeError(str(exc)) from exc
    ts = raw.get("ts")
    if type(ts) is int:
        ts = float(ts)
    return Envelope(
        type=raw.get("type"),  # type: ignore[arg-type]  # checked in __post_init__
        to=to,
        sender=sender,
        data=raw.get("data"),  # type: ignore[arg-type]
        id=raw.get("id"),  # type: ignore[arg-type]
        ts=ts,  # type: ignore[arg-type]
    )
