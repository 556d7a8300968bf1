"""Who may send message.send to whom."""

from __future__ import annotations

import pytest

from services.ws_edge.policy import DirectRule, GroupRule, PolicyDenied, SendPolicy
from shared.auth import Identity
from shared.config import ConfigError
from shared.messaging import ADDRESS_BROADCAST, Address


def who(user: str = "alice", groups: tuple[str, ...] = (), roles: tuple[str, ...] = ()) -> Identity:
    return Identity(user_id=user, groups=groups, roles=roles, expires_at=0.0)


PLAIN = who()
MEMBER = who(groups=("ops",))
ADMIN = who(roles=("admin",))


def allowed(policy: SendPolicy, sender: Identity, to: Address) -> bool:
    try:
        policy.check(sender, to)
    except PolicyDenied:
        return False
    return True


# --- defaults -------------------------------------------------------------------------


def test_defaults() -> None:
    policy = SendPolicy()
    assert policy.direct is DirectRule.ANY
    assert policy.group is GroupRule.MEMBERS
    assert policy.broadcast_role == "admin"


def test_default_any_user_may_message_any_user() -> None:
    assert allowed(SendPolicy(), PLAIN, Address.user("bob"))
    assert allowed(SendPolicy(), PLAIN, Address.user("alice"))


def test_default_group_members_may_message_their_group() -> None:
    assert allowed(SendPolicy(), MEMBER, Address.group("ops"))


def test_default_non_members_may_not_message_a_group() -> None:
    assert not allowed(SendPolicy(), PLAIN, Address.group("ops"))
    assert not allowed(SendPolicy(), MEMBER, Address.group("dev"))
    assert not allowed(SendPolicy(), ADMIN, Address.group("ops"))


def test_default_group_membership_is_exact() -> None:
    assert not allowed(SendPolicy(), who(groups=("ops",)), Address.group("Ops"))
    assert not allowed(SendPolicy(), who(groups=("ops-team",)), Address.group("ops"))


def test_default_only_admins_may_broadcast() -> None:
    assert allowed(SendPolicy(), ADMIN, ADDRESS_BROADCAST)
    assert not allowed(SendPolicy(), PLAIN, ADDRESS_BROADCAST)
    assert not allowed(SendPolicy(), who(groups=("admin",)), ADDRESS_BROADCAST)
    assert not allowed(SendPolicy(), who(roles=("Admin",)), ADDRESS_BROADCAST)


def test_services_are_never_destinations() -> None:
    with pytest.raises(PolicyDenied):
        SendPolicy(group=GroupRule.ANY).check(ADMIN, Address.service("chat"))


def test_policy_denied_is_a_permission_error() -> None:
    assert issubclass(PolicyDenied, PermissionError)


# --- each rule ------------------------------------------------------------------------


def test_direct_none_disables_direct_messages() -> None:
    policy = SendPolicy(direct=DirectRule.NONE)
    with pytest.raises(PolicyDenied, match="direct"):
        policy.check(ADMIN, Address.user("bob"))
    assert allowed(policy, MEMBER, Address.group("ops"))
    assert allowed(policy, ADMIN, ADDRESS_BROADCAST)


def test_group_any_lets_non_members_in() -> None:
    policy = SendPolicy(group=GroupRule.ANY)
    assert allowed(policy, PLAIN, Address.group("ops"))
    assert allowed(policy, MEMBER, Address.group("ops"))


def test_group_none_disables_group_messages_even_for_members() -> None:
    policy = SendPolicy(group=GroupRule.NONE)
    with pytest.raises(PolicyDenied, match="group"):
        policy.check(MEMBER, Address.group("ops"))
    assert allowed(policy, PLAIN, Address.user("bob"))


def test_custom_broadcast_role() -> None:
    policy = SendPolicy(broadcast_role="announcer")
    assert allowed(policy, who(roles=("announcer",)), ADDRESS_BROADCAST)
    assert not allowed(policy, ADMIN, ADDRESS_BROADCAST)


def test_empty_broadcast_role_disables_broadcast() -> None:
    policy = SendPolicy(broadcast_role="")
    with pytest.raises(PolicyDenied, match="disabled"):
        policy.check(who(roles=("admin", "")), ADDRESS_BROADCAST)


# --- from_env -------------------------------------------------------------------------


def test_from_env_defaults() -> None:
    assert SendPolicy.from_env({}) == SendPolicy()


def test_from_env_blank_values_mean_defaults_for_rules() -> None:
    env = {"WARREN_POLICY_DIRECT": "  ", "WARREN_POLICY_GROUP": ""}
    assert SendPolicy.from_env(env) == SendPolicy()


def test_from_env_overrides() -> None:
    env = {
        "WARREN_POLICY_DIRECT": "none",
        "WARREN_POLICY_GROUP": " any ",
        "WARREN_POLICY_BROADCAST_ROLE": " announcer ",
    }
    assert SendPolicy.from_env(env) == SendPolicy(DirectRule.NONE, GroupRule.ANY, "announcer")


def test_from_env_group_none() -> None:
    assert SendPolicy.from_env({"WARREN_POLICY_GROUP": "none"}).group is GroupRule.NONE


def test_from_env_empty_broadcast_role_disables_broadcast() -> None:
    policy = SendPolicy.from_env({"WARREN_POLICY_BROADCAST_ROLE": ""})
    assert policy.broadcast_role == ""
    assert not allowed(policy, ADMIN, ADDRESS_BROADCAST)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WARREN_POLICY_DIRECT", "members"),
        ("WARREN_POLICY_DIRECT", "all"),
        ("WARREN_POLICY_DIRECT", "ANY"),
        ("WARREN_POLICY_GROUP", "member"),
        ("WARREN_POLICY_GROUP", "yes"),
        ("WARREN_POLICY_GROUP", "NONE"),
    ],
)
def test_from_env_bad_values_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        SendPolicy.from_env({name: value})


def test_from_env_error_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match="members, any, none"):
        SendPolicy.from_env({"WARREN_POLICY_GROUP": "x"})
