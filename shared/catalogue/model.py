"""What a service offers, as it announces it in the catalogue, and how an edge checks it.

An announcement is an envelope of type ``catalogue.announce`` from ``service:<name>``
whose ``data`` is::

    {"instance": "<instance id>", "ttl": <seconds>,
     "commands": [{"type": "run.start", "roles": null, "description": "..."}],
     "jobs": [{"name": "...", "description": "...", "args": {<schema>}, "roles": null}],
     "reports": [{"name": "...", "description": "...", "params": {<schema>}, "roles": null}]}

A schema maps a parameter's name to ``{"kind", "help", "default"?, "minimum"?,
"maximum"?, "max_length"?, "choices"?}`` (``warren.params.describe``); ``roles`` is null
when every signed-in user may use the entry, else the roles that may. Anything else in a
job or report entry is passed through to clients unchanged.

An edge must survive whatever arrives on the catalogue exchange: :func:`parse_announcement`
refuses a message whose envelope fields are wrong as a whole (:class:`CatalogueError`), and
an entry that is wrong on its own is left out and reported (:class:`Refusal`), so one bad
entry never hides the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from shared.messaging.envelope import Envelope
from shared.messaging.names import (
    MAX_TYPE_LENGTH,
    AddressError,
    CatalogueKey,
    Kind,
    check_type,
    valid_name,
)
from warren.params import KINDS

# ``json`` is a kind the console can edit that no job parameter uses: report parameters
# such as the ``table`` report's columns are structured.
SCHEMA_KINDS: Final = frozenset({*KINDS, "json"})
MAX_INSTANCE_LENGTH: Final = 200
MAX_DESCRIPTION_LENGTH: Final = 2000
MAX_HELP_LENGTH: Final = 500
MAX_ENTRIES: Final = 256  # commands, jobs or reports in one announcement
MAX_PARAMS: Final = 64
MAX_CHOICES: Final = 256
MAX_ROLES: Final = 64
# The longest any edge keeps an announcement without hearing it again, whatever it says.
MAX_TTL_S: Final = 3600.0
MIN_TTL_S: Final = 0.5

Roles = frozenset[str] | None  # None: every signed-in user
T = TypeVar("T")


class CatalogueError(ValueError):
    """An announcement or withdrawal that cannot be used at all."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """One entry of an announcement left out, and why."""

    kind: str  # "command", "job" or "report"
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class CommandType:
    """A command type a service consumes, and who may send it (``roles``: None for every
    signed-in user)."""

    type: str
    roles: Roles = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", check_type(str(self.type)))
        if self.roles is not None:
            object.__setattr__(self, "roles", frozenset(_check_roles(sorted(self.roles))))

    def to_dict(self) -> dict[str, Any]:
        roles = None if self.roles is None else sorted(self.roles)
        return {"type": self.type, "roles": roles, "description": self.description}


@dataclass(frozen=True, slots=True)
class Offer:
    """What one service offers: command types, and the jobs and reports it runs, each as
    described (``Job.describe()``, a report's description)."""

    commands: tuple[CommandType, ...] = ()
    jobs: tuple[Mapping[str, Any], ...] = ()
    reports: tuple[Mapping[str, Any], ...] = ()

    def to_data(self) -> dict[str, Any]:
        return {
            "commands": [c.to_dict() for c in self.commands],
            "jobs": [dict(j) for j in self.jobs],
            "reports": [dict(r) for r in self.reports],
        }


@dataclass(frozen=True, slots=True)
class Announcement:
    service: str
    instance: str
    ttl_s: float
    offer: Offer
    refused: tuple[Refusal, ...] = field(default=(), compare=False)


def announcement_data(instance: str, ttl_s: float, offer: Offer) -> dict[str, Any]:
    return {"instance": instance, "ttl": ttl_s, **offer.to_data()}


def instance_of(envelope: Envelope) -> str:
    """The instance a catalogue message speaks for; :class:`CatalogueError` if none."""
    instance = envelope.data.get("instance")
    if not isinstance(instance, str) or not 0 < len(instance) <= MAX_INSTANCE_LENGTH:
        raise CatalogueError(
            f"instance must be a string of 1 to {MAX_INSTANCE_LENGTH} characters"
        )
    return instance


def parse_announcement(envelope: Envelope) -> Announcement:
    """The announcement in ``envelope``, without the entries that are invalid (listed in
    ``refused``); :class:`CatalogueError` if the message as a whole is not one."""
    if envelope.type != CatalogueKey.ANNOUNCE:
        raise CatalogueError(f"not an announcement: {envelope.type!r}")
    if envelope.sender.kind is not Kind.SERVICE:
        raise CatalogueError(f"an announcement comes from a service, not {envelope.sender}")
    data = envelope.data
    instance = instance_of(envelope)
    ttl = data.get("ttl")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise CatalogueError(f"ttl must be a number of seconds, got {_show(ttl)}")
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise CatalogueError(f"ttl must be {MIN_TTL_S:g} to {MAX_TTL_S:g} seconds, got {ttl:g}")
    refused: list[Refusal] = []
    commands = tuple(_entries(data, "commands", "command", _command, refused))
    jobs = tuple(_entries(data, "jobs", "job", lambda e: _described(e, "args"), refused))
    reports = tuple(_entries(data, "reports", "report", lambda e: _described(e, "params"), refused))
    return Announcement(
        service=envelope.sender.name, instance=instance, ttl_s=float(ttl),
        offer=Offer(commands, jobs, reports), refused=tuple(refused),
    )


def _entries(
    data: Mapping[str, Any], key: str, kind: str, parse: Callable[[object], T],
    refused: list[Refusal],
) -> list[T]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise CatalogueError(f"{key} must be a list")
    if len(raw) > MAX_ENTRIES:
        raise CatalogueError(f"{key} has {len(raw)} entries, more than {MAX_ENTRIES}")
    parsed: list[T] = []
    seen: set[str] = set()
    for entry in raw:
        name = _name_of(entry)
        try:
            value = parse(entry)
            if name in seen:
                raise CatalogueError(f"{kind} {name!r} is announced twice")
        except (CatalogueError, AddressError) as exc:
            refused.append(Refusal(kind, name, str(exc)))
            continue
        seen.add(name)
        parsed.append(value)
    return parsed


def _name_of(entry: object) -> str:
    if isinstance(entry, dict):
        name = entry.get("type", entry.get("name"))
        if isinstance(name, str):
            return name[:MAX_TYPE_LENGTH]
    return "?"


def _command(entry: object) -> CommandType:
    if not isinstance(entry, dict):
        raise CatalogueError("a command must be an object")
    kind = check_type(entry.get("type"))
    description = _text(entry.get("description", ""), "description", MAX_DESCRIPTION_LENGTH)
    return CommandType(kind, _roles(entry.get("roles")), description)


def _described(entry: object, schema_key: str) -> Mapping[str, Any]:
    """A job or report entry, checked: a name, a description, a schema, roles."""
    if not isinstance(entry, dict):
        raise CatalogueError("an entry must be an object")
    name = entry.get("name")
    if not valid_name(name):
        raise CatalogueError(f"name must match [A-Za-z0-9_-]{{1,64}}, got {_show(name)}")
    _text(entry.get("description", ""), "description", MAX_DESCRIPTION_LENGTH)
    schema = entry.get(schema_key, {})
    if not isinstance(schema, dict):
        raise CatalogueError(f"{schema_key} must be an object")
    if len(schema) > MAX_PARAMS:
        raise CatalogueError(f"{schema_key} has more than {MAX_PARAMS} parameters")
    for param, spec in schema.items():
        _param(param, spec)
    roles = _roles(entry.get("roles"))
    return {**entry, "roles": None if roles is None else sorted(roles)}


def _param(name: str, spec: object) -> None:
    if not valid_name(name):
        raise CatalogueError(f"parameter name must match [A-Za-z0-9_-]{{1,64}}, got {_show(name)}")
    if not isinstance(spec, dict):
        raise CatalogueError(f"parameter {name}: must be an object")
    kind = spec.get("kind")
    if kind not in SCHEMA_KINDS:
        raise CatalogueError(f"parameter {name}: kind must be one of "
                             f"{', '.join(sorted(SCHEMA_KINDS))}, got {_show(kind)}")
    _text(spec.get("help", ""), f"parameter {name}: help", MAX_HELP_LENGTH)
    for bound in ("minimum", "maximum"):
        value = spec.get(bound)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise CatalogueError(f"parameter {name}: {bound} must be a number")
    max_length = spec.get("max_length")
    if max_length is not None and (type(max_length) is not int or max_length < 0):
        raise CatalogueError(f"parameter {name}: max_length must be a whole number")
    choices = spec.get("choices")
    if choices is not None and (
        not isinstance(choices, list) or len(choices) > MAX_CHOICES
        or not all(isinstance(c, str) for c in choices)
    ):
        raise CatalogueError(f"parameter {name}: choices must be a list of strings")


def _roles(raw: object) -> Roles:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_ROLES:
        raise CatalogueError(f"roles must be null or a list of at most {MAX_ROLES} role names")
    return frozenset(_check_roles(raw))


def _check_roles(roles: list[Any]) -> list[str]:
    for role in roles:
        if not valid_name(role):
            raise CatalogueError(f"role must match [A-Za-z0-9_-]{{1,64}}, got {_show(role)}")
    return roles


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise CatalogueError(f"{what} must be a string of at most {limit} characters")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
