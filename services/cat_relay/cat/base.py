"""The one interface both Cat protocols are used through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

STATUS_TIMEOUT_S = 5.0  # GET /status (v2) or / (v1), for /readyz/cat

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
    @property
    def protocol(self) -> str: ...

    @property
    def keeps_history(self) -> bool:
        """True when the Cat remembers the conversation itself (v1)."""
        ...

    async def ask(
        self, user_id: str, text: str, history: History, on_token: OnToken
    ) -> str:
        """Ask as ``user_id``; call ``on_token`` for each streamed token; return the reply.

        Raises :class:`~services.cat_relay.cat.errors.CatError` subclasses only.
        """
        ...

    async def release(self, user_id: str) -> None:
        """Close the user's connection to the Cat, if any, and wait until it is closed.

        Called before the user's session passes to another replica, which may then open
        its own (a v1 Cat keeps one socket per user).
        """
        ...

    async def status(self) -> CatStatus: ...

    @property
    def open_sockets(self) -> int: ...

    async def close(self) -> None: ...
