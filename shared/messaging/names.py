"""Every name on the broker: exchanges, queues, routing keys and addresses.

This module is the single owner of these strings. Services build routing keys and
queue names only through the functions here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeGuard

EVENTS_EXCHANGE: Final = "warren.events"
COMMANDS_EXCHANGE: Final = "warren.commands"
DEAD_LETTER_EXCHANGE: Final = "warren.dlx"
EVENTS_DEAD_LETTER_QUEUE: Final = "warren.events.dead"
# Events of kept types are published to HISTORY_EXCHANGE, which forwards them all to
# EVENTS_EXCHANGE and to the HISTORY_STREAM (docs/protocol.md 17.1).
HISTORY_EXCHANGE: Final = "warren.events.kept"
# Edges bind their queues here, one exact key per held user or group, and EVENTS_EXCHANGE
# forwards everything to it with one "#" binding. A direct exchange, because edges bind
# and unbind on every connect and close, and a direct binding costs the broker less CPU
# and memory than a topic one (no trie to update with it); keys are never patterns
# (docs/protocol.md 3.3).
EDGE_EXCHANGE: Final = "warren.edges"
HISTORY_STREAM: Final = "warren.history"
#: The header that marks an edge's read marker in the stream (not an event).
HISTORY_MARKER_HEADER: Final = "x-warren-marker"

BROADCAST: Final = "broadcast"
_USER_PREFIX: Final = "user."
_GROUP_PREFIX: Final = "group."

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
TYPE_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
MAX_TYPE_LENGTH: Final = 64


class Command(StrEnum):
    """Command types: the routing keys on ``warren.commands``."""

    CHAT_ASK = "chat.ask"
    RUN_START = "run.start"
    RUN_STOP = "run.stop"
    EXCEL_CREATE = "excel.create"


class Event(StrEnum):
    """Event types services publish on ``warren.events`` (section 9 of docs/protocol.md)."""

    MESSAGE = "message"
    CHAT_TOKEN = "chat.token"
    CHAT_REPLY = "chat.reply"
    CHAT_ERROR = "chat.error"
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_OUTPUT = "run.output"
    RUN_FINISHED = "run.finished"
    RUN_ERROR = "run.error"
    EXCEL_PROGRESS = "excel.progress"
    EXCEL_DONE = "excel.done"
    EXCEL_FAILED = "excel.failed"


class AddressError(ValueError):
    """An address, user id, group name or type that must never be routed."""


def valid_name(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: object, what: str) -> str:
    if not valid_name(name):
        raise AddressError(f"{what} must match [A-Za-z0-9_-]{{1,64}}, got {name!r}")
    assert isinstance(name, str)
    return name


def check_type(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_TYPE_LENGTH
        or TYPE_PATTERN.fullmatch(value) is None
    ):
        raise AddressError(f"type must be dotted lower-case words, got {value!r}")
    return value


def user_key(user_id: str) -> str:
    return _USER_PREFIX + check_name(user_id, "user id")


def group_key(group: str) -> str:
    return _GROUP_PREFIX + check_name(group, "group name")


def command_key(command: Command | str) -> str:
    """The routing key of a command type: Warren's own or one a service declared
    (the edge accepts only declared types: docs/protocol.md, the catalogue)."""
    return check_type(str(command))


def work_queue_name(command: Command | str) -> str:
    """The durable work queue that consumes one command type."""
    return f"warren.cmd.{command_key(command)}"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


# cat_relay: a user's session queue is consumed by the replica that answers that user;
# a claim (a message naming the user) in the claims queue asks some replica to take it.
# Both are quorum queues. Their names differ from those of the classic queues that held
# them before (a queue's type cannot change under its name); a relay drains what is left
# in the classic ones once, at start-up (services/cat_relay/migrate.py).
CHAT_CLAIMS_QUEUE: Final = "warren.chat.session-claims"
CLASSIC_CHAT_CLAIMS_QUEUE: Final = "warren.chat.claims"
#: An exclusive queue held by the one relay draining the classic chat queues.
CHAT_DRAIN_LOCK_QUEUE: Final = "warren.chat.classic-drain"


def chat_session_queue_name(user_id: str) -> str:
    """The per-user queue through which cat_relay replicas answer one user's asks in order."""
    return f"warren.chat.user.{check_name(user_id, 'user id')}"


def classic_chat_session_queue_name(user_id: str) -> str:
    """A user's session queue as relays before the quorum chat queues named it."""
    return f"warren.chat.session.{check_name(user_id, 'user id')}"


def chat_replies_queue_name(instance_id: str) -> str:
    """One relay's exclusive queue for the outcomes of the ``POST /send`` asks it made."""
    return f"warren.chat.replies.{instance_id}"


def edge_queue_name(instance_id: str) -> str:
    """The exclusive, auto-delete event queue owned by one edge process."""
    return f"warren.edge.{instance_id}"


# Runner: each replica owns an exclusive control queue, bound to the control exchange
# under its instance id, through which other replicas forward ``run.stop`` to it.
RUNNER_CONTROL_EXCHANGE: Final = "warren.runner.control"


def runner_control_key(instance_id: str) -> str:
    """The routing key of one runner replica's control queue."""
    return instance_id


def runner_control_queue_name(instance_id: str) -> str:
    """The exclusive, auto-delete control queue owned by one runner replica."""
    return f"warren.runner.control.{instance_id}"


# Runner: accepted ``run.start`` commands wait in this durable queue, published to the
# default exchange under its name, until a replica has a free slot.
RUNNER_RUNS_QUEUE: Final = "warren.runner.runs"


# The catalogue (shared/catalogue): services announce what they offer under ANNOUNCE
# (and WITHDRAW on stop); an edge asks every service to announce at once with QUERY.
CATALOGUE_EXCHANGE: Final = "warren.catalogue"


class CatalogueKey(StrEnum):
    """Routing keys on ``warren.catalogue``; each is also its message's envelope type."""

    ANNOUNCE = "catalogue.announce"
    WITHDRAW = "catalogue.withdraw"
    QUERY = "catalogue.query"


def catalogue_queries_queue_name(instance_id: str) -> str:
    """The exclusive, auto-delete queue through which one service instance hears queries."""
    return f"warren.catalogue.query.{instance_id}"


_CATALOGUE_VIEW_PREFIX: Final = "warren.catalogue.view."


def catalogue_view_queue_name(instance_id: str) -> str:
    """The exclusive, auto-delete queue of announcements one edge keeps its view from."""
    return _CATALOGUE_VIEW_PREFIX + instance_id


def is_catalogue_view_queue(name: str) -> bool:
    """Whether ``name`` is an edge's view queue: the only queue a query's answer may go to."""
    return name.startswith(_CATALOGUE_VIEW_PREFIX) and len(name) > len(_CATALOGUE_VIEW_PREFIX)


class Kind(StrEnum):
    USER = "user"
    GROUP = "group"
    BROADCAST = "broadcast"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Address:
    """``user:<id>``, ``group:<name>``, ``broadcast`` or (as a sender) ``service:<name>``."""

    kind: Kind
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind is Kind.BROADCAST:
            if self.name:
                raise AddressError("broadcast takes no name")
        else:
            check_name(self.name, f"{self.kind.value} name")

    def __str__(self) -> str:
        return BROADCAST if self.kind is Kind.BROADCAST else f"{self.kind.value}:{self.name}"

    @property
    def routing_key(self) -> str:
        if self.kind is Kind.USER:
            return user_key(self.name)
        if self.kind is Kind.GROUP:
            return group_key(self.name)
        if self.kind is Kind.BROADCAST:
            return BROADCAST
        raise AddressError(f"{self} is a sender, not a destination")

    @classmethod
    def user(cls, user_id: str) -> Address:
        return cls(Kind.USER, user_id)

    @classmethod
    def group(cls, name: str) -> Address:
        return cls(Kind.GROUP, name)

    @classmethod
    def service(cls, name: str) -> Address:
        return cls(Kind.SERVICE, name)


ADDRESS_BROADCAST: Final = Address(Kind.BROADCAST)

DESTINATION_KINDS: Final = frozenset({Kind.USER, Kind.GROUP, Kind.BROADCAST})
SENDER_KINDS: Final = frozenset({Kind.USER, Kind.SERVICE})


def _parse(text: object, allowed: frozenset[Kind], what: str) -> Address:
    if not isinstance(text, str):
        raise AddressError(f"{what} must be a string, got {type(text).__name__}")
    if text == BROADCAST:
        kind, name = Kind.BROADCAST, ""
    else:
        prefix, sep, name = text.partition(":")
        if not sep or prefix == BROADCAST or prefix not in Kind.__members__.values():
            raise AddressError(f"{what} {text!r} is not of the form kind:name")
        kind = Kind(prefix)
    if kind not in allowed:
        raise AddressError(f"{what} cannot be {kind.value}")
    return Address(kind, name)


def parse_destination(text: object) -> Address:
    """Parse ``user:<id>``, ``group:<name>`` or ``broadcast``."""
    return _parse(text, DESTINATION_KINDS, "destination")


def parse_sender(text: object) -> Address:
    """Parse ``user:<id>`` or ``service:<name>``."""
    return _parse(text, SENDER_KINDS, "sender")
