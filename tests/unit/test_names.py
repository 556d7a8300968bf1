"""Broker names and addresses: the only strings the system routes on."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.messaging.names import (
    ADDRESS_BROADCAST,
    BROADCAST,
    Address,
    AddressError,
    Command,
    Kind,
    check_name,
    check_type,
    command_key,
    dead_letter_queue_name,
    edge_queue_name,
    group_key,
    parse_destination,
    parse_sender,
    user_key,
    valid_name,
    work_queue_name,
)

PROPERTY = settings(database=None, max_examples=300, deadline=None)

NAME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

valid_names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=64)

BAD_NAMES: list[object] = [
    "",
    "a.b",
    "a*",
    "*",
    "#",
    "a#b",
    "a b",
    " a",
    "a ",
    "a\n",
    "a:b",
    "a/b",
    "x" * 65,
    "é",
    "usér",
    "ａ",  # fullwidth a
    "١",  # Arabic-Indic digit one
    "a\x00",
    None,
    1,
    b"abc",
    ["a"],
]


# --- routing keys ---------------------------------------------------------------------


def test_user_key_prefixes_user() -> None:
    assert user_key("alice") == "user.alice"


def test_group_key_prefixes_group() -> None:
    assert group_key("ops-team_1") == "group.ops-team_1"


def test_broadcast_constant() -> None:
    assert BROADCAST == "broadcast"


def test_name_of_64_characters_is_accepted() -> None:
    assert user_key("x" * 64) == "user." + "x" * 64


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_user_key_rejects_bad_ids(bad: object) -> None:
    with pytest.raises(AddressError):
        user_key(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_group_key_rejects_bad_names(bad: object) -> None:
    with pytest.raises(AddressError):
        group_key(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_valid_name_is_false_for_bad_names(bad: object) -> None:
    assert valid_name(bad) is False


def test_check_name_returns_the_name() -> None:
    assert check_name("abc", "thing") == "abc"


def test_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)


@PROPERTY
@given(valid_names)
def test_valid_names_are_accepted(name: str) -> None:
    assert valid_name(name)
    assert user_key(name) == f"user.{name}"
    assert group_key(name) == f"group.{name}"


@PROPERTY
@given(st.text(max_size=80))
def test_valid_name_agrees_with_the_pattern(text: str) -> None:
    assert valid_name(text) == (NAME_RE.fullmatch(text) is not None)


# --- Address --------------------------------------------------------------------------


def test_user_address_str_and_routing_key() -> None:
    address = Address.user("alice")
    assert address.kind is Kind.USER
    assert str(address) == "user:alice"
    assert address.routing_key == "user.alice"


def test_group_address_str_and_routing_key() -> None:
    address = Address.group("ops")
    assert address.kind is Kind.GROUP
    assert str(address) == "group:ops"
    assert address.routing_key == "group.ops"


def test_broadcast_address_str_and_routing_key() -> None:
    assert str(ADDRESS_BROADCAST) == "broadcast"
    assert ADDRESS_BROADCAST.routing_key == "broadcast"
    assert ADDRESS_BROADCAST == Address(Kind.BROADCAST)


def test_service_address_has_no_routing_key() -> None:
    address = Address.service("chat")
    assert str(address) == "service:chat"
    with pytest.raises(AddressError):
        _ = address.routing_key


def test_broadcast_address_takes_no_name() -> None:
    with pytest.raises(AddressError):
        Address(Kind.BROADCAST, "x")


@pytest.mark.parametrize("kind", [Kind.USER, Kind.GROUP, Kind.SERVICE])
@pytest.mark.parametrize("bad", ["", "a.b", "*", "#", "a b", "x" * 65])
def test_named_address_rejects_bad_names(kind: Kind, bad: str) -> None:
    with pytest.raises(AddressError):
        Address(kind, bad)


def test_address_is_frozen() -> None:
    address = Address.user("alice")
    with pytest.raises(AttributeError):
        address.name = "bob"  # type: ignore[misc]


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user:alice", Address(Kind.USER, "alice")),
        ("group:ops", Address(Kind.GROUP, "ops")),
        ("broadcast", ADDRESS_BROADCAST),
        ("user:" + "a" * 64, Address(Kind.USER, "a" * 64)),
        ("user:A-z_09", Address(Kind.USER, "A-z_09")),
    ],
)
def test_parse_destination_accepts(text: str, expected: Address) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user:alice", Address(Kind.USER, "alice")),
        ("service:chat", Address(Kind.SERVICE, "chat")),
    ],
)
def test_parse_sender_accepts(text: str, expected: Address) -> None:
    assert parse_sender(text) == expected


BAD_ADDRESSES: list[object] = [
    "",
    "user",
    "user:",
    "group:",
    "service:",
    "user:a.b",
    "user:*",
    "user:#",
    "group:*",
    "group:#",
    "group:a.#",
    "user:a b",
    "user: a",
    "user:a:b",
    "user:" + "a" * 65,
    "user:é",
    "USER:alice",
    "User:alice",
    " user:alice",
    "user:alice ",
    "user:alice\n",
    "user.alice",
    "alice",
    "kind:alice",
    "Broadcast",
    "BROADCAST",
    " broadcast",
    "broadcast ",
    "broadcast\n",
    "broadcast:x",
    "broadcast:*",
    None,
    1,
    b"user:alice",
    ["user:alice"],
    {"kind": "user"},
]


@pytest.mark.parametrize("bad", BAD_ADDRESSES)
def test_parse_destination_rejects(bad: object) -> None:
    with pytest.raises(AddressError):
        parse_destination(bad)


@pytest.mark.parametrize("bad", BAD_ADDRESSES)
def test_parse_sender_rejects(bad: object) -> None:
    with pytest.raises(AddressError):
        parse_sender(bad)


def test_parse_destination_rejects_broadcast_with_empty_name() -> None:
    # Only the exact string "broadcast" names the broadcast destination.
    with pytest.raises(AddressError):
        parse_destination("broadcast:")


def test_parse_destination_rejects_service() -> None:
    with pytest.raises(AddressError):
        parse_destination("service:chat")


def test_parse_sender_rejects_group_and_broadcast() -> None:
    with pytest.raises(AddressError):
        parse_sender("group:ops")
    with pytest.raises(AddressError):
        parse_sender("broadcast")


def _is_valid_destination(text: str) -> bool:
    if text == "broadcast":
        return True
    return re.fullmatch(r"(user|group):[A-Za-z0-9_-]{1,64}", text) is not None


def _is_valid_sender(text: str) -> bool:
    return re.fullmatch(r"(user|service):[A-Za-z0-9_-]{1,64}", text) is not None


address_like = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda prefix, name: f"{prefix}{name}",
        st.sampled_from(["user:", "group:", "service:", "broadcast", "broadcast:", ""]),
        st.text(max_size=70),
    ),
)


@PROPERTY
@given(address_like)
def test_parse_destination_accepts_exactly_the_grammar(text: str) -> None:
    if _is_valid_destination(text):
        assert str(parse_destination(text)) == text
    else:
        with pytest.raises(AddressError):
            parse_destination(text)


@PROPERTY
@given(address_like)
def test_parse_sender_accepts_exactly_the_grammar(text: str) -> None:
    if _is_valid_sender(text):
        assert str(parse_sender(text)) == text
    else:
        with pytest.raises(AddressError):
            parse_sender(text)


@PROPERTY
@given(st.sampled_from([Kind.USER, Kind.GROUP]), valid_names)
def test_destinations_round_trip(kind: Kind, name: str) -> None:
    address = Address(kind, name)
    assert parse_destination(str(address)) == address


@PROPERTY
@given(st.sampled_from([Kind.USER, Kind.SERVICE]), valid_names)
def test_senders_round_trip(kind: Kind, name: str) -> None:
    address = Address(kind, name)
    assert parse_sender(str(address)) == address


@PROPERTY
@given(valid_names)
def test_routing_key_never_holds_wildcards_or_extra_dots(name: str) -> None:
    for address in (Address.user(name), Address.group(name)):
        key = address.routing_key
        assert "*" not in key and "#" not in key
        assert key.count(".") == 1


# --- commands, queues and types -------------------------------------------------------


def test_command_values() -> None:
    assert {c.value for c in Command} == {"chat.ask", "run.start", "run.stop", "excel.create"}


@pytest.mark.parametrize("command", list(Command))
def test_command_key_is_the_value(command: Command) -> None:
    assert command_key(command) == command.value
    assert command_key(command.value) == command.value


@pytest.mark.parametrize(
    ("command", "queue"),
    [
        (Command.CHAT_ASK, "warren.cmd.chat.ask"),
        (Command.RUN_START, "warren.cmd.run.start"),
        (Command.RUN_STOP, "warren.cmd.run.stop"),
        (Command.EXCEL_CREATE, "warren.cmd.excel.create"),
        ("chat.ask", "warren.cmd.chat.ask"),
    ],
)
def test_work_queue_name(command: Command | str, queue: str) -> None:
    assert work_queue_name(command) == queue


def test_a_declared_type_has_its_own_key_and_queue() -> None:
    assert command_key("orders.create") == "orders.create"
    assert work_queue_name("orders.create") == "warren.cmd.orders.create"


@pytest.mark.parametrize("bad", ["", "CHAT.ASK", "#", "chat.*", "a..b", "x" * 65])
def test_work_queue_name_rejects_invalid_types(bad: str) -> None:
    with pytest.raises(ValueError):
        work_queue_name(bad)
    with pytest.raises(ValueError):
        command_key(bad)


def test_dead_letter_queue_name() -> None:
    assert dead_letter_queue_name("warren.cmd.chat.ask") == "warren.cmd.chat.ask.dead"


def test_edge_queue_name() -> None:
    assert edge_queue_name("edge-1") == "warren.edge.edge-1"


@pytest.mark.parametrize(
    "value", ["message", "chat.ask", "a.b.c", "run_1.start_2", "a" * 64, "x1.y2"]
)
def test_check_type_accepts(value: str) -> None:
    assert check_type(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Message",
        "chat.",
        ".chat",
        "chat..ask",
        "1chat",
        "chat.1ask",
        "chat-ask",
        "chat ask",
        "chat.*",
        "chat.#",
        "a" * 65,
        "message\n",
        None,
        1,
        b"message",
    ],
)
def test_check_type_rejects(value: object) -> None:
    with pytest.raises(AddressError):
        check_type(value)
