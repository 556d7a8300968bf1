"""Service API keys: what a backend presents to publish over HTTP (docs/protocol.md 15).

A key reads ``wk_<id>_<secret>``. The id (16 hex digits) finds the row; the secret
(32 random bytes, base64url) is checked against the SHA-256 digest the row keeps, in
constant time. The secret itself is never stored: it is shown once, when the key is made.

A slow password hash (Argon2, as for users' passwords) protects secrets a person chose,
which can be guessed. A 256-bit random secret cannot be guessed, and its digest cannot be
reversed, so one SHA-256 is enough; it costs a microsecond, where Argon2 would cost every
publish a hundred milliseconds.

A key belongs to a service name (its events carry ``from`` = ``service:<name>``) and holds
scopes. One name may hold several keys at once, so that a key is replaced by adding the
new one, moving the backend to it, then revoking the old one. A revoked key keeps its
row, with the time it was revoked. Blocking: run in an executor.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db.models import Base, UtcDateTime, utcnow
from shared.messaging.names import check_name

PREFIX: Final = "wk"
KEY_PATTERN: Final = re.compile(r"wk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
ID_BYTES: Final = 8
SECRET_BYTES: Final = 32


class Scope:
    """What a key allows."""

    PUBLISH: Final = "publish"  # POST /api/publish and /api/publish/batch


SCOPES: Final = frozenset({Scope.PUBLISH})


class KeyStoreError(ValueError):
    """A key that cannot be made or revoked as asked."""


class ServiceKey(Base):
    __tablename__ = "service_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(255))  # space-separated
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    scopes: frozenset[str]
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's, compared in constant time."""
        return hmac.compare_digest(digest(secret), self.secret_hash)

    def to_json(self) -> dict[str, object]:
        """The public view of a key: no secret, no digest."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(presented: str) -> tuple[str, str] | None:
    """The id and secret of a key in the form ``wk_<id>_<secret>``; None if it is not one."""
    match = KEY_PATTERN.fullmatch(presented)
    return (match.group(1), match.group(2)) if match else None


def _record(row: ServiceKey) -> KeyRecord:
    return KeyRecord(
        id=row.id, name=row.name, scopes=frozenset(row.scopes.split()),
        secret_hash=row.secret_hash, created_at=row.created_at, revoked_at=row.revoked_at,
    )


def _check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(scopes)
    unknown = chosen - SCOPES
    if unknown:
        raise KeyStoreError(
            f"unknown scope {sorted(unknown)[0]!r}; scopes are {', '.join(sorted(SCOPES))}"
        )
    if not chosen:
        raise KeyStoreError("a key needs at least one scope")
    return chosen


class KeyStore:
    """Blocking data access to ``service_keys``; async callers run it in an executor."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, name: str, scopes: Iterable[str]) -> tuple[KeyRecord, str]:
        """Make a key for the service ``name``; return it with the key text, which is
        shown this once and stored nowhere."""
        try:
            check_name(name, "key name")
        except ValueError as exc:
            raise KeyStoreError(str(exc)) from exc
        chosen = _check_scopes(scopes)
        key_id = secrets.token_hex(ID_BYTES)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        with self._sessions.begin() as session:
            row = ServiceKey(
                id=key_id, name=name, secret_hash=digest(secret),
                scopes=" ".join(sorted(chosen)), created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            record = _record(row)
        return record, f"{PREFIX}_{key_id}_{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        with self._sessions() as session:
            row = session.get(ServiceKey, key_id)
            return _record(row) if row is not None else None

    def all(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ServiceKey).order_by(ServiceKey.created_at, ServiceKey.id)
            ).all()
            return [_record(row) for row in rows]

    def revoke(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke the key with this id, or else every live key of the service with this
        name; return what was revoked. :class:`KeyStoreError` if nothing was."""
        with self._sessions.begin() as session:
            by_id = session.get(ServiceKey, name_or_id)
            which = (
                ServiceKey.id == name_or_id if by_id is not None else ServiceKey.name == name_or_id
            )
            now = utcnow()
            ids = session.scalars(
                select(ServiceKey.id).where(which, ServiceKey.revoked_at.is_(None))
            ).all()
            if not ids:
                raise KeyStoreError(f"no live key has the id or name {name_or_id!r}")
            session.execute(
                update(ServiceKey).where(ServiceKey.id.in_(ids)).values(revoked_at=now)
            )
            rows = session.scalars(select(ServiceKey).where(ServiceKey.id.in_(ids))).all()
            return [_record(row) for row in rows]
