"""The user's own services under ``warren up`` (declared by flag or in warren.toml, placed
on ports, planned as ``warren serve`` children), and loading a service by reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError
from services.supervisor.plan import user_service_specs
from services.supervisor.ports import assign_ports
from services.supervisor.settings import (
    USER_SERVICE_TIER,
    EDGE,
    UpSettings,
    config_file,
    declared_services,
)
from warren.service import LoadError, Service, load

DEV = {"WARREN_ENV": "development"}
ONE_EACH = {"edge": 1, "relay": 1, "runner": 1, "excel": 1}


def test_services_come_from_the_file_then_the_flags(tmp_path: Path) -> None:
    config = tmp_path / "warren.toml"
    config.write_text('[services]\norders = "shop.orders:service"\nbilling = "shop.billing:svc"\n')
    declared = declared_services(["orders=shop.v2:service", "mail=shop.mail:service"], config)
    assert declared == {
        "orders": "shop.v2:service", "billing": "shop.billing:svc", "mail": "shop.mail:service"
    }


@pytest.mark.parametrize(("flag", "message"), [
    ("orders", "NAME=pkg.module:service"),
    ("orders=shop.orders", "not of the form pkg.module:service"),
    ("or ders=shop.orders:service", "must match"),
    ("edge-1=shop.orders:service", "not be one of"),
    ("cat=shop.orders:service", "not be one of"),
])
def test_a_bad_service_flag_is_refused(flag: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        declared_services([flag], None)


@pytest.mark.parametrize(("text", "message"), [
    ("[services\n", "cannot be read"),
    ('[service]\norders = "a:b"\n', "unknown table 'service'"),
    ("[services]\norders = 3\n", "must be a string"),
    ('services = "a:b"\n', "must be a table"),
])
def test_a_bad_config_file_is_refused_naming_it(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "warren.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as raised:
        declared_services([], config)
    assert str(config) in str(raised.value)


def test_the_config_file_is_warren_toml_here_if_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_file(None) is None
    (tmp_path / "warren.toml").write_text("")
    assert config_file(None) == Path("warren.toml")
    with pytest.raises(ConfigError, match="no such file"):
        config_file("elsewhere.toml")


def test_each_service_is_a_warren_serve_child_before_the_edges() -> None:
    services = {"orders": "shop.orders:service", "mail": "shop.mail:service"}
    up = UpSettings.from_env({**DEV, "WARREN_SERVICE_PORT": "9400"}, ONE_EACH, services)
    assert [(s.name, s.placement.base_port) for s in up.services] == [
        ("orders", 9400), ("mail", 9401)
    ]
    ports = assign_ports(
        up.placements + tuple(s.placement for s in up.services), is_free=lambda _h, _p: True
    )
    specs = user_service_specs(up, ports, "/py", "box")
    orders = specs[0]
    assert orders.argv == ("/py", "-m", "services.cli", "serve", "shop.orders:service")
    assert orders.env["WARREN_SERVICE_PORT"] == "9400"
    assert orders.env["WARREN_INSTANCE_ID"] == "orders-box"
    assert orders.ready_url == "http://127.0.0.1:9400/readyz"
    assert orders.tier == USER_SERVICE_TIER < EDGE.tier


def test_free_ports_for_services_with_port_zero() -> None:
    up = UpSettings.from_env(
        {**DEV, "WARREN_SERVICE_PORT": "0"}, ONE_EACH, {"orders": "shop.orders:service"}
    )
    assert up.services[0].placement.base_port == 0


def test_load_names_what_is_wrong() -> None:
    assert isinstance(load("tests.support.user_service:service"), Service)
    with pytest.raises(LoadError, match="pkg.module:service"):
        load("tests.support.user_service")
    with pytest.raises(LoadError, match="cannot import 'no_such_module'"):
        load("no_such_module:service")
    with pytest.raises(LoadError, match="not a warren.service.Service"):
        load("tests.support.user_service:create")
