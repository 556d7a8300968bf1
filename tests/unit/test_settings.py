"""Settings read once from a mapping: the edge's, the common ones and the typed readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ws_edge.policy import DirectRule, SendPolicy
from services.ws_edge.settings import EdgeSettings
from shared.auth.tokens import DEV_SECRET, HS256
from shared.config import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    CommonSettings,
    ConfigError,
    env_bool,
    env_file_or_value,
    env_float,
    env_int,
    env_list,
    env_str,
)

DEV = {"WARREN_ENV": "development"}


# --- EdgeSettings ---------------------------------------------------------------------


def test_edge_defaults() -> None:
    s = EdgeSettings.from_env(DEV)
    assert s.common.environment == "development"
    assert s.common.development is True
    assert s.common.amqp_url == DEFAULT_AMQP_URL
    assert s.common.database_url == DEFAULT_DATABASE_URL
    assert s.common.log_level == "INFO"
    assert s.common.instance_id.startswith("edge-")
    assert s.auth.algorithm == HS256
    assert s.auth.verify_key == DEV_SECRET
    assert s.auth.token_ttl_s == 3600
    assert s.policy == SendPolicy()
    assert s.host == "0.0.0.0"
    assert s.port == 8000
    assert s.allowed_origins == ()
    assert s.ping_interval_s == 25.0
    assert s.ping_timeout_s == 25.0
    assert s.max_inbound_frame_bytes == 65536
    assert s.max_outbound_buffer_bytes == 1 << 20
    assert s.invalid_frame_limit == 10
    assert s.invalid_frame_window_s == 60.0
    assert s.bind_timeout_s == 10.0
    assert s.handshake_timeout_s == 10.0
    assert s.listen_backlog == 1024
    assert s.max_opening == 200
    assert s.shutdown_deadline_s == 10.0
    assert s.prefetch == 512
    assert s.login_threads == 4


def test_edge_overrides() -> None:
    env = {
        **DEV,
        "WARREN_AMQP_URL": "amqp://u:p@rabbit:5672/v",
        "WARREN_DATABASE_URL": "postgresql+psycopg://db/warren",
        "WARREN_INSTANCE_ID": "edge-7",
        "WARREN_LOG_LEVEL": "debug",
        "WARREN_POLICY_DIRECT": "none",
        "WARREN_EDGE_HOST": "127.0.0.1",
        "WARREN_EDGE_PORT": "9001",
        "WARREN_EDGE_ALLOWED_ORIGINS": "https://a.example, https://b.example,,",
        "WARREN_EDGE_PING_INTERVAL_S": "5",
        "WARREN_EDGE_PING_TIMEOUT_S": "2.5",
        "WARREN_EDGE_MAX_FRAME_BYTES": "2048",
        "WARREN_EDGE_MAX_OUTBOUND_BYTES": "65536",
        "WARREN_EDGE_INVALID_FRAME_LIMIT": "3",
        "WARREN_EDGE_INVALID_FRAME_WINDOW_S": "1.5",
        "WARREN_EDGE_BIND_TIMEOUT_S": "0.5",
        "WARREN_EDGE_HANDSHAKE_TIMEOUT_S": "0.25",
        "WARREN_EDGE_LISTEN_BACKLOG": "64",
        "WARREN_EDGE_MAX_OPENING": "5",
        "WARREN_EDGE_SHUTDOWN_DEADLINE_S": "0",
        "WARREN_EDGE_PREFETCH": "1",
        "WARREN_EDGE_LOGIN_THREADS": "2",
    }
    s = EdgeSettings.from_env(env)
    assert s.common.amqp_url == "amqp://u:p@rabbit:5672/v"
    assert s.common.database_url == "postgresql+psycopg://db/warren"
    assert s.common.instance_id == "edge-7"
    assert s.common.log_level == "DEBUG"
    assert s.policy.direct is DirectRule.NONE
    assert s.host == "127.0.0.1"
    assert s.port == 9001
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.ping_interval_s == 5.0
    assert s.ping_timeout_s == 2.5
    assert s.max_inbound_frame_bytes == 2048
    assert s.max_outbound_buffer_bytes == 65536
    assert s.invalid_frame_limit == 3
    assert s.invalid_frame_window_s == 1.5
    assert s.bind_timeout_s == 0.5
    assert s.handshake_timeout_s == 0.25
    assert s.listen_backlog == 64
    assert s.max_opening == 5
    assert s.shutdown_deadline_s == 0.0
    assert s.prefetch == 1
    assert s.login_threads == 2


def test_ping_timeout_follows_ping_interval_by_default() -> None:
    s = EdgeSettings.from_env({**DEV, "WARREN_EDGE_PING_INTERVAL_S": "7"})
    assert s.ping_timeout_s == 7.0


def test_port_zero_means_any_free_port() -> None:
    assert EdgeSettings.from_env({**DEV, "WARREN_EDGE_PORT": "0"}).port == 0


def test_blank_values_mean_defaults() -> None:
    s = EdgeSettings.from_env({**DEV, "WARREN_EDGE_PORT": "  ", "WARREN_EDGE_HOST": ""})
    assert s.port == 8000
    assert s.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WARREN_EDGE_PORT", "http"),
        ("WARREN_EDGE_PORT", "80.5"),
        ("WARREN_EDGE_PORT", "-1"),
        ("WARREN_EDGE_PORT", "65536"),
        ("WARREN_EDGE_PORT", "100000"),
        ("WARREN_EDGE_MAX_FRAME_BYTES", "1023"),
        ("WARREN_EDGE_MAX_FRAME_BYTES", "64k"),
        ("WARREN_EDGE_MAX_OUTBOUND_BYTES", "65535"),
        ("WARREN_EDGE_INVALID_FRAME_LIMIT", "0"),
        ("WARREN_EDGE_PREFETCH", "0"),
        ("WARREN_EDGE_PREFETCH", "lots"),
        ("WARREN_EDGE_LOGIN_THREADS", "0"),
        ("WARREN_EDGE_PING_INTERVAL_S", "soon"),
        ("WARREN_EDGE_PING_INTERVAL_S", "-1"),
        ("WARREN_EDGE_PING_TIMEOUT_S", "-0.5"),
        ("WARREN_EDGE_BIND_TIMEOUT_S", "0.05"),
        ("WARREN_EDGE_HANDSHAKE_TIMEOUT_S", "0"),
        ("WARREN_EDGE_SHUTDOWN_DEADLINE_S", "x"),
        ("WARREN_EDGE_INVALID_FRAME_WINDOW_S", "-1"),
        ("WARREN_POLICY_GROUP", "everyone"),
        ("WARREN_JWT_TTL_S", "0"),
        ("WARREN_ENV", "staging"),
    ],
)
def test_invalid_values_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        EdgeSettings.from_env({**DEV, name: value})


def test_production_needs_a_jwt_secret() -> None:
    with pytest.raises(ConfigError, match="WARREN_JWT_SECRET"):
        EdgeSettings.from_env({})


def test_production_with_a_secret() -> None:
    s = EdgeSettings.from_env({"WARREN_JWT_SECRET": "p" * 40})
    assert s.common.environment == "production"
    assert s.common.development is False
    assert s.auth.verify_key == "p" * 40


def test_edge_settings_are_frozen() -> None:
    s = EdgeSettings.from_env(DEV)
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


# --- CommonSettings -------------------------------------------------------------------


def test_common_defaults_to_production() -> None:
    s = CommonSettings.from_env({}, "svc")
    assert s.environment == "production"
    assert s.development is False


@pytest.mark.parametrize("value", ["development", " development ", "production"])
def test_common_accepts_known_environments(value: str) -> None:
    assert CommonSettings.from_env({"WARREN_ENV": value}, "svc").environment == value.strip()


@pytest.mark.parametrize("value", ["dev", "prod", "Development", "PRODUCTION", "staging", "test"])
def test_common_rejects_unknown_environments(value: str) -> None:
    with pytest.raises(ConfigError, match="WARREN_ENV"):
        CommonSettings.from_env({"WARREN_ENV": value}, "svc")


def test_common_instance_id_is_unique_per_call_and_names_the_service() -> None:
    a = CommonSettings.from_env({}, "worker").instance_id
    b = CommonSettings.from_env({}, "worker").instance_id
    assert a.startswith("worker-")
    assert a != b


def test_common_instance_id_override() -> None:
    assert CommonSettings.from_env({"WARREN_INSTANCE_ID": " i-1 "}, "svc").instance_id == "i-1"


# --- typed readers --------------------------------------------------------------------


def test_env_str() -> None:
    assert env_str({"A": " x "}, "A", "d") == "x"
    assert env_str({"A": "  "}, "A", "d") == "d"
    assert env_str({}, "A", "d") == "d"


def test_env_int() -> None:
    assert env_int({"A": " 42 "}, "A", 1) == 42
    assert env_int({}, "A", 7) == 7
    assert env_int({"A": "5"}, "A", 1, minimum=5) == 5
    with pytest.raises(ConfigError, match="at least 6"):
        env_int({"A": "5"}, "A", 1, minimum=6)
    with pytest.raises(ConfigError, match="integer"):
        env_int({"A": "1e3"}, "A", 1)


def test_env_float() -> None:
    assert env_float({"A": "1.25"}, "A", 0.0) == 1.25
    assert env_float({"A": "3"}, "A", 0.0) == 3.0
    assert env_float({}, "A", 9.5) == 9.5
    with pytest.raises(ConfigError, match="number"):
        env_float({"A": "one"}, "A", 0.0)
    with pytest.raises(ConfigError, match="at least"):
        env_float({"A": "0.01"}, "A", 0.0, minimum=0.1)


def test_env_float_rejects_nan() -> None:
    # NaN passes `value < minimum` (every comparison with NaN is false), so a timeout of
    # NaN would get through start-up; a malformed setting must fail there.
    with pytest.raises(ConfigError):
        env_float({"A": "nan"}, "A", 1.0, minimum=0.1)


def test_edge_bind_timeout_of_nan_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="WARREN_EDGE_BIND_TIMEOUT_S"):
        EdgeSettings.from_env({**DEV, "WARREN_EDGE_BIND_TIMEOUT_S": "nan"})


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_env_bool(raw: str, value: bool) -> None:
    assert env_bool({"A": raw}, "A", not value) is value


def test_env_bool_default_and_error() -> None:
    assert env_bool({}, "A", True) is True
    with pytest.raises(ConfigError):
        env_bool({"A": "maybe"}, "A", True)


def test_env_list() -> None:
    assert env_list({"A": " a, b ,,c "}, "A") == ("a", "b", "c")
    assert env_list({"A": ""}, "A", ("d",)) == ()
    assert env_list({}, "A", ("d",)) == ("d",)


def test_env_file_or_value_prefers_the_value() -> None:
    assert env_file_or_value({"A": " v ", "A_FILE": "/nonexistent"}, "A") == "v"
    assert env_file_or_value({}, "A") is None


def test_env_file_or_value_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("from-file")
    assert env_file_or_value({"A_FILE": str(path)}, "A") == "from-file"
    with pytest.raises(ConfigError, match="A_FILE"):
        env_file_or_value({"A_FILE": str(tmp_path / "missing")}, "A")
