"""Users, groups and roles: the queries the edge and the CLI need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.auth.passwords import hash_password, verify_password
from shared.db.models import Membership, RoleGrant, User
from shared.messaging.names import check_name


class UserExists(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]


#: Which of the users ``ids`` exist: their ids, read from the table's primary key.
_EXISTING: Final = select(User.__table__.c.id).where(
    User.__table__.c.id.in_(bindparam("ids", expanding=True))
)


def existing_users(connection: Connection, user_ids: Sequence[str]) -> set[str]:
    """Which of ``user_ids`` are in the users table: one primary-key lookup for them all,
    on a connection the caller holds (the edge asks it with its other read of each
    connect, services/ws_edge/admission.py). A Core statement built once: the ORM's
    execution path around it would cost more than the query itself."""
    return set(connection.scalars(_EXISTING, {"ids": list(user_ids)}))


def _record(user: User) -> UserRecord:
    return UserRecord(user.id, user.group_names, user.role_names)


class UserStore:
    """Blocking data access; async callers run it in an executor."""

    def __init__(
        self, sessions: sessionmaker[Session], *, hasher: Callable[[str], str] = hash_password
    ) -> None:
        self._sessions = sessions
        self._hash = hasher

    def add(
        self,
        user_id: str,
        password: str,
        groups: tuple[str, ...] = (),
        roles: tuple[str, ...] = (),
    ) -> UserRecord:
        check_name(user_id, "user name")
        for name in (*groups, *roles):
            check_name(name, "group or role name")
        if not password:
            raise ValueError("password must not be empty")
        with self._sessions.begin() as session:
            if session.get(User, user_id) is not None:
                raise UserExists(f"user {user_id!r} already exists")
            user = User(
                id=user_id,
                password_hash=self._hash(password),
                groups=[Membership(group=g) for g in dict.fromkeys(groups)],
                roles=[RoleGrant(role=r) for r in dict.fromkeys(roles)],
            )
            session.add(user)
            session.flush()
            return _record(user)

    def get(self, user_id: str) -> UserRecord | None:
        with self._sessions() as session:
            user = session.get(User, user_id)
            return _record(user) if user is not None else None

    def existing(self, user_ids: Sequence[str]) -> set[str]:
        """Which of the users are (still) there: one primary-key lookup for them all,
        nothing else loaded."""
        with self._sessions() as session:
            return existing_users(session.connection(), user_ids)

    def authenticate(self, user_id: str, password: str) -> UserRecord | None:
        """Return the user if the password matches; cost is the same for unknown users."""
        with self._sessions() as session:
            user = session.scalars(select(User).where(User.id == user_id)).one_or_none()
            stored = user.password_hash if user is not None else None
            if not verify_password(stored, password) or user is None:
                return None
            return _record(user)

    def count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(User)) or 0
