"""Batching streamed tokens into ``chat.token`` events, so a fast Cat cannot flood the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class TokenStream:
    """Collects tokens and hands them on in ordered batches.

    A batch is sent when it holds ``max_chars`` characters or ``interval_s`` after its
    first token, whichever comes first. Batches are numbered from 0 without gaps and
    sent one after another, in order. ``close`` waits for the batches already being
    sent (a failed send is raised there) and, unless ``flush`` is false, sends what is
    left first. The relay closes without flushing when the reply is ready: the reply
    carries the whole text, so tokens not yet sent would only delay it.
    """

    def __init__(
        self,
        send: Callable[[int, str], Awaitable[None]],
        *,
        interval_s: float,
        max_chars: int,
    ) -> None:
        self._send = send
        self._interval_s = interval_s
        self._max_chars = max_chars
        self._parts: list[str] = []
        self._size = 0
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._chain: asyncio.Future[None] | None = None

    @property
    def batches(self) -> int:
        return self._seq

    def add(self, token: str) -> None:
        if not token:
            return
        self._parts.append(token)
        self._size += len(token)
        if self._size >= self._max_chars:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts:
            return
        text = "".join(self._parts)
        self._parts, self._size = [], 0
        seq, self._seq = self._seq, self._seq + 1
        self._chain = asyncio.ensure_future(self._after(self._chain, seq, text))
        self._chain.add_done_callback(_seen)

    async def _after(self, previous: asyncio.Future[None] | None, seq: int, text: str) -> None:
        if previous is not None:
            await previous
        await self._send(seq, text)

    async def close(self, *, flush: bool = True) -> None:
        if flush:
            self._flush()
        else:
            self.discard()
        if self._chain is not None:
            await self._chain

    def discard(self) -> None:
        """Drop the tokens not sent yet, and send no more (the ask was abandoned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._parts, self._size = [], 0


def _seen(batch: asyncio.Future[None]) -> None:
    """Mark a failed send as seen. Each batch awaits the one before it, and ``close``
    the last, raising the failure; but an ask abandoned first (the relay stopping at its
    deadline) never closes its stream, and asyncio would log the last batch's failure as
    an error "never retrieved" when it is collected."""
    if not batch.cancelled():
        batch.exception()
