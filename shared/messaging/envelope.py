"""The one envelope every message on the broker carries, and its JSON encoding."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shared.messaging.names import Address, AddressError, check_type, parse_destination, parse_sender

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
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    envelope_id = raw.get("id")
    if not isinstance(envelope_id, str) or not 0 < len(envelope_id) <= MAX_ID_LENGTH:
        raise EnvelopeError("id must be a non-empty string of at most 128 characters")
    ts = raw.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise EnvelopeError("ts must be a finite number of unix seconds")
    data = raw.get("data")
    if not isinstance(data, dict):
        raise EnvelopeError("data must be a JSON object")
    try:
        return Envelope(
            type=check_type(raw.get("type")),
            to=parse_destination(raw.get("to")),
            sender=parse_sender(raw.get("from")),
            data=data,
            id=envelope_id,
            ts=float(ts),
        )
    except AddressError as exc:
        raise EnvelopeError(str(exc)) from exc
