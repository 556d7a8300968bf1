"""Answering one ask: history in, Cat call, tokens and the reply (or an error) out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
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
INTERRUPTED = "interrupted"


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


@dataclass(frozen=True, slots=True)
class Ask:
    """A ``chat.ask`` on its way to the Cat, with what the broker told about it."""

    envelope: Envelope
    reply_to: str | None = None  # POST /send: the outcome goes to this queue, not to events
    handed_back: bool = False  # a replica stopped while holding it: answered ``interrupted``
    taken: float = field(default_factory=time.perf_counter)  # when this replica received it

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def user(self) -> str:
        return self.envelope.sender.name


class Relay:
    """Answers asks; the caller runs one ask at a time per user, in order."""

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

    async def answer(self, ask: Ask) -> None:
        """``chat.token``\\* then ``chat.reply``, or ``chat.error``: Cat failures included.

        Only a publish the broker did not confirm raises (:class:`BrokerUnavailable`).
        """
        self._metrics.asks.labels("http" if ask.reply_to else "command").inc()
        if ask.handed_back:
            # It may have reached the Cat already; asking again could loop on an ask that
            # kills relays. Say so instead.
            await self.interrupted(ask)
            return
        try:
            text = ask_text(ask.envelope.data, self._settings.max_ask_chars)
        except AskError as exc:
            await self._error(ask, exc.code, str(exc))
            return
        tokens: TokenStream | None = None
        if ask.reply_to is None:
            async def send_tokens(seq: int, batch: str) -> None:
                data = {"ask_id": ask.id, "seq": seq, "text": batch}
                await self._emit(ask, Event.CHAT_TOKEN, data)
                self._metrics.token_batches.inc()

            tokens = TokenStream(
                send_tokens,
                interval_s=self._settings.token_flush_s,
                max_chars=self._settings.token_flush_chars,
            )
        try:
            reply, cat_s = await self._chat(ask.user, text, tokens.add if tokens else _ignore)
        except CatError as exc:
            if tokens is not None:
                await tokens.close()
            await self._error(ask, exc.code, exc.message)
            return
        except asyncio.CancelledError:
            if tokens is not None:
                tokens.discard()  # no token may follow the interrupted error said instead
            raise
        if tokens is not None:
            await tokens.close(flush=False)  # the reply has the whole text
        await self._emit(ask, Event.CHAT_REPLY, {"ask_id": ask.id, "text": reply})
        self._metrics.replies.inc()
        self._metrics.overhead.observe(time.perf_counter() - ask.taken - cat_s)

    async def interrupted(self, ask: Ask) -> None:
        await self._error(
            ask, INTERRUPTED, "the relay answering this ask stopped before it finished; ask again"
        )

    async def _chat(
        self, user_id: str, text: str, on_token: Callable[[str], None]
    ) -> tuple[str, float]:
        """The reply, and how long the Cat took to give it."""
        loop = asyncio.get_running_loop()

        async def earlier() -> Sequence[Turn]:
            rows = await loop.run_in_executor(self._blocking, self._history.recent, user_id)
            return [Turn(role, body) for role, body in rows]  # type: ignore[arg-type]

        started = time.perf_counter()
        reply = await self._cat.ask(user_id, text, earlier, on_token)
        cat_s = time.perf_counter() - started
        self._metrics.cat_latency.observe(cat_s)
        if not self._cat.keeps_history:
            turns = (("user", text), ("assistant", reply))
            await loop.run_in_executor(self._blocking, self._history.append, user_id, turns)
        return reply, cat_s

    async def _error(self, ask: Ask, code: str, message: str) -> None:
        self._metrics.errors.labels(code).inc()
        log.info("ask failed", extra={"ask_id": ask.id, "code": code, "reason": message})
        data = {"ask_id": ask.id, "code": code, "message": message}
        await self._emit(ask, Event.CHAT_ERROR, data)

    async def _emit(self, ask: Ask, kind: Event, data: dict[str, Any]) -> None:
        # Results go to the command's ``to`` (protocol 3.4): the asking user.
        envelope = Envelope(type=kind, to=ask.envelope.to, sender=SERVICE, data=data)
        if ask.reply_to is None:
            await self._publisher.publish_event(envelope)
        else:  # POST /send: only the outcome, to the asking replica
            await self._publisher.publish_reply(envelope, ask.reply_to, ask.id)


def _ignore(_token: str) -> None:
    """POST /send waits for the whole reply: streamed tokens are not needed."""
