"""Who may send ``message.send`` to whom. Pure logic, configured from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from shared.auth import Identity
from shared.config import ConfigError, Env, env_str
from shared.messaging import Address, Kind
from shared.messaging.names import valid_name


R = TypeVar("R", bound=StrEnum)


class PolicyDenied(PermissionError):
    """The sender may not address this destination."""


class DirectRule(StrEnum):
    ANY = "any"  # any user may message any user
    NONE = "none"  # direct messages are off


class GroupRule(StrEnum):
    MEMBERS = "members"  # only members of the group
    ANY = "any"  # any user
    NONE = "none"  # group messages are off


def _rule(env: Env, name: str, rule: type[R], default: R) -> R:
    raw = env_str(env, name, default.value)
    try:
        return rule(raw)
    except ValueError as exc:
        allowed = ", ".join(r.value for r in rule)
        raise ConfigError(f"{name} must be one of {allowed}, got {raw!r}") from exc


def _role(env: Env) -> str:
    role = env.get("WARREN_POLICY_BROADCAST_ROLE", "admin").strip()
    if role and not valid_name(role):
        raise ConfigError(f"WARREN_POLICY_BROADCAST_ROLE must be a role name or empty, got {role!r}")
    return role


@dataclass(frozen=True, slots=True)
class SendPolicy:
    direct: DirectRule = DirectRule.ANY
    group: GroupRule = GroupRule.MEMBERS
    broadcast_role: str = "admin"  # empty: nobody may broadcast

    @classmethod
    def from_env(cls, env: Env) -> SendPolicy:
        return cls(
            direct=_rule(env, "WARREN_POLICY_DIRECT", DirectRule, DirectRule.ANY),
            group=_rule(env, "WARREN_POLICY_GROUP", GroupRule, GroupRule.MEMBERS),
            broadcast_role=_role(env),
        )

    def check(self, sender: Identity, to: Address) -> None:
        """Raise :class:`PolicyDenied` unless ``sender`` may send to ``to``."""
        if to.kind is Kind.USER:
            if self.direct is DirectRule.NONE:
                raise PolicyDenied("direct messages are disabled")
        elif to.kind is Kind.GROUP:
            if self.group is GroupRule.NONE:
                raise PolicyDenied("group messages are disabled")
            if self.group is GroupRule.MEMBERS and to.name not in sender.groups:
                raise PolicyDenied(f"only members of {to.name!r} may message it")
        elif to.kind is Kind.BROADCAST:
            if not self.broadcast_role:
                raise PolicyDenied("broadcast is disabled")
            if not sender.has_role(self.broadcast_role):
                raise PolicyDenied(f"broadcast needs the role {self.broadcast_role!r}")
        else:
            raise PolicyDenied(f"cannot send to {to}")
