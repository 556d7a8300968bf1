"""Which command types a client may send, and what the catalogue shows it.

A type is accepted when a running service declared it in the catalogue
(shared/catalogue) or the edge handles it itself; anything else is ``unknown_type``. Who
may send a declared type is the declaring service's choice (every signed-in user unless
it names roles), which the operator may override per type with
``WARREN_EDGE_COMMAND_ROLES``. A user with the admin role (``WARREN_ADMIN_ROLE``) may
send every declared type and sees the whole catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from shared.auth import Identity
from shared.catalogue import CatalogueView, CommandType, Offer, Roles
from shared.config import ConfigError, Env
from shared.messaging.names import AddressError, Command, check_type, valid_name
from services.ws_edge.frames import AUTH_REFRESH, HISTORY, MESSAGE_SEND
from services.ws_edge.policy import PolicyDenied

if TYPE_CHECKING:
    from services.ws_edge.settings import EdgeSettings

COMMAND_ROLES_SETTING: Final = "WARREN_EDGE_COMMAND_ROLES"
EVERYONE: Final = "*"
EDGE_SERVICE: Final = "edge"
EDGE_OFFER: Final = Offer(commands=(
    CommandType(MESSAGE_SEND, description="a message to a user, a group or everyone"),
    CommandType(AUTH_REFRESH, description="go on with a new token of the same user"),
    CommandType(HISTORY, description="the recent events of one of the token's keys"),
))
# The command a client sends to use a job or a report the catalogue lists.
JOBS_COMMAND: Final = Command.RUN_START.value
REPORTS_COMMAND: Final = Command.EXCEL_CREATE.value


@dataclass(frozen=True, slots=True)
class CommandRoles:
    """The operator's word on who may send a type, over the declaring service's.

    ``WARREN_EDGE_COMMAND_ROLES="orders.create=ops|admin,run.start=*"``: comma-separated
    ``<type>=<roles>``, where ``<roles>`` is ``*`` (every signed-in user) or role names
    separated by ``|``.
    """

    overrides: Mapping[str, Roles] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Env) -> CommandRoles:
        return cls.parse(env.get(COMMAND_ROLES_SETTING, ""))

    @classmethod
    def parse(cls, text: str) -> CommandRoles:
        overrides: dict[str, Roles] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            kind, sep, roles = (s.strip() for s in item.partition("="))
            if not sep or not roles:
                raise ConfigError(
                    f"{COMMAND_ROLES_SETTING}: {item!r} is not <type>=<role>|<role>... or <type>=*"
                )
            try:
                check_type(kind)
            except AddressError as exc:
                raise ConfigError(f"{COMMAND_ROLES_SETTING}: {exc}") from exc
            if kind in overrides:
                raise ConfigError(f"{COMMAND_ROLES_SETTING}: {kind} is given twice")
            if roles == EVERYONE:
                overrides[kind] = None
                continue
            names = [r.strip() for r in roles.split("|")]
            bad = [r for r in names if not valid_name(r)]
            if bad:
                raise ConfigError(
                    f"{COMMAND_ROLES_SETTING}: {kind}: {bad[0]!r} is not a role name "
                    "(letters, digits, '_' or '-'; or * for everyone)"
                )
            overrides[kind] = frozenset(names)
        return cls(overrides)


class CommandGate:
    """The catalogue as one user may use it."""

    def __init__(self, view: CatalogueView, roles: CommandRoles, admin_role: str) -> None:
        self.view = view
        self._roles = roles
        self._admin_role = admin_role

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, settings: EdgeSettings,
        registry: CollectorRegistry,
    ) -> CommandGate:
        """Listen to the catalogue and learn what the running services offer (waiting up
        to ``WARREN_EDGE_CATALOGUE_WAIT_S`` for their answers); :meth:`close` at stop."""
        view = CatalogueView(registry, service=EDGE_SERVICE, local=EDGE_OFFER)
        gate = cls(view, settings.command_roles, settings.auth.admin_role)
        await view.open(connection, settings.common.instance_id, wait_s=settings.catalogue_wait_s)
        return gate

    async def close(self) -> None:
        await self.view.close()

    def known(self) -> frozenset[str]:
        """The types a client may name now (whether this user may send them or not)."""
        return self.view.types()

    def roles_of(self, command: CommandType) -> Roles:
        overrides = self._roles.overrides
        return overrides[command.type] if command.type in overrides else command.roles

    def may_send(self, identity: Identity, kind: str) -> bool:
        command = self.view.command(kind)
        return command is not None and self._allows(identity, self.roles_of(command))

    def check(self, identity: Identity, kind: str) -> None:
        """Raise :class:`PolicyDenied` unless ``identity`` may send the known type ``kind``."""
        if not self.may_send(identity, kind):
            raise PolicyDenied(f"sending {kind} needs a role this user does not have")

    def _allows(self, identity: Identity, roles: Roles) -> bool:
        return (
            roles is None
            or identity.has_role(self._admin_role)
            or not roles.isdisjoint(identity.roles)
        )

    def catalogue_for(self, identity: Identity) -> dict[str, Any]:
        """``GET /api/catalogue``: the command types this user may send, and the jobs and
        reports it may use (those of a command it may send, that do not need a role it
        lacks)."""
        listing = self.view.listing()
        commands = [
            {**command.to_dict(), "roles": _shown(self.roles_of(command)),
             "services": list(services)}
            for command, services in listing.commands
            if self._allows(identity, self.roles_of(command))
        ]
        sendable = {c["type"] for c in commands}
        return {
            "commands": commands,
            "jobs": [dict(j) for j in listing.jobs
                     if JOBS_COMMAND in sendable and self._allows(identity, _roles(j))],
            "reports": [dict(r) for r in listing.reports
                        if REPORTS_COMMAND in sendable and self._allows(identity, _roles(r))],
        }


def _roles(entry: Mapping[str, Any]) -> Roles:
    roles = entry.get("roles")
    return None if roles is None else frozenset(roles)


def _shown(roles: Roles) -> list[str] | None:
    return None if roles is None else sorted(roles)
