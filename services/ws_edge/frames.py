"""Client frames in, server frames out. Pure functions over JSON."""

from __future__ import annotations

import math
import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Final

import orjson

from shared.messaging.names import Address, AddressError, parse_destination
from services.ws_edge.errors import FrameError

# The frame types the edge handles itself; every other type a client may send is a
# command some service declared in the catalogue (services/ws_edge/command_gate.py).
MESSAGE_SEND: Final = "message.send"
MESSAGE_EVENT: Final = "message"
AUTH_REFRESH: Final = "auth.refresh"
HISTORY: Final = "history"
MAX_REF_LENGTH: Final = 128
DEFAULT_HISTORY_LIMIT: Final = 100
MAX_HISTORY_LIMIT: Final = 1000
# A position is Unix seconds written as a JSON number that is not negative. Stricter
# than float(), which also takes "nan", "inf", "1_0", "0x1p3" and spaces.
_POSITION: Final = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_MAX_POSITION_LENGTH: Final = 64
INVALID_POSITION: Final = "invalid_position"

Ref = str | int | None


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str
    ref: Ref
    to: object
    data: dict[str, Any]


def parse_client_frame(text: str, known: Container[str]) -> ClientFrame:
    """The frame in ``text``, whose type must be one of ``known``; :class:`FrameError`
    saying what is wrong."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError("invalid_json", f"frame is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise FrameError("invalid_frame", "frame must be a JSON object")
    ref = raw.get("ref")
    if not _valid_ref(ref):
        raise FrameError("invalid_frame", "ref must be a string of at most 128 characters or an integer")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise FrameError("invalid_frame", "type must be a string")
    if kind not in known:
        raise FrameError("unknown_type", f"unknown frame type {kind[:64]!r}")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise FrameError("invalid_frame", "data must be a JSON object")
    return ClientFrame(type=kind, ref=ref, to=raw.get("to"), data=data)


def refresh_token(frame: ClientFrame) -> str:
    """The token an ``auth.refresh`` frame carries in ``data.token``."""
    token = frame.data.get("token")
    if not isinstance(token, str) or not token:
        raise FrameError("invalid_frame", "auth.refresh needs data.token, a non-empty string")
    return token


@dataclass(frozen=True, slots=True)
class HistoryAsk:
    """A ``history`` frame's question (docs/protocol.md 17.4)."""

    key: Address
    limit: int
    since: float | None


def history_ask(frame: ClientFrame) -> HistoryAsk:
    data = frame.data
    try:
        key = parse_destination(data.get("key"))
    except AddressError as exc:
        raise FrameError("invalid_frame", f"history needs data.key, an address: {exc}") from exc
    limit = data.get("limit", DEFAULT_HISTORY_LIMIT)
    if type(limit) is not int or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise FrameError("invalid_frame", f"data.limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    since = data.get("since")
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, (int, float))
        or not math.isfinite(since) or since < 0
    ):
        raise FrameError("invalid_frame", "data.since must be a position: Unix seconds, at least 0")
    return HistoryAsk(key, limit, None if since is None else float(since))


def position_of(values: list[str], now: float, window_s: float) -> float | str | None:
    """The ``since`` of an upgrade (its query values): None without one, the position,
    or :data:`INVALID_POSITION` for anything else (docs/protocol.md 17.3)."""
    if not values:
        return None
    text = values[0]
    if len(values) > 1 or len(text) > _MAX_POSITION_LENGTH or _POSITION.fullmatch(text) is None:
        return INVALID_POSITION
    position = float(text)
    return INVALID_POSITION if not position <= now + window_s else position  # inf too


def ref_of(text: str) -> Ref:
    """Best-effort ref of a frame that failed to parse, so its error can still be matched."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    ref = raw.get("ref") if isinstance(raw, dict) else None
    return ref if _valid_ref(ref) else None


def _valid_ref(ref: object) -> bool:
    if ref is None or (isinstance(ref, int) and not isinstance(ref, bool)):
        return True
    return isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH


@dataclass(frozen=True, slots=True)
class Recovered:
    """What ``welcome`` says of a recovery: recovered, or why not (docs/protocol.md 17.3)."""

    recovered: bool
    reason: str | None = None
    oldest: float | None = None


def welcome(
    user: str, groups: tuple[str, ...], roles: tuple[str, ...], edge: str, *,
    position: float, window_s: float, recovery: Recovered | None = None,
) -> bytes:
    data: dict[str, Any] = {
        "user": user, "groups": groups, "roles": roles, "edge": edge,
        "position": position, "window": window_s,
    }
    if recovery is not None:
        data["recovered"] = recovery.recovered
        if not recovery.recovered:
            data["reason"] = recovery.reason
            data["oldest"] = recovery.oldest
    return orjson.dumps({"type": "welcome", "data": data})


def replay_done(
    events: int, position: float, *, since: float | None = None,
    recovery: Recovered = Recovered(recovered=True),
) -> bytes:
    """The end of a replay: of a ``?since=`` recovery (docs/protocol.md 17.3), or, with
    ``since``, of the in-band one after the edge's broker connection came back (17.5),
    which says whether it recovered as ``welcome`` does."""
    data: dict[str, Any] = {"events": events, "position": position}
    if since is not None:
        data["since"] = since
        data["recovered"] = recovery.recovered
        if not recovery.recovered:
            data["reason"] = recovery.reason
            data["oldest"] = recovery.oldest
    return orjson.dumps({"type": "replay.done", "data": data})


def ack(ref: Ref, data: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"type": "ack", "ref": ref, "data": data or {}})


def error(ref: Ref, code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "ref": ref, "data": {"code": code, "message": message}})
