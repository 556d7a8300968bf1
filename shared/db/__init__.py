"""Database access: models, engine and the user store."""

from shared.db.engine import create_schema, make_engine, session_factory
from shared.db.users import UserExists, UserRecord, UserStore

__all__ = [
    "UserExists",
    "UserRecord",
    "UserStore",
    "create_schema",
    "make_engine",
    "session_factory",
]
