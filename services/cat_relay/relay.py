"""Answering one ask: history in, Cat call, tokens and the reply (or an error) out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from shared.db import ChatHistory
from shared.messaging import Address, Envelope
from shared.messaging.broker import Publisher
from shared.messaging.names import Event
from services.cat_relay.cat import CatClient, CatError, Turn
from services.cat_relay.metrics import RelayMetrics
from services.cat_relay.settings import RelaySettings
from services.cat_relay.tokens import TokenStream

log = logging.getLogger(__name__)

SERVICE = Address.service("cat_relay")


class AskError(ValueError):
    """A ``chat.ask`` whose data is not ``{"text": <non-empty string>}`` within the limit."""

    code = "bad_request"


def ask_text(data: dict[str, Any], max_chars: int) -> str:
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise AskError('chat.ask data must be {"text": "<your question>"}')
    if len(text) > max_chars:
        raise AskError(f"text must be at most {max_chars} characters, got {len(text)}")
    return text


class Relay:
    """Talks to the Cat for one ask at a time per user (the caller serialises per user)."""

    def __init__(
        self,
        settings: RelaySettings,
        cat: CatClient,
        history: ChatHistory,
        publisher: Publisher,
        metrics: RelayMetrics,
        blocking: Executor,
    ) -> None:
        self._settings = settings
        self._cat = cat
        self._history = history
        self._publisher = publisher
        self._metrics = metrics
        self._blocking = blocking

    async def chat(self, user_id: str, text: str, on_token: Callable[[str], None]) -> str:
        """Ask the Cat as ``user_id``; raise :class:`CatError` when it cannot answer."""
        loop = asyncio.get_running_loop()

        async def earlier() -> Sequence[Turn]:
            rows = await loop.run_in_executor(self._blocking, self._history.recent, user_id)
            return [Turn(role, body) for role, body in rows]  # type: ignore[arg-type]

        started = time.perf_counter()
        reply = await self._cat.ask(user_id, text, earlier, on_token)
        self._metrics.cat_latency.observe(time.perf_counter() - started)
        if not self._cat.keeps_history:
            await loop.run_in_executor(
                self._blocking, self._history.append, user_id, (("user", text), ("assistant", reply))
            )
        return reply

    async def answer(self, ask: Envelope) -> None:
        """Answer a ``chat.ask``: ``chat.token``\\* then ``chat.reply``, or ``chat.error``.

        Cat failures become ``chat.error``; only a failed publish raises.
        """
        self._metrics.asks.labels("command").inc()
        try:
            text = ask_text(ask.data, self._settings.max_ask_chars)
        except AskError as exc:
            await self.error(ask, exc.code, str(exc))
            return

        async def send_tokens(seq: int, batch: str) -> None:
            await self._emit(ask, Event.CHAT_TOKEN, {"ask_id": ask.id, "seq": seq, "text": batch})
            self._metrics.token_batches.inc()

        tokens = TokenStream(
            send_tokens,
            interval_s=self._settings.token_flush_s,
            max_chars=self._settings.token_flush_chars,
        )
        try:
            reply = await self.chat(ask.sender.name, text, tokens.add)
        except CatError as exc:
            await tokens.close()
            await self.error(ask, exc.code, exc.message)
            return
        await tokens.close(flush=False)  # the reply has the whole text
        await self._emit(ask, Event.CHAT_REPLY, {"ask_id": ask.id, "text": reply})
        self._metrics.replies.inc()

    async def error(self, ask: Envelope, code: str, message: str) -> None:
        self._metrics.errors.labels(code).inc()
        log.info("ask failed", extra={"ask_id": ask.id, "code": code, "reason": message})
        await self._emit(ask, Event.CHAT_ERROR, {"ask_id": ask.id, "code": code, "message": message})

    async def interrupted(self, ask: Envelope) -> None:
        await self.error(
            ask, "interrupted", "the relay answering this ask stopped before it finished; ask again"
        )

    async def _emit(self, ask: Envelope, kind: Event, data: dict[str, Any]) -> None:
        # Results go to the command's ``to`` (protocol 3.4): the asking user.
        await self._publisher.publish_event(Envelope(type=kind, to=ask.to, sender=SERVICE, data=data))
