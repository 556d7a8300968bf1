"""``WARREN_AMQP_URL`` as a list of broker addresses: read once, refused when malformed."""

from __future__ import annotations

import pytest

from shared.config import DEFAULT_AMQP_URL, CommonSettings, ConfigError, amqp_urls

DEV = {"WARREN_ENV": "development"}


def test_one_url_is_a_list_of_one() -> None:
    assert amqp_urls(DEFAULT_AMQP_URL) == (DEFAULT_AMQP_URL,)


def test_several_urls_are_split_on_commas_in_order() -> None:
    value = " amqp://u:p@rabbit-0:5672/v , amqps://u:p@rabbit-1/v,,amqp://rabbit-2 "
    assert amqp_urls(value) == (
        "amqp://u:p@rabbit-0:5672/v", "amqps://u:p@rabbit-1/v", "amqp://rabbit-2",
    )


@pytest.mark.parametrize("value", [
    "", " , ", "http://rabbit:5672/", "rabbit:5672", "amqp://", "amqp://u:p@rabbit:port/",
    "amqp://rabbit-0/,redis://rabbit-1/",
])
def test_what_is_not_a_list_of_amqp_urls_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        amqp_urls(value)


def test_a_refusal_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as refused:
        amqp_urls("amqp://u:s3cret@rabbit-0/,http://u:s3cret@rabbit-1/")
    assert "s3cret" not in str(refused.value)
    assert "rabbit-1" in str(refused.value)


def test_common_settings_keep_the_value_as_given_and_parse_it_at_start_up() -> None:
    value = "amqp://u:p@rabbit-0/v,amqp://u:p@rabbit-1/v"
    common = CommonSettings.from_env({**DEV, "WARREN_AMQP_URL": value}, "edge")
    assert common.amqp_url == value
    assert common.amqp_urls == ("amqp://u:p@rabbit-0/v", "amqp://u:p@rabbit-1/v")
    assert CommonSettings.from_env(DEV, "edge").amqp_urls == (DEFAULT_AMQP_URL,)
    with pytest.raises(ConfigError):
        CommonSettings.from_env({**DEV, "WARREN_AMQP_URL": "amqp://rabbit-0/,rabbit-1"}, "edge")
