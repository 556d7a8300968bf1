"""Database access: models, engine and the user store."""

from shared.db.chat import ChatHistory
from shared.db.commands import CommandStore  # noqa: F401  (registers handled_commands)
from shared.db.engine import make_engine, session_factory
from shared.db.exports import ExportStore  # noqa: F401  (registers export_tasks)
from shared.db.keys import KeyStore  # noqa: F401  (registers service_keys)
from shared.db.notifications import NotificationStore  # noqa: F401  (registers notifications)
from shared.db.runs import RunRecord, RunStatus, RunStore  # noqa: F401  (registers the runs table)
from shared.db.schema import create_schema
from shared.db.users import UserExists, UserRecord, UserStore

__all__ = [
    "ChatHistory",
    "UserExists",
    "UserRecord",
    "UserStore",
    "create_schema",
    "make_engine",
    "session_factory",
]
