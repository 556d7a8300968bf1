"""Which address is the client's: forwarding headers count only from trusted proxies."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders

from shared.config import ConfigError
from services.ws_edge.client_address import TrustedProxies, parse_address


def proxies(value: str) -> TrustedProxies:
    return TrustedProxies.from_env({"WARREN_TRUSTED_PROXIES": value})


def headers(*pairs: tuple[str, str]) -> HTTPHeaders:
    result = HTTPHeaders()
    for name, value in pairs:
        result.add(name, value)
    return result


FORGED = headers(("X-Forwarded-For", "203.0.113.9"), ("X-Real-IP", "198.51.100.9"))


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert TrustedProxies.from_env({}).client_address("192.0.2.1", FORGED) == "192.0.2.1"
    assert proxies("10.0.0.0/8").client_address("192.0.2.1", FORGED) == "192.0.2.1"


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ("192.0.2.7", "192.0.2.7"),
        # The right-most hop the trusted ones do not vouch for: forged hops to its left
        # were written by the client.
        ("1.1.1.1, 2.2.2.2, 192.0.2.7", "192.0.2.7"),
        ("1.1.1.1, 192.0.2.7, 10.0.0.2", "192.0.2.7"),
        # Every hop trusted: the first one.
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # Garbage where a client should be: the last real address, here a trusted hop.
        ("nonsense, 10.0.0.2", "10.0.0.2"),
        ("192.0.2.7, nonsense", "10.0.0.1"),
        ("999.0.0.1", "10.0.0.1"),
        ("", "10.0.0.1"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("192.0.2.7:8080", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7:http", "10.0.0.1"),
        ("[2001:db8::7", "10.0.0.1"),
        ("[2001:db8::7]443", "10.0.0.1"),
    ],
)
def test_x_forwarded_for_through_trusted_proxies(forwarded: str, client: str) -> None:
    got = proxies("10.0.0.0/8").client_address("10.0.0.1", headers(("X-Forwarded-For", forwarded)))
    assert got == client


def test_several_x_forwarded_for_headers_are_one_list() -> None:
    two = headers(("X-Forwarded-For", "1.1.1.1, 192.0.2.7"), ("X-Forwarded-For", "10.0.0.5"))
    assert proxies("10.0.0.0/8").client_address("10.0.0.1", two) == "192.0.2.7"


def test_x_real_ip_only_from_a_trusted_peer_and_only_without_x_forwarded_for() -> None:
    trusted = proxies("10.0.0.1")
    real = headers(("X-Real-IP", "192.0.2.7"))
    assert trusted.client_address("10.0.0.1", real) == "192.0.2.7"
    assert trusted.client_address("10.0.0.2", real) == "10.0.0.2"
    assert trusted.client_address("10.0.0.1", headers(("X-Real-IP", "junk"))) == "10.0.0.1"
    both = headers(("X-Real-IP", "192.0.2.7"), ("X-Forwarded-For", "192.0.2.8"))
    assert trusted.client_address("10.0.0.1", both) == "192.0.2.8"


def test_a_peer_that_is_no_ip_address_is_kept() -> None:
    assert proxies("10.0.0.0/8").client_address(None, FORGED) is None
    assert proxies("10.0.0.0/8").client_address("", FORGED) == ""


def test_parse_address_bounds_its_input() -> None:
    assert parse_address("1" * 100) is None
    assert parse_address(" 2001:db8::1 ") is not None


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.1/8", "proxy.local", "10.0.0.0/8, x"])
def test_a_bad_trusted_proxy_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="WARREN_TRUSTED_PROXIES"):
        proxies(value)


def test_trusted_proxies_take_addresses_and_networks() -> None:
    parsed = proxies("10.0.0.0/8, 192.0.2.1, 2001:db8::/32")
    assert [str(n) for n in parsed.networks] == ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
