"""Client frames in, server frames out. Pure functions over JSON."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Final

import orjson

from services.ws_edge.errors import FrameError

# The frame types the edge handles itself; every other type a client may send is a
# command some service declared in the catalogue (services/ws_edge/command_gate.py).
MESSAGE_SEND: Final = "message.send"
MESSAGE_EVENT: Final = "message"
AUTH_REFRESH: Final = "auth.refresh"
MAX_REF_LENGTH: Final = 128

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


def welcome(user: str, groups: tuple[str, ...], roles: tuple[str, ...], edge: str) -> bytes:
    return orjson.dumps(
        {"type": "welcome", "data": {"user": user, "groups": groups, "roles": roles, "edge": edge}}
    )


def ack(ref: Ref, data: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"type": "ack", "ref": ref, "data": data or {}})


def error(ref: Ref, code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "ref": ref, "data": {"code": code, "message": message}})
