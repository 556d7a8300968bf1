"""The lookups the edge makes for many connects at once (shared/db/batching.py), on SQLite
and on PostgreSQL: which users still exist, and each user's pending notifications."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.db.models import utcnow
from shared.db.notifications import NotificationStore, make_notification


@pytest.fixture(params=["database_url", "postgres_url"])
def sessions(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(request.getfixturevalue(request.param))
    create_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def test_existing_names_the_users_that_are_there(sessions: sessionmaker[Session]) -> None:
    users = UserStore(sessions, hasher=lambda password: "hashed")
    for name in ("alice", "bob"):
        users.add(name, "pw")
    assert users.existing(["alice", "bob", "mallory"]) == {"alice", "bob"}
    assert users.existing(["mallory"]) == set()


def test_pending_gives_each_user_their_own_oldest_first_up_to_the_limit(
    sessions: sessionmaker[Session],
) -> None:
    start = utcnow()
    with sessions.begin() as session:
        for i, user in enumerate(["alice", "bob", "alice", "alice", "bob"]):
            note = make_notification(f"n{i}", user, "excel.done", b"{}")
            note.created_at = start + timedelta(seconds=10 - i)  # later rows are older
            session.add(note)
    store = NotificationStore(sessions)
    store.mark_delivered(["n4"])

    found = store.pending(["alice", "bob", "carol"], limit=2)
    assert {user: [n.id for n in notes] for user, notes in found.items()} == {
        "alice": ["n3", "n2"],  # the two oldest of alice's three
        "bob": ["n1"],  # bob's other one is delivered
    }
    assert store.pending(["carol"]) == {}
