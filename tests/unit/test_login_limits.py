"""The login limiter's windows: which attempts are refused, and when they may try again."""

from __future__ import annotations

import pytest

from shared.config import ConfigError
from services.ws_edge.login_limits import (
    KnownAddresses,
    LoginLimiter,
    LoginLimits,
    LoginThrottled,
    address_key,
)


def limiter(**env: str) -> LoginLimiter:
    return LoginLimiter(LoginLimits.from_env(env))


def test_failures_for_one_user_from_one_address_are_capped() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="3/minute")
    for _ in range(3):
        limits.attempt("alice", "10.0.0.1")
        limits.failed("alice", "10.0.0.1")
    with pytest.raises(LoginThrottled) as refused:
        limits.attempt("alice", "10.0.0.1")
    assert 1 <= refused.value.retry_after_s <= 60
    # Another address, and another user from the same address, are not locked out.
    limits.attempt("alice", "10.0.0.2")
    limits.attempt("bob", "10.0.0.1")


def test_a_success_clears_the_failures_from_that_address() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="3/minute")
    for _ in range(2):
        limits.attempt("alice", "10.0.0.1")
        limits.failed("alice", "10.0.0.1")
    limits.attempt("alice", "10.0.0.1")
    limits.succeeded("alice", "10.0.0.1")
    for _ in range(3):
        limits.attempt("alice", "10.0.0.1")
        limits.failed("alice", "10.0.0.1")


def test_failures_for_one_user_from_many_addresses_are_capped() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_FAILURES_PER_USER="4/hour")
    for n in range(4):
        limits.attempt("alice", f"10.0.0.{n}")
        limits.failed("alice", f"10.0.0.{n}")
    with pytest.raises(LoginThrottled):
        limits.attempt("alice", "10.0.9.9")


def test_all_attempts_from_one_address_are_capped_successful_or_not() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_ATTEMPTS_PER_ADDRESS="5/minute")
    for n in range(5):
        limits.attempt(f"user{n}", "10.0.0.1")
        limits.succeeded(f"user{n}", "10.0.0.1")
    with pytest.raises(LoginThrottled):
        limits.attempt("user9", "10.0.0.1")
    limits.attempt("user9", "10.0.0.2")


@pytest.mark.parametrize("value", ["often", "5", "-1/minute", "5/fortnight"])
def test_a_malformed_rate_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="WARREN_EDGE_LOGIN_FAILURES_PER_USER "):
        LoginLimits.from_env({"WARREN_EDGE_LOGIN_FAILURES_PER_USER": value})


def test_the_per_user_ceiling_spares_addresses_the_user_signed_in_from() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_FAILURES_PER_USER="4/minute")
    limits.attempt("carol", "192.0.2.5")
    limits.succeeded("carol", "192.0.2.5")
    for n in range(4):
        limits.attempt("carol", f"10.0.0.{n}")
        limits.failed("carol", f"10.0.0.{n}")
    with pytest.raises(LoginThrottled) as refused:
        limits.attempt("carol", "10.0.9.9")
    assert 1 <= refused.value.retry_after_s <= 60
    limits.attempt("carol", "192.0.2.5")  # her own address


def test_known_addresses_can_be_turned_off() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_FAILURES_PER_USER="2/minute",
                     WARREN_EDGE_LOGIN_KNOWN_ADDRESS_DAYS="0")
    limits.attempt("carol", "192.0.2.5")
    limits.succeeded("carol", "192.0.2.5")
    for n in range(2):
        limits.attempt("carol", f"10.0.0.{n}")
        limits.failed("carol", f"10.0.0.{n}")
    with pytest.raises(LoginThrottled):
        limits.attempt("carol", "192.0.2.5")


def test_only_the_latest_addresses_of_a_user_are_remembered() -> None:
    known = KnownAddresses(ttl_s=60, per_user=2)
    for address in ("a", "b", "c"):
        known.remember("carol", address)
    assert [known.known("carol", a) for a in ("a", "b", "c")] == [False, True, True]
    assert not known.known("dave", "b")


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    limits = limiter(WARREN_EDGE_LOGIN_FAILURES_PER_USER_ADDRESS="2/minute")
    for n in range(2):
        limits.attempt("alice", f"2001:db8:1:2::{n + 1}")
        limits.failed("alice", f"2001:db8:1:2::{n + 1}")
    with pytest.raises(LoginThrottled):
        limits.attempt("alice", "2001:db8:1:2:ffff::9")
    limits.attempt("alice", "2001:db8:1:3::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
