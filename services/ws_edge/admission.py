"""What the database says of a user whose socket is opening: whether it still exists
(``WARREN_EDGE_CHECK_USERS``) and whether notifications wait for it (docs/protocol.md 13).

Both are asked in one job on the blocking executor, on one connection, for every user
whose socket opens while the previous job runs (shared/db/batching.py): the hand-off to
a thread and the connection taken from the pool cost more than either query, so a
connect pays for them once.

Both are read after the socket's keys are bound (handlers/websocket.py): a notification
stored after the read is published after the binding, and so reaches the socket live.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Final, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.db.batching import Batched
from shared.db.notifications import waiting_users
from shared.db.users import existing_users

log = logging.getLogger(__name__)


class Admission(NamedTuple):
    known: bool  # the user is in the users table (always, when users are not checked)
    waiting: bool  # notifications are pending for the user


_UNKNOWN: Final = Admission(known=False, waiting=False)


class AdmissionLookup:
    """The connect-time read of each user, in batches on ``blocking``: whether any of its
    notifications are pending, and with ``check_users`` whether it exists."""

    def __init__(self, engine: Engine, blocking: Executor, *, check_users: bool) -> None:
        self._engine = engine
        self._check_users = check_users
        self._lookup = Batched(self._fetch, _UNKNOWN, blocking)

    async def look_up(self, user_id: str) -> Admission:
        """The user's :class:`Admission`. A database error is raised as it is when users
        are checked; otherwise the socket opens without its pending notifications, which
        stay pending for its next connect."""
        try:
            return await self._lookup.get(user_id)
        except SQLAlchemyError:
            if self._check_users:
                raise
            log.warning("pending notifications not read", extra={"user": user_id},
                        exc_info=True)
            return Admission(known=True, waiting=False)

    def _fetch(self, user_ids: Sequence[str]) -> Mapping[str, Admission]:
        # Core statements on a connection from the engine's pool: they only read, and a
        # session around them would add its own bookkeeping to every connect.
        with self._engine.connect() as connection:
            known = existing_users(connection, user_ids) if self._check_users else set(user_ids)
            waiting = waiting_users(connection, sorted(known)) if known else set()
        return {user: Admission(True, user in waiting) for user in known}
