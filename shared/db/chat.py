"""Chat history kept for Cats that remember nothing themselves (Cat 2.x)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from shared.db.models import Base, utcnow


class ChatTurn(Base):
    __tablename__ = "chat_turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChatHistory:
    """Each user's most recent turns, bounded to ``keep`` per user. Blocking: run in an executor."""

    def __init__(self, sessions: sessionmaker[Session], keep: int) -> None:
        self._sessions = sessions
        self._keep = keep

    def recent(self, user_id: str) -> list[tuple[str, str]]:
        """The user's last ``keep`` turns as ``(role, text)``, oldest first."""
        if self._keep == 0:
            return []
        with self._sessions() as session:
            rows = session.execute(
                select(ChatTurn.role, ChatTurn.text)
                .where(ChatTurn.user_id == user_id)
                .order_by(ChatTurn.id.desc())
                .limit(self._keep)
            ).all()
        return [(role, text) for role, text in reversed(rows)]

    def append(self, user_id: str, turns: Sequence[tuple[str, str]]) -> None:
        """Add turns and drop the user's turns beyond the newest ``keep``."""
        if self._keep == 0:
            return
        with self._sessions.begin() as session:
            session.add_all(ChatTurn(user_id=user_id, role=r, text=t) for r, t in turns)
            session.flush()
            cutoff = session.execute(
                select(ChatTurn.id)
                .where(ChatTurn.user_id == user_id)
                .order_by(ChatTurn.id.desc())
                .offset(self._keep)
                .limit(1)
            ).scalar()
            if cutoff is not None:
                session.execute(
                    delete(ChatTurn).where(ChatTurn.user_id == user_id, ChatTurn.id <= cutoff)
                )
