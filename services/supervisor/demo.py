"""Demo users for an empty database, so the console has someone to sign in as, and a
service key, so that cat_relay's ``POST /send`` can be tried out at once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

from shared.db import UserStore, create_schema, make_engine, session_factory


@dataclass(frozen=True, slots=True)
class DemoUser:
    name: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    password: str = ""


DEMO_USERS: Final = (
    DemoUser("alice", ("team",), ("admin",)),  # may broadcast
    DemoUser("bob", ("team",), ()),
    DemoUser("carol", ("ops",), ()),
)


def prepare_database(database_url: str) -> list[DemoUser]:
    """Create the schema once, before the services race to; add demo users if there are none.

    Returns the users created now, with their passwords (shown once, never stored).
    """
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        store = UserStore(session_factory(engine))
        if store.count():
            return []
        created = []
        for user in DEMO_USERS:
            password = secrets.token_urlsafe(9)
            store.add(user.name, password, user.groups, user.roles)
            created.append(DemoUser(user.name, user.groups, user.roles, password))
        return created
    finally:
        engine.dispose()


def service_key() -> str:
    """A fresh key for the relays' ``POST /send``, for this run of ``warren up`` only.

    Kept nowhere but in the supervisor and the relays' environment, and shown in the
    start-up summary: nothing secret is left on disk, and each run prints its own.
    """
    return secrets.token_urlsafe(32)
