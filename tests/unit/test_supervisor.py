"""``warren up``'s pure parts: settings, ports, the plan of children, and log rendering."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import ConfigError
from services.supervisor.demo import service_key
from services.supervisor.output import Output, render
from services.supervisor.plan import CatPlan, host_id, service_specs
from services.supervisor.ports import assign_ports, port_free
from services.supervisor.settings import UpSettings

DEV = {"WARREN_ENV": "development"}
ONE_EACH = {"edge": 1, "relay": 1, "runner": 1, "excel": 1}
TWO_EACH = {"edge": 2, "relay": 2, "runner": 2, "excel": 2}


def settings(replicas: dict[str, int] = ONE_EACH, **env: str) -> UpSettings:
    return UpSettings.from_env({**DEV, **env}, replicas)


def test_up_is_refused_outside_development() -> None:
    with pytest.raises(ConfigError, match="WARREN_ENV=development"):
        UpSettings.from_env({}, ONE_EACH)


@pytest.mark.parametrize("count", [0, 17])
def test_replica_counts_are_bounded(count: int) -> None:
    with pytest.raises(ConfigError, match="runner replicas must be 1 to 16"):
        settings({**ONE_EACH, "runner": count})


def test_base_ports_must_leave_room_for_the_replicas() -> None:
    with pytest.raises(ConfigError, match="WARREN_EDGE_PORT=65535 leaves no room for 2"):
        settings(TWO_EACH, WARREN_EDGE_PORT="65535")


def test_services_listen_on_loopback_unless_told_otherwise() -> None:
    placements = settings(WARREN_RUNNER_HOST="0.0.0.0").placements
    hosts = {p.kind.name: p.host for p in placements}
    assert hosts == {
        "excel": "127.0.0.1",
        "runner": "0.0.0.0",
        "relay": "127.0.0.1",
        "edge": "127.0.0.1",
    }
    runner = next(p for p in placements if p.kind.name == "runner")
    assert runner.probe_host == "127.0.0.1"


def test_start_order_is_workers_runners_relays_then_edges() -> None:
    assert [p.kind.name for p in settings().placements] == ["excel", "runner", "relay", "edge"]
    assert [p.kind.tier for p in settings().placements] == [1, 1, 1, 2]


def test_the_cat_url_is_remembered_as_configured_or_default() -> None:
    assert settings().cat.url == "http://127.0.0.1:1865" and not settings().cat.configured
    configured = settings(WARREN_CAT_URL="http://cat.local:9000/", WARREN_CAT_PROTOCOL="v1").cat
    assert configured.url == "http://cat.local:9000" and configured.configured
    assert configured.protocol_configured


def test_ports_are_consecutive_from_each_base() -> None:
    ports = assign_ports(settings(TWO_EACH).placements, is_free=lambda host, port: True)
    assert ports == {
        "excel": [8300, 8301],
        "runner": [8200, 8201],
        "relay": [8100, 8101],
        "edge": [8000, 8001],
    }


def test_a_taken_port_names_the_setting_to_change() -> None:
    with pytest.raises(
        ConfigError, match=r"port 8001 on 127.0.0.1 \(edge-2\) is in use: set WARREN_EDGE_PORT"
    ):
        assign_ports(settings(TWO_EACH).placements, is_free=lambda host, port: port != 8001)


def test_overlapping_ranges_are_refused() -> None:
    placements = settings(TWO_EACH, WARREN_RELAY_PORT="8301").placements
    with pytest.raises(ConfigError, match="relay-1 would take port 8301, already given to excel-2"):
        assign_ports(placements, is_free=lambda host, port: True)


def test_base_port_zero_picks_distinct_free_ports() -> None:
    offered: Iterator[int] = iter([5000, 5000, 5001, 5001, 5002, 5003, 5004, 5005, 5006, 5007])
    zero = {f"WARREN_{p}_PORT": "0" for p in ("EDGE", "RELAY", "RUNNER", "EXCEL")}
    ports = assign_ports(
        settings(TWO_EACH, **zero).placements, pick_free=lambda host: next(offered)
    )
    flat = [port for kind in ports.values() for port in kind]
    assert len(flat) == len(set(flat)) == 8


def test_port_free_sees_a_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free("127.0.0.1", port)
    assert port_free("127.0.0.1", port)


def test_the_plan_gives_every_replica_its_port_instance_and_neighbours() -> None:
    up = settings(TWO_EACH)
    ports = assign_ports(up.placements, is_free=lambda host, port: True)
    specs = service_specs(up, ports, CatPlan("http://127.0.0.1:1865", "local", "v2"), "/py", "box")
    by_name = {spec.name: spec for spec in specs}
    assert list(by_name) == [
        "excel-1",
        "excel-2",
        "runner-1",
        "runner-2",
        "relay-1",
        "relay-2",
        "edge-1",
        "edge-2",
    ]
    edge2 = by_name["edge-2"]
    assert edge2.argv == ("/py", "-m", "services.ws_edge")
    assert edge2.env["WARREN_EDGE_PORT"] == "8001" and edge2.env["WARREN_EDGE_HOST"] == "127.0.0.1"
    assert edge2.env["WARREN_INSTANCE_ID"] == "edge-2-box"
    assert edge2.env["WARREN_EDGE_RELAY_URLS"] == "http://127.0.0.1:8100,http://127.0.0.1:8101"
    assert edge2.ready_url == "http://127.0.0.1:8001/readyz" and edge2.tier == 2
    relay = by_name["relay-1"].env
    assert (
        relay["WARREN_CAT_URL"] == "http://127.0.0.1:1865" and relay["WARREN_CAT_PROTOCOL"] == "v2"
    )
    assert by_name["runner-2"].env["WARREN_RUNNER_HTTP_JOB_URL"] == "http://127.0.0.1:8000"
    assert by_name["excel-2"].env["WARREN_EXCEL_PORT"] == "8301"
    assert len({spec.env["WARREN_INSTANCE_ID"] for spec in specs}) == 8
    assert all(spec.env["PYTHONUNBUFFERED"] == "1" and spec.required for spec in specs)


def test_a_configured_cat_protocol_and_http_job_url_are_kept() -> None:
    up = settings(WARREN_RUNNER_HTTP_JOB_URL="http://example.test")
    ports = assign_ports(up.placements, is_free=lambda host, port: True)
    specs = {
        s.name: s for s in service_specs(up, ports, CatPlan("http://c:1", "configured"), "py", "h")
    }
    assert "WARREN_CAT_PROTOCOL" not in specs["relay-1"].env
    assert specs["runner-1"].env["WARREN_RUNNER_HTTP_JOB_URL"] == "http://example.test"


def test_the_relays_get_the_service_key_made_for_the_run_and_no_one_else_does() -> None:
    up = settings()
    ports = assign_ports(up.placements, is_free=lambda host, port: True)
    cat = CatPlan("http://c:1", "configured")
    specs = service_specs(up, ports, cat, "py", "h", relay_api_key="k" * 43)
    assert [s.name for s in specs if "WARREN_RELAY_API_KEY" in s.env] == ["relay-1"]
    assert specs[2].env["WARREN_RELAY_API_KEY"] == "k" * 43
    without = service_specs(up, ports, cat, "py", "h")
    assert all("WARREN_RELAY_API_KEY" not in s.env for s in without)


def test_a_configured_service_key_is_noticed_as_a_value_or_a_file(tmp_path: Path) -> None:
    assert not settings().relay_api_key_configured
    assert settings(WARREN_RELAY_API_KEY="x" * 30).relay_api_key_configured
    key_file = tmp_path / "relay-key"
    key_file.write_text("y" * 30)
    assert settings(WARREN_RELAY_API_KEY_FILE=str(key_file)).relay_api_key_configured


def test_service_keys_are_long_and_fresh_each_time() -> None:
    keys = {service_key() for _ in range(3)}
    assert len(keys) == 3 and all(len(key) >= 24 for key in keys)  # the relay's minimum


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("box", "box"),
        ("web-1.example.com", "web-1-example-com"),
        ("...", "host"),
        ("a" * 80, "a" * 40),
    ],
)
def test_host_ids_are_names(hostname: str, expected: str) -> None:
    assert host_id(hostname) == expected


def test_json_log_lines_become_readable() -> None:
    line = (
        '{"ts": "2026-11-30 09:10:07,585", "level": "INFO", "logger": "services.x", '
        '"message": "edge ready", "service": "edge", "port": 8000, "queue": "warren.edge.e1"}'
    )
    assert render(line) == "09:10:07 INFO    edge ready  port=8000  queue=warren.edge.e1"


def test_tracebacks_follow_their_record() -> None:
    line = (
        '{"ts": "2026-11-30 09:10:07,586", "level": "WARNING", "message": "boom", '
        '"exc_info": "Traceback (most recent call last):\\nZeroDivisionError: division by zero"}'
    )
    assert render(line).splitlines() == [
        "09:10:07 WARNING boom",
        "Traceback (most recent call last):",
        "ZeroDivisionError: division by zero",
    ]


@pytest.mark.parametrize(
    "line", ["INFO:     Uvicorn running", "{not json", '{"no": "message"}', "[1, 2]"]
)
def test_other_lines_pass_through(line: str) -> None:
    assert render(line) == line


def test_output_prefixes_and_colours_only_when_asked() -> None:
    plain, coloured = io.StringIO(), io.StringIO()
    Output(plain, colour=False, width=8).child(
        "relay-1", "relay", '{"level": "ERROR", "message": "x"}'
    )
    Output(coloured, colour=True, width=8).child(
        "relay-1", "relay", '{"level": "ERROR", "message": "x"}'
    )
    assert plain.getvalue() == "relay-1  |  ERROR   x\n"
    assert (
        "\033[35mrelay-1  |\033[0m" in coloured.getvalue()
        and "\033[31mERROR" in coloured.getvalue()
    )


class GoneTerminal:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError("the reader went away")

    def flush(self) -> None:
        pass


def test_a_terminal_that_went_away_does_not_stop_the_supervisor() -> None:
    gone = GoneTerminal()
    output = Output(gone, colour=False)
    output.note("stopping edge-1")
    output.child("edge-1", "edge", "edge stopped")
    output.error("runner-1 exited unexpectedly")
    assert gone.writes == 1  # tried once, then quiet
