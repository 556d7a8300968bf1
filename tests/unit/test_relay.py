"""cat_relay's pure parts: ask validation, token batching, settings, v2 event handling, history,
the reconnect backoff, per-user locks and the POST /send error table."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from shared.config import ConfigError
from shared.db import ChatHistory, create_schema, make_engine, session_factory
from services.cat_relay.cat.errors import CatError, CatFailed, CatTimeout, CatUnavailable
from services.cat_relay.cat.v1 import BACKOFF_MAX_S, backoff
from services.cat_relay.cat.v2 import _on_event
from services.cat_relay.handlers.send import STATUS_BY_CODE
from shared.locks import KeyedLocks
from services.cat_relay.relay import INTERRUPTED, AskError, ask_text
from services.cat_relay.settings import CatProtocol, CatSettings, RelaySettings
from services.cat_relay.tokens import TokenStream


@pytest.mark.parametrize("data", [{}, {"text": ""}, {"text": "  \n"}, {"text": 5}, {"text": None}])
def test_ask_text_refuses_missing_or_blank_text(data: dict[str, object]) -> None:
    with pytest.raises(AskError):
        ask_text(data, 100)


def test_ask_text_enforces_the_length_limit() -> None:
    assert ask_text({"text": "x" * 100}, 100) == "x" * 100
    with pytest.raises(AskError, match="at most 100"):
        ask_text({"text": "x" * 101}, 100)


async def test_tokens_are_batched_in_order_without_gaps() -> None:
    sent: list[tuple[int, str]] = []

    async def send(seq: int, text: str) -> None:
        await asyncio.sleep(0.001 * (seq % 3))  # uneven publish times must not reorder
        sent.append((seq, text))

    stream = TokenStream(send, interval_s=10.0, max_chars=4)
    for token in ["ab", "cd", "e", "fgh", "ij", "k"]:
        stream.add(token)
    await stream.close()
    assert [seq for seq, _ in sent] == list(range(len(sent)))
    assert "".join(text for _, text in sent) == "abcdefghijk"
    assert sent[0] == (0, "abcd")  # flushed on size, not on the (long) interval


async def test_tokens_are_flushed_after_the_interval() -> None:
    flushed = asyncio.Event()
    sent: list[str] = []

    async def send(seq: int, text: str) -> None:
        sent.append(text)
        flushed.set()

    stream = TokenStream(send, interval_s=0.01, max_chars=1000)
    stream.add("slow ")
    stream.add("tokens")
    await asyncio.wait_for(flushed.wait(), 5)
    assert sent == ["slow tokens"]
    await stream.close()
    assert stream.batches == 1


async def test_a_failed_token_publish_is_raised_on_close() -> None:
    async def send(seq: int, text: str) -> None:
        raise ConnectionError("broker gone")

    stream = TokenStream(send, interval_s=10.0, max_chars=1)
    stream.add("x")
    with pytest.raises(ConnectionError):
        await stream.close()


async def test_a_failed_send_of_a_stream_never_closed_is_not_logged_as_never_retrieved() -> None:
    # The ask was abandoned (the relay stopped at its deadline) while a batch was sent.
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        failed = asyncio.Event()

        async def send(seq: int, text: str) -> None:
            failed.set()
            raise ConnectionError("broker gone")

        stream = TokenStream(send, interval_s=10.0, max_chars=1)
        stream.add("x")
        await asyncio.wait_for(failed.wait(), 5)
        await asyncio.sleep(0)  # the batch's task ends with the failure
        del stream
        gc.collect()
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)


def test_cat_settings_defaults_and_refusals() -> None:
    dev = CatSettings.from_env({}, development=True)
    assert dev.url == "http://127.0.0.1:1865" and dev.protocol is CatProtocol.AUTO
    assert dev.api_key == "meow"
    assert CatSettings.from_env({}, development=False).api_key == ""  # no known default in production
    assert CatSettings.from_env({"WARREN_CAT_PROTOCOL": "V2"}, development=False).protocol is CatProtocol.V2
    with pytest.raises(ConfigError, match="v1, v2 or auto"):
        CatSettings.from_env({"WARREN_CAT_PROTOCOL": "v3"}, development=True)
    with pytest.raises(ConfigError, match="http"):
        CatSettings.from_env({"WARREN_CAT_URL": "ftp://cat"}, development=True)


def test_relay_service_key_must_be_long() -> None:
    with pytest.raises(ConfigError, match="at least 24"):
        RelaySettings.from_env({"WARREN_ENV": "development", "WARREN_RELAY_API_KEY": "short"})


def test_v2_events() -> None:
    tokens: list[str] = []
    assert _on_event({"type": "RUN_STARTED"}, tokens.append) is None
    assert _on_event({"type": "TEXT_MESSAGE_CONTENT", "delta": "Hi"}, tokens.append) is None
    assert tokens == ["Hi"]
    finished = {"type": "RUN_FINISHED", "result": {"messages": [{"role": "assistant", "text": "Hi!"}]}}
    assert _on_event(finished, tokens.append) == "Hi!"
    with pytest.raises(CatFailed, match="boom"):
        _on_event({"type": "RUN_ERROR", "message": "boom"}, tokens.append)
    with pytest.raises(CatFailed):
        _on_event({"type": "RUN_FINISHED", "result": {"messages": []}}, tokens.append)
    assert _on_event(["not", "an", "object"], tokens.append) is None


def test_history_is_bounded_per_user(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    create_schema(engine)
    history = ChatHistory(session_factory(engine), keep=3)
    for i in range(4):
        history.append("alice", [("user", f"q{i}"), ("assistant", f"a{i}")])
    history.append("bob", [("user", "hello")])
    assert history.recent("alice") == [("assistant", "a2"), ("user", "q3"), ("assistant", "a3")]
    assert history.recent("bob") == [("user", "hello")]
    assert ChatHistory(session_factory(engine), keep=0).recent("alice") == []
    engine.dispose()


async def test_closing_without_flush_drops_unsent_tokens_but_waits_for_sent_ones() -> None:
    sent: list[str] = []

    async def send(seq: int, text: str) -> None:
        sent.append(text)

    stream = TokenStream(send, interval_s=10.0, max_chars=3)
    for token in ["abc", "de"]:
        stream.add(token)
    await stream.close(flush=False)
    assert sent == ["abc"]


def test_reconnect_backoff_doubles_up_to_its_cap() -> None:
    delays = backoff()
    first = [next(delays) for _ in range(8)]
    assert first[:4] == [0.05, 0.1, 0.2, 0.4]
    assert first[-1] == BACKOFF_MAX_S and max(first) == BACKOFF_MAX_S


async def test_keyed_locks_serialise_one_key_in_order_and_forget_it_afterwards() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def hold(key: str, name: str, wait: asyncio.Event | None = None) -> None:
        async with locks.hold(key):
            order.append(name)
            if wait is not None:
                first_in.set()
                await wait.wait()

    first = asyncio.create_task(hold("alice", "a1", release_first))
    await first_in.wait()
    second = asyncio.create_task(hold("alice", "a2"))
    other = asyncio.create_task(hold("bob", "b1"))
    await other  # another key does not wait
    assert order == ["a1", "b1"]
    release_first.set()
    await asyncio.gather(first, second)
    assert order == ["a1", "b1", "a2"]
    assert len(locks) == 0  # no lock is kept for a user nobody waits for


def test_every_error_code_has_an_http_status() -> None:
    codes = {cls.code for cls in (CatError, CatFailed, CatTimeout, CatUnavailable)}
    codes |= {AskError.code, INTERRUPTED}
    assert codes <= set(STATUS_BY_CODE)
    assert STATUS_BY_CODE["cat_unavailable"] == 502 and STATUS_BY_CODE["cat_timeout"] == 504


def test_relay_settings_defaults() -> None:
    settings = RelaySettings.from_env({"WARREN_ENV": "development"})
    assert settings.prefetch == 1024
    assert settings.send_timeout_s == settings.cat.timeout_s + settings.cat.connect_timeout_s + 5


async def test_discarded_tokens_are_never_sent() -> None:
    sent: list[str] = []

    async def send(seq: int, text: str) -> None:
        sent.append(text)

    stream = TokenStream(send, interval_s=10.0, max_chars=1000)
    stream.add("abandoned")
    stream.discard()
    await stream.close()  # would flush what is pending
    assert sent == [] and stream.batches == 0
