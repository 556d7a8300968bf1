"""The one interface both Cat protocols are used through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["user", "assistant"]
OnToken = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation, as kept in the relay's history."""

    role: Role
    text: str


History = Callable[[], Awaitable[Sequence[Turn]]]
"""Loads the user's earlier turns; called only by clients whose Cat keeps no history."""


@dataclass(frozen=True, slots=True)
class CatStatus:
    reachable: bool
    protocol: str
    version: str = ""
    detail: str = ""


class CatClient(Protocol):
    protocol: str
    keeps_history: bool  # True when the Cat remembers the conversation itself (v1)

    async def ask(
        self, user_id: str, text: str, history: History, on_token: OnToken
    ) -> str:
        """Ask as ``user_id``; call ``on_token`` for each streamed token; return the reply.

        Raises :class:`~services.cat_relay.cat.errors.CatError` subclasses only.
        """
        ...

    async def status(self) -> CatStatus: ...

    @property
    def open_sockets(self) -> int: ...

    async def close(self) -> None: ...
