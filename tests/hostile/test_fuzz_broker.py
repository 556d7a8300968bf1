"""Fuzzed messages from the broker, straight to where each service reads: the edge's
events (``warren.events``) and the work queues of cat_relay, runner and excel_worker.

- A body that is not a valid envelope for its reader (not JSON, not an object, a wrong
  version, a field missing or of the wrong type, a command not from a user, a command
  on another command's queue, an event under another routing key) is dead-lettered:
  the test finds it, byte for byte, in that queue's dead-letter queue.
- The reader keeps going: a valid message published after the poison is handled.
- A valid command whose ``data`` is anything at all is answered: its service publishes
  a result or an error naming the command, and nothing is left hanging.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.messaging import BROADCAST, Address, Command, Envelope, new_id
from shared.messaging.names import TYPE_PATTERN
from services.cat_relay.server import RelayServer
from services.excel_worker.server import ExcelWorkerServer
from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.hostile.broker import COMMAND_DEAD, EVENTS_DEAD, RawBroker
from tests.hostile.strategies import (
    EXPORT_PARAMS,
    RUN_ARGS,
    almost_json,
    dumps,
    finite_values,
    mostly,
    not_objects,
    not_strings,
    plain_objects,
    scalars,
)
from tests.support.client import Client

FUZZ = settings(
    database=None, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WAIT = 20.0
EDGE = "edge"
DESTINATIONS: tuple[str, ...] = (EDGE, *(c.value for c in Command))
FUZZER = "fuzzer"  # sends the commands; has no socket, the test reads its results
WATCHER = "watcher"  # has a socket, and gets the broadcasts


# -- poison ----------------------------------------------------------------------


def template(destination: str) -> dict[str, Any]:
    """A valid message for ``destination``, for a mutation to break."""
    if destination == EDGE:
        return {"v": 1, "id": new_id(), "type": "fuzz.event", "ts": time.time(),
                "to": BROADCAST, "from": "service:fuzz", "data": {}}
    return {"v": 1, "id": new_id(), "type": destination, "ts": time.time(),
            "to": f"user:{FUZZER}", "from": f"user:{FUZZER}", "data": {}}


# Values each field must not have (docs/protocol.md section 2).
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "v": st.one_of(
        st.integers().filter(lambda v: v != 1), st.sampled_from([True, 1.0, "1", None, [1]])
    ),
    "id": st.one_of(st.just(""), st.text(min_size=129, max_size=200), not_strings),
    "type": st.one_of(
        st.text(max_size=70).filter(lambda t: len(t) > 64 or TYPE_PATTERN.fullmatch(t) is None),
        not_strings,
    ),
    "ts": st.one_of(st.text(max_size=10), st.booleans(), st.none(), st.lists(scalars, max_size=2)),
    "to": st.one_of(
        st.sampled_from(["service:x", "user:", "group:a.b", "broadcast:x", "user:*", "", "x"]),
        not_strings,
    ),
    "from": st.one_of(
        st.sampled_from(["group:team", "broadcast", "user:", "service:"]), not_strings
    ),
    "data": not_objects,
}


@dataclass(frozen=True)
class Poison:
    """How to spoil a valid message; ``body`` applies it to one destination's template."""

    kind: str
    field: str = ""
    value: Any = None
    raw: bytes = b""

    def body(self, destination: str) -> bytes:
        message = template(destination)
        if self.kind == "raw":
            return self.raw
        if self.kind == "drop":
            del message[self.field]
        elif self.kind == "set":
            message[self.field] = self.value
        elif self.kind == "misdirected":
            # An event under another routing key; a command on another command's queue.
            if destination == EDGE:
                message["to"] = "user:someone-else"
            elif destination == Command.CHAT_ASK:
                message["type"] = "fuzz.event"
            else:
                message["type"] = Command.CHAT_ASK.value
        elif self.kind == "not_from_a_user":
            message["from"] = "service:impostor"
            if destination == EDGE:
                message["to"] = "group:elsewhere"  # events may come from services
        elif self.kind == "infinite_ts":
            return dumps({**message, "ts": "TS"}).replace('"TS"', "1e999").encode()
        elif self.kind == "second_version":
            return (dumps(message)[:-1] + ', "v": 2}').encode()
        return dumps(message).encode()


poisons = st.one_of(
    st.builds(Poison, st.just("raw"), raw=st.binary(max_size=300)),
    st.builds(Poison, st.just("raw"), raw=almost_json.map(str.encode)),
    st.builds(Poison, st.just("raw"), raw=not_objects.map(lambda v: dumps(v).encode())),
    st.builds(Poison, st.just("drop"), field=st.sampled_from(sorted(INVALID))),
    st.sampled_from(sorted(INVALID)).flatmap(
        lambda field: st.builds(Poison, st.just("set"), field=st.just(field), value=INVALID[field])
    ),
    st.builds(
        Poison, st.sampled_from(["misdirected", "not_from_a_user", "infinite_ts", "second_version"])
    ),
)


class Services:
    """Every reader of the broker, and the test's own ends: a socket and a raw connection."""

    def __init__(self, broker: RawBroker, watcher: Client) -> None:
        self.broker = broker
        self.watcher = watcher

    async def publish(self, destination: str, body: bytes, message_id: str) -> None:
        if destination == EDGE:
            await self.broker.publish_event(body, BROADCAST, message_id)
        else:
            await self.broker.publish_command(body, Command(destination), message_id)

    def dead_letter(self, destination: str, message_id: str) -> asyncio.Future[bytes]:
        queue = EVENTS_DEAD if destination == EDGE else COMMAND_DEAD[Command(destination)]
        return self.broker.dead[queue].expect(message_id)

    async def still_handled(self, destination: str) -> None:
        """A valid message to ``destination`` gets its answer."""
        if destination == EDGE:
            marker = template(EDGE)
            await self.publish(EDGE, dumps(marker).encode(), marker["id"])
            while (await self.watcher.recv(WAIT)).get("id") != marker["id"]:
                pass
            return
        data = {
            Command.CHAT_ASK: {"text": "still there?"},
            Command.RUN_START: {"job": "no-such-job"},
            Command.RUN_STOP: {"run_id": "no-such-run"},
            Command.EXCEL_CREATE: {"report": "no-such-report"},
        }[Command(destination)]
        result = await self.command(destination, data)
        assert result["type"] in {"chat.reply", "run.error", "excel.failed"}, result

    async def command(self, destination: str, data: Any) -> dict[str, Any]:
        """Publish a valid command from the fuzzer; its result (or error) event."""
        me = Address.user(FUZZER)
        envelope = Envelope(type=destination, to=me, sender=me, data=data)
        answered = self.broker.results.expect(envelope.id)
        dead = self.dead_letter(destination, envelope.id)
        # Written as any JSON library would: integers past 64 bits and all.
        await self.publish(destination, dumps(envelope.to_dict()).encode(), envelope.id)
        done, _ = await asyncio.wait(
            {answered, dead}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        assert answered in done, (
            f"{destination} {data!r}: dead-lettered instead of answered" if dead in done
            else f"{destination} {data!r}: no answer within {WAIT} s"
        )
        return dict(answered.result())


@pytest.fixture
async def services(
    edge: EdgeServer, relay: RelayServer, runner: RunnerServer, worker: ExcelWorkerServer,
    raw_broker: RawBroker, token_for: Callable[..., str],
) -> Services:
    await raw_broker.tap_results([FUZZER])
    await raw_broker.watch_dead_letters([EVENTS_DEAD, *COMMAND_DEAD.values()])
    watcher = await Client.connect(edge.port, token_for(WATCHER))
    return Services(raw_broker, watcher)


@settings(FUZZ, max_examples=100)
@given(spoiled=st.lists(poisons, min_size=1, max_size=3))
async def test_poison_is_dead_lettered_and_the_reader_goes_on(
    services: Services, spoiled: list[Poison]
) -> None:
    expected: list[tuple[str, bytes, asyncio.Future[bytes]]] = []
    for destination in DESTINATIONS:
        for poison in spoiled:
            body, message_id = poison.body(destination), f"poison-{uuid.uuid4().hex}"
            expected.append((destination, body, services.dead_letter(destination, message_id)))
            await services.publish(destination, body, message_id)
    await asyncio.gather(*(services.still_handled(d) for d in DESTINATIONS))
    for destination, body, dead in expected:
        assert await asyncio.wait_for(dead, WAIT) == body, destination


# -- valid commands, fuzzed data -----------------------------------------------------

DATA: dict[Command, st.SearchStrategy[Any]] = {
    Command.CHAT_ASK: mostly(
        st.fixed_dictionaries({"text": st.text(max_size=60)}),
        st.one_of(st.fixed_dictionaries({}, optional={"text": finite_values}), plain_objects),
    ),
    Command.RUN_START: mostly(
        st.fixed_dictionaries(
            {"job": mostly(st.sampled_from(["countdown", "lines", "primes", "http_probe", "nope"]),
                           finite_values)},
            optional={"args": mostly(RUN_ARGS, finite_values)},
        ),
        plain_objects,
    ),
    Command.RUN_STOP: mostly(
        st.fixed_dictionaries({"run_id": mostly(st.text(max_size=130), finite_values)}),
        plain_objects,
    ),
    Command.EXCEL_CREATE: mostly(
        st.fixed_dictionaries(
            {"report": mostly(st.sampled_from(["sample", "activity", "table", "nope"]),
                              finite_values)},
            optional={"params": mostly(EXPORT_PARAMS, finite_values)},
        ),
        plain_objects,
    ),
}
# What may answer each command (docs/protocol.md 14).
ANSWERS = {
    Command.CHAT_ASK: {"chat.reply", "chat.error"},
    Command.RUN_START: {"run.queued", "run.error"},
    Command.RUN_STOP: {"run.error"},
    Command.EXCEL_CREATE: {"excel.done", "excel.failed"},
}


@settings(FUZZ, max_examples=80)
@given(data=st.fixed_dictionaries({c: DATA[c] for c in Command}))
async def test_a_valid_command_with_any_data_is_answered(
    services: Services, data: dict[Command, Any]
) -> None:
    results = await asyncio.gather(*(services.command(c.value, data[c]) for c in Command))
    for command, result in zip(Command, results, strict=True):
        assert result["type"] in ANSWERS[command], (command, data[command], result)
        if result["type"].endswith((".error", ".failed")):
            assert result["data"]["code"] and result["data"]["message"], result
    for destination in DESTINATIONS:
        await services.still_handled(destination)


# -- huge ----------------------------------------------------------------------------

HUGE = 4 << 20  # bytes; RabbitMQ takes messages of up to 128 MiB by default


async def test_huge_messages_are_dead_lettered_or_refused(
    services: Services, edge: EdgeServer, token_for: Callable[..., str]
) -> None:
    pad = "x" * HUGE

    def spoiled(destination: str) -> list[bytes]:
        message = template(destination)
        return [
            b"\xff" * HUGE,  # not JSON
            dumps(message | {"v": 2, "data": {"pad": pad}}).encode(),  # an unknown version
            dumps(message | {"from": "group:" + pad}).encode(),  # an impossible sender
        ]

    expected = []
    for destination in DESTINATIONS:
        for body in spoiled(destination):
            message_id = f"huge-{uuid.uuid4().hex}"
            expected.append((services.dead_letter(destination, message_id), body))
            await services.publish(destination, body, message_id)
    for dead, body in expected:
        assert await asyncio.wait_for(dead, WAIT) == body

    # Valid commands with huge data are refused with a reason.
    huge_data = {
        Command.CHAT_ASK: {"text": pad},
        Command.RUN_START: {"job": "countdown", "args": {"start": 1, "pad": pad}},
        Command.RUN_STOP: {"run_id": pad},
        Command.EXCEL_CREATE: {"report": "sample", "params": {"rows": 1, "pad": pad}},
    }
    for command, data in huge_data.items():
        result = await services.command(command.value, data)
        assert result["type"] in {"chat.error", "run.error", "excel.failed"}, result
        assert len(result["data"]["message"]) < 1000  # the reason, not an echo of the input

    # A huge valid event reaches a socket that reads, whole, and the edge goes on (one
    # that does not read is closed with 4008: test_resource_abuse.py).
    big = await Client.connect(edge.port, token_for("big"))
    event = template(EDGE) | {"to": "user:big", "data": {"pad": pad}}
    await services.broker.publish_event(dumps(event).encode(), "user.big", event["id"])
    assert await big.recv(WAIT) == event
    for destination in DESTINATIONS:
        await services.still_handled(destination)
