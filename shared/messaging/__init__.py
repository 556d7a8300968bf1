"""Broker topology, names and the message envelope: the only place they are spelled."""

from shared.messaging.envelope import Envelope, EnvelopeError, decode, encode, new_id
from shared.messaging.names import (
    ADDRESS_BROADCAST,
    BROADCAST,
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    Address,
    AddressError,
    Command,
    Kind,
    group_key,
    parse_destination,
    parse_sender,
    user_key,
)

__all__ = [
    "ADDRESS_BROADCAST",
    "BROADCAST",
    "COMMANDS_EXCHANGE",
    "EVENTS_EXCHANGE",
    "Address",
    "AddressError",
    "Command",
    "Envelope",
    "EnvelopeError",
    "Kind",
    "decode",
    "encode",
    "group_key",
    "new_id",
    "parse_destination",
    "parse_sender",
    "user_key",
]
